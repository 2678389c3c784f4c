"""The commands an agent runs all day, the same list in every tier: each must work, in one session.

Not an attack test: a sandbox that refuses `ls -l` or `python3 -m venv` is one users switch off.  Each
command's output is checked, not only its exit status; a failure names the command and what it printed.
"""

from __future__ import annotations

import os

import pytest

from blastwall.client import CommandExitError, Sandbox
from tests.attacks.tiers import TIERS, tier_params
from tests.conftest import bw_env

# (what it is, the bash line, a string its stdout must hold)
EVERYDAY = [
    ("ls -l", "ls -l data.txt", "data.txt"),
    ("ls -la", "ls -la | grep -c data.txt", "1"),
    ("stat", "stat -c '%s %F' data.txt", "12 regular file"),
    ("find", "find . -name '*.txt' -newer /etc/hostname | sort | head -1", "./data.txt"),
    ("grep -r", "grep -rn world --include=*.txt .", "./data.txt:1:hello world"),
    ("sed and awk", "sed 's/hello/bye/' data.txt | awk '{print $2, $1}'", "world bye"),
    ("sort | uniq", "printf 'b\\na\\nb\\n' | sort | uniq -c | tr -s ' '", " 2 b"),
    ("tar", "mkdir -p t && cp data.txt t/ && tar czf t.tgz t && rm -r t && tar xzf t.tgz && cat t/data.txt",
     "hello world"),
    ("git", "git init -q repo && cd repo && git config user.email a@b && git config user.name n && echo x > f "
            "&& git add f && git commit -qm first && echo y >> f && git diff --stat && git log --oneline | wc -l",
     "1 file changed"),
    ("python", "python3 -c 'import json, sqlite3; print(json.dumps(sqlite3.sqlite_version_info[:1]))'", "[3]"),
    ("venv and pip", "python3 -m venv venv && venv/bin/python -m pip --version", "pip "),
    # In /tmp: the VM's workspace (a 9p share) cannot hold a FIFO (docs/tiers.md says so).
    ("mkfifo", "p=$(mktemp -u) && mkfifo $p && (echo through > $p &) && cat $p", "through"),
    ("chmod", "touch x && chmod 600 x && stat -c %a x", "600"),
    ("symlink", "ln -s data.txt link && readlink link && cat link", "hello world"),
    ("cp -a and mv", "mkdir -p d && cp -a data.txt d/ && mv d/data.txt d/moved && ls d", "moved"),
    ("/tmp", "dir=$(mktemp -d) && echo temp > $dir/f && cat $dir/f", "temp"),
    ("ps", "sleep 5 & ps -o comm= | grep -c sleep", "1"),
    ("kill", "sleep 30 & kill $! && wait $! ; echo status $?", "status 143"),
    ("curl", "curl --version | head -1", "curl "),
    ("xz", "echo packed | xz | xz -d", "packed"),
    ("env and cwd", "cd d && echo $PWD", "/d"),
    ("a heredoc script", "bash <<'EOS'\nfor i in 1 2 3; do printf $i; done\nEOS", "123"),
]


@pytest.mark.parametrize("tier", tier_params(TIERS))
def test_everyday_commands_work_in_every_tier(tier, home, workspace, request):
    env = {**os.environ, **bw_env(home)}
    if tier != "process":
        env["XDG_CACHE_HOME"] = str(request.getfixturevalue("image_cache"))
    (workspace / "data.txt").write_text("hello world\n")
    failed = []
    with Sandbox.create(api_url=None, tier=tier, workspace=str(workspace), environ=env) as sandbox:
        # git's global config: a private file in the image tiers (their home is the workspace, whose
        # .gitconfig is protected); the user's own, read-only, in the process tier (never widened).
        global_config = "git config --global user.name me && git config --global user.name"
        if tier == "process":
            with pytest.raises(CommandExitError) as refused:
                sandbox.commands.run(global_config)
            assert "Read-only file system" in refused.value.stderr
            assert not (home / ".gitconfig").exists()
        else:
            assert sandbox.commands.run(global_config).stdout == "me\n"
            assert not (workspace / ".gitconfig").is_file()
        for what, line, expected in EVERYDAY:
            try:
                out = sandbox.commands.run(line, timeout=120).stdout
            except CommandExitError as exc:
                failed.append(f"{what}: exit {exc.exit_code}: {(exc.stderr or exc.stdout).strip()[-300:]}")
                continue
            if expected not in out:
                failed.append(f"{what}: expected {expected!r} in {out.strip()[-300:]!r}")
    assert not failed, f"{len(failed)} of {len(EVERYDAY)} everyday commands failed in the {tier} tier:\n" + \
        "\n".join(failed)
    assert (workspace / "data.txt").read_text() == "hello world\n"
