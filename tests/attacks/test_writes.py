"""Writing outside the boundary: dotfiles, git hooks, system files, link tricks.

Each test checks the host afterwards: the file is unchanged, or was never
created, and the workspace holds nothing the run did not mean to leave.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.attacks.host import snapshot
from tests.attacks.tiers import tier_run, tiers_for
from tests.conftest import assert_no_traceback, blastwall, in_sandbox, needs_bwrap, needs_root

pytestmark = needs_bwrap

TRY_WRITE = """
import os, sys
for path in sys.argv[1:]:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write("PWNED\\n")
    except OSError as exc:
        print(f"{path}: refused errno={exc.errno}")
    else:
        print(f"{path}: written")
"""


def try_write(paths, *, home, workspace, args=()):
    r = blastwall(["run", *args, "--", "python3", "-c", TRY_WRITE, *map(str, paths)], home=home, cwd=workspace)
    assert_no_traceback(r)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_workspace_is_writable_and_home_is_not(home, workspace):
    before = (home / ".bashrc").read_text()
    out = try_write([workspace / "new.txt", home / ".bashrc", home / "planted.txt"], home=home, workspace=workspace)
    assert f"{workspace / 'new.txt'}: written" in out  # The control.
    assert (workspace / "new.txt").read_text() == "PWNED\n"
    assert (home / ".bashrc").read_text() == before
    assert not (home / "planted.txt").exists()


def test_system_files_are_read_only(home, workspace):
    out = try_write(["/etc/blastwall-pwned", "/usr/local/bin/blastwall-pwned"], home=home, workspace=workspace)
    assert "written" not in out
    assert not os.path.exists("/etc/blastwall-pwned")
    assert not os.path.exists("/usr/local/bin/blastwall-pwned")


@pytest.mark.parametrize("target", [".git/hooks/pre-commit", ".git/config", ".bashrc", ".vscode/tasks.json",
                                    ".claude/settings.json", ".mcp.json", ".envrc", ".blastwall/policy.toml"])
def test_mandatory_deny_of_existing_paths(home, workspace, target):
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    path = workspace / target
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text("original\n")
    before = snapshot(workspace)
    out = try_write([path], home=home, workspace=workspace)
    assert "written" not in out
    assert snapshot(workspace) == before


EXISTING = [".git/config", ".bashrc", ".vscode/settings.json", ".mcp.json", ".envrc", ".blastwall/policy.toml"]
MISSING = [".git/hooks/pre-commit", ".zshrc", ".vscode/tasks.json", ".idea/workspace.xml", ".claude/settings.json",
           ".devcontainer/devcontainer.json", ".gitmodules", ".profile"]


@pytest.mark.parametrize("tier", tiers_for("mandatory-write-denies"))
def test_mandatory_denies_hold_in_every_tier(tier, home, workspace, tier_env):
    """Existing and not-yet-existing protected paths, written, appended, replaced and removed, in every tier."""
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    for rel in EXISTING:
        (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel != ".git/config":
            (workspace / rel).write_text("# original\n")
    before = snapshot(workspace)
    script = "\n".join(
        [f"(echo PWNED >> {rel}) 2>/dev/null && echo WROTE {rel}; (rm -rf {rel}) 2>/dev/null; "
         f"[ -e {rel} ] || echo REMOVED {rel}" for rel in EXISTING]
        + [f"(mkdir -p $(dirname {rel}) && echo PWNED > {rel}) 2>/dev/null && echo WROTE {rel}" for rel in MISSING]
        + ["echo legitimate > work.txt && echo CONTROL"])
    r = tier_run(tier, script, home=home, workspace=workspace, env=tier_env)
    assert "CONTROL" in r.stdout, (r.stdout, r.stderr)
    assert "WROTE" not in r.stdout and "REMOVED" not in r.stdout, r.stdout
    after = snapshot(workspace)
    assert after.pop("work.txt")[1] == b"legitimate\n"  # The control, on the host.
    assert after == before


@pytest.mark.parametrize("target", [".git/hooks/pre-commit", ".git/config", ".bashrc", ".zshrc", ".vscode/tasks.json",
                                    ".idea/workspace.xml", ".claude/settings.json", ".mcp.json", ".envrc",
                                    ".blastwall/policy.toml"])
def test_mandatory_deny_of_paths_that_do_not_exist_yet(home, workspace, target):
    before = snapshot(workspace)
    out = try_write([workspace / target], home=home, workspace=workspace)
    assert "written" not in out
    # Nothing left behind: no placeholder, no file, no directory.
    assert snapshot(workspace) == before


@pytest.mark.parametrize("target", [".gitconfig", ".local/bin/ls", ".config/autostart/evil.desktop",
                                    ".config/systemd/user/evil.service", ".bashrc", ".profile"])
def test_home_write_denies_when_the_workspace_is_home(home, target):
    def mine(path):  # blastwall's own state and cache, written by blastwall on the host
        return path.startswith((".local/state", ".cache"))

    before = {k: v for k, v in snapshot(home).items() if not mine(k)}
    out = try_write([home / target], home=home, workspace=home)
    assert "written" not in out
    after = {k: v for k, v in snapshot(home).items() if not mine(k)}
    assert {k: v for k, v in after.items() if k != ".local"} == {k: v for k, v in before.items() if k != ".local"}
    assert "PWNED" not in ((home / target).read_text() if (home / target).is_file() else "")


def test_git_hook_planted_in_fresh_repo_does_not_survive(home, workspace):
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    hooks = workspace / ".git" / "hooks"
    before = sorted(os.listdir(hooks))
    r = blastwall(["run", "--", "sh", "-c",
                   "printf '#!/bin/sh\\ntouch /tmp/pwned\\n' > .git/hooks/pre-commit; chmod +x .git/hooks/pre-commit;"
                   "git config core.hooksPath /tmp; git config alias.st '!touch pwned'; echo done"],
                  home=home, cwd=workspace)
    assert "done" in r.stdout
    assert sorted(os.listdir(hooks)) == before
    config = (workspace / ".git" / "config").read_text()
    assert "hooksPath" not in config and "pwned" not in config


def test_git_reads_inside_and_writes_only_when_allowed(home, workspace):
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    subprocess.run(["git", "-C", str(workspace), "add", "README.md"], check=True)
    subprocess.run(["git", "-C", str(workspace), "-c", "user.name=h", "-c", "user.email=h@h", "commit", "-qm", "host"],
                   check=True)
    (workspace / "README.md").write_text("changed inside\n")
    commit = "git add README.md && git -c user.name=a -c user.email=a@b commit -qm inside && git log --oneline"
    r = blastwall(["run", "--", "sh", "-c", f"git status --short && git diff --stat && git log --oneline; {commit}"],
                  home=home, cwd=workspace)
    assert " M README.md" in r.stdout and "host" in r.stdout  # Reading the repository works,
    assert r.returncode != 0 and "index.lock" in r.stderr and "Read-only" in r.stderr, r.stderr  # writing it not.
    log = subprocess.run(["git", "-C", str(workspace), "log", "--oneline"], capture_output=True, text=True).stdout
    assert "inside" not in log
    r = blastwall(["run", "--allow-git-writes", "--", "sh", "-c", commit], home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr
    log = subprocess.run(["git", "-C", str(workspace), "log", "--oneline"], capture_output=True, text=True).stdout
    assert "inside" in log


def test_git_writes_keep_hooks_and_config_read_only(home, workspace):
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    hooks = workspace / ".git" / "hooks"
    before = sorted(os.listdir(hooks)), (workspace / ".git" / "config").read_bytes()
    r = blastwall(["run", "--allow-git-writes", "--", "sh", "-c",
                   "printf '#!/bin/sh\\ntouch /tmp/pwned\\n' > .git/hooks/pre-commit; git config alias.st '!touch pwned';"
                   "mv .git .old; mkdir .git/modules; echo ref > .git/allowed && echo done"],
                  home=home, cwd=workspace)
    assert "done" in r.stdout, r.stderr  # The control: git's own files are writable.
    assert (sorted(os.listdir(hooks)), (workspace / ".git" / "config").read_bytes()) == before
    assert not (workspace / ".old").exists() and not (workspace / ".git" / "modules").exists()


def test_user_deny_write(home, workspace):
    (workspace / "locked.txt").write_text("keep\n")
    out = try_write([workspace / "locked.txt", workspace / "missing-dir" / "f"], home=home, workspace=workspace,
                    args=["--deny-write", "locked.txt", "--deny-write", "missing-dir"])
    assert "written" not in out
    assert (workspace / "locked.txt").read_text() == "keep\n"
    assert not (workspace / "missing-dir").exists()


def test_read_only_flag_makes_workspace_read_only(home, workspace):
    out = try_write([workspace / "new.txt"], home=home, workspace=workspace, args=["--read-only"])
    assert "written" not in out
    assert not (workspace / "new.txt").exists()


def test_symlink_out_of_workspace(home, workspace):
    (workspace / "etc").symlink_to("/etc")
    (workspace / "homelink").symlink_to(home)
    out = try_write([workspace / "etc" / "blastwall-pwned", workspace / "homelink" / ".bashrc"],
                    home=home, workspace=workspace)
    assert "written" not in out
    assert not os.path.exists("/etc/blastwall-pwned")
    assert (home / ".bashrc").read_text() == "# the user's real bashrc\n"


def test_symlink_created_inside_sandbox(home, workspace):
    script = (f"import os; os.symlink({str(home)!r}, 'h')\n"
              "try:\n open('h/.profile','w').write('x')\nexcept OSError as e:\n print('refused', e.errno)")
    r = in_sandbox(script, home=home, cwd=workspace)
    assert "refused" in r.stdout, r.stdout + r.stderr
    assert not (home / ".profile").exists()


def test_hard_link_out_of_workspace(home, workspace):
    target = home / "notes.txt"
    before = target.read_text()
    script = (f"import os\ntry:\n os.link({str(target)!r}, 'hl')\nexcept OSError as e:\n print('refused', e.errno)\n"
              "else:\n open('hl','a').write('PWNED')\n print('linked')")
    r = in_sandbox(script, home=home, cwd=workspace)
    assert "refused" in r.stdout, r.stdout + r.stderr
    assert target.read_text() == before
    assert not (workspace / "hl").exists()


def test_mknod_device(home, workspace):
    script = ("import os, stat\nfor name, mode in (('null', stat.S_IFCHR), ('disk', stat.S_IFBLK)):\n"
              " try:\n  os.mknod(name, mode | 0o666, os.makedev(1, 3))\n"
              " except OSError as e:\n  print(name, 'refused', e.errno)\n else:\n  print(name, 'created')")
    r = in_sandbox(script, home=home, cwd=workspace)
    assert r.stdout.count("refused") == 2, r.stdout + r.stderr
    assert not (workspace / "null").exists() and not (workspace / "disk").exists()


def test_private_tmp_leaves_nothing_on_host(home, workspace):
    marker = f"blastwall-test-{os.getpid()}-{id(workspace)}"
    r = blastwall(["run", "--", "sh", "-c", f"echo x > /tmp/{marker} && cat /tmp/{marker}"], home=home, cwd=workspace)
    assert r.returncode == 0 and "x" in r.stdout
    assert not os.path.exists(f"/tmp/{marker}")


def test_blastwall_config_is_not_writable_even_when_workspace_is_home(home):
    r = blastwall(["run", "--", "sh", "-c", "mkdir -p .config/blastwall && echo '[network]' > .config/blastwall/policy.toml"],
                  home=home, cwd=home)
    assert r.returncode != 0
    assert not (home / ".config" / "blastwall" / "policy.toml").exists()


@pytest.mark.parametrize("link", [".config", ".vscode", ".git"])
def test_symlinked_protected_path_is_refused(home, workspace, scratch, link):
    # A repository ships a protected directory as a symlink.  Mounts would land
    # on the target and the sandbox could swap the link for a real directory,
    # so blastwall refuses, and creates nothing anywhere.
    outside = scratch / "outside"
    outside.mkdir()
    (workspace / link).symlink_to(outside)
    before = snapshot(workspace)
    r = blastwall(["run", "--", "touch", "ran"], home=home, cwd=workspace)
    assert r.returncode == 125, r.stderr
    assert "symbolic link" in r.stderr
    assert list(outside.iterdir()) == []
    assert snapshot(workspace) == before


@needs_root
def test_setuid_binary_does_not_change_identity(home, workspace, scratch):
    # A setuid copy of `id` owned by uid 4242: outside the sandbox it runs as
    # 4242 (the control); inside, no-new-privs, the unmapped owner and nosuid
    # mounts each keep the caller's identity.
    binary = scratch / "suid-id"
    shutil.copy("/usr/bin/id", binary)
    os.chown(binary, 4242, 4242)
    os.chmod(binary, 0o4755)
    outside = subprocess.run([str(binary), "-u"], capture_output=True, text=True)
    if outside.stdout.strip() != "4242":
        pytest.skip(reason=f"{scratch} does not honour setuid bits (mounted nosuid?)")
    r = blastwall(["run", "--", str(binary), "-u"], home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(os.getuid() or 1000)  # The caller's uid, or 1000 for root: never 4242.


def test_require_landlock_runs_where_landlock_exists(home, workspace):
    from blastwall.tiers.process import landlock_abi

    if not landlock_abi():
        pytest.skip(reason="this kernel has no Landlock")
    r = blastwall(["run", "--require", "landlock", "--", "true"], home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr
