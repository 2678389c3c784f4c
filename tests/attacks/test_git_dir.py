"""The git directory is the host's: nothing a sandbox writes there is obeyed or written through by git outside.

Protecting ``.git/config`` and ``.git/hooks`` file by file was not enough.
A sandbox wrote ``.git/commondir`` naming a directory of its own with a
config (``core.fsmonitor``) and hooks: the host's next ``git status`` ran the
fsmonitor command and ``git commit`` the hook, as root.  And git on the host
writes some of its files by following symbolic links: a ``COMMIT_EDITMSG`` or
``logs/HEAD`` planted as a link lets the next host commit write, into any
file the caller can write, a message the sandbox prepared in ``SQUASH_MSG``.
So all of ``.git`` is read-only inside, in every tier; each attack is judged
by running git on the host afterwards.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.attacks.host import snapshot
from tests.attacks.tiers import tier_run, tiers_for
from tests.conftest import needs_bwrap

pytestmark = needs_bwrap

PLANT = r"""
mkdir -p evil/hooks && cp -r .git/objects .git/refs .git/HEAD evil/
printf '[core]\n\tfsmonitor = "echo FSMONITOR > MARKS/fsmonitor; false"\n' > evil/config
printf '#!/bin/sh\necho HOOK > MARKS/hook\n' > evil/hooks/pre-commit && chmod +x evil/hooks/pre-commit
echo ../evil > .git/commondir && echo PLANTED-commondir
ln -sf VICTIM .git/COMMIT_EDITMSG && echo PLANTED-editmsg
ln -sf VICTIM .git/logs/HEAD && echo PLANTED-logs
printf '$(touch MARKS/squash)\n' > .git/SQUASH_MSG && echo PLANTED-squash
mkdir .git/rebase-merge && printf 'exec touch MARKS/rebase\n' > .git/rebase-merge/git-rebase-todo && echo PLANTED-rebase
printf 'pwn\n' > .git/info/exclude && echo PLANTED-info
mv .git .git.moved && echo PLANTED-moved
rm -rf .git/hooks .git/config 2>/dev/null; [ -e .git/config ] || echo PLANTED-removed
echo 'from inside' > work.txt
"""


def _git(workspace, *args, env=None):
    return subprocess.run(["git", "-C", str(workspace), "-c", "user.name=h", "-c", "user.email=h@h", *args],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("tier", tiers_for("plant-git-control-files"))
def test_planted_git_control_files_are_not_obeyed_on_the_host(tier, home, workspace, scratch, tier_env):
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    assert _git(workspace, "add", "README.md").returncode == 0
    assert _git(workspace, "commit", "-qm", "first").returncode == 0
    marks = scratch / "marks"
    marks.mkdir()
    victim = scratch / "victim"
    victim.write_text("the host's own file\n")
    before = snapshot(workspace / ".git")
    script = PLANT.replace("MARKS", str(marks)).replace("VICTIM", str(victim))
    r = tier_run(tier, script, home=home, workspace=workspace, env=tier_env)
    assert (workspace / "work.txt").read_text() == "from inside\n", r.stderr  # The control: the tree is writable.
    assert "PLANTED" not in r.stdout, r.stdout
    assert snapshot(workspace / ".git") == before
    # The host's git, as root, afterwards: a status, a commit with an editor, a rebase in progress or not.
    env = {**os.environ, "GIT_EDITOR": "echo host-commit >>"}
    assert _git(workspace, "status", "--short", env=env).returncode == 0
    assert _git(workspace, "add", "work.txt", env=env).returncode == 0
    assert _git(workspace, "commit", "-q", env=env).returncode == 0
    _git(workspace, "rebase", "--continue", env=env)
    assert sorted(os.listdir(marks)) == []
    assert victim.read_text() == "the host's own file\n"
    assert _git(workspace, "config", "--show-origin", "core.fsmonitor").stdout == ""
