"""The boundary holds when the caller is root: every tier, each technique written once.

The protected paths of a workspace are read-only binds, but a bind protects a
path, not its name: renaming the directory that holds one (``mv .git .old``)
would leave the host with the sandbox's own ``.git``.  Every ancestor of a
protected path is pinned (a mount point), so each rename, removal or
replacement below must fail, and the host's files keep their inodes and
bytes.  Files made inside never carry set-id bits and are never device nodes
on the host; the command never runs as root.  Each test has its positive
control in the same run.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess

import pytest

from tests.attacks.tiers import tier_run, tiers_for
from tests.conftest import assert_no_traceback

PROTECTED = [".git", ".git/hooks", ".git/config", ".git/modules", "config", "config/prod", "config/prod/app.yml",
             ".vscode", ".bashrc"]

MOVE_AWAY = r"""
for p in PATHS; do
  mv "$p" "$p.moved" 2>/dev/null && echo "MOVED $p"
  rm -rf "$p" 2>/dev/null; [ -e "$p" ] || echo "GONE $p"
  ln -s /tmp "$p.lnk" 2>/dev/null && mv -T "$p.lnk" "$p" 2>/dev/null && echo "LINKED $p"; rm -f "$p.lnk"
  mkdir -p "$p.new" 2>/dev/null && mv -T "$p.new" "$p" 2>/dev/null && echo "REPLACED $p"; rm -rf "$p.new"
done
mkdir -p .git/hooks 2>/dev/null; printf '#!/bin/sh\necho PWNED\n' > .git/hooks/pre-commit 2>/dev/null
printf '[core]\n\tfsmonitor = touch PWNED\n' >> .git/config 2>/dev/null
echo PWNED > config/prod/app.yml 2>/dev/null; echo PWNED > .vscode/settings.json 2>/dev/null
echo PWNED > .bashrc 2>/dev/null
echo ok > ok.txt && echo changed > .git/description && echo a > config/prod/other && \
  mv config/prod/other config/prod/renamed && echo CONTROL
"""


def _fingerprint(workspace, paths):
    """{path: (inode, sha256 of a file's bytes or sorted listing of a directory)} of what exists."""
    out = {}
    for rel in paths:
        path = workspace / rel
        if not os.path.lexists(path):
            out[rel] = None
            continue
        info = os.lstat(path)
        if stat.S_ISDIR(info.st_mode):
            body = "\n".join(sorted(os.listdir(path))).encode()
        else:
            body = path.read_bytes()
        out[rel] = (info.st_ino, hashlib.sha256(body).hexdigest())
    return out


@pytest.mark.parametrize("tier", tiers_for("rename-protected-ancestor"))
def test_rename_protected_ancestor_away(tier, home, workspace, tier_env):
    """With git writes allowed, ``.git`` is a writable ancestor of protected paths (by default it is read-only
    whole, and test_git_dir attacks it)."""
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    (workspace / "config" / "prod").mkdir(parents=True)
    (workspace / "config" / "prod" / "app.yml").write_text("prod: true\n")
    (workspace / ".vscode").mkdir()
    (workspace / ".vscode" / "settings.json").write_text("{}\n")
    watched = [p for p in PROTECTED if p not in (".git", "config", "config/prod")] + [".git/hooks/pre-commit"]
    before = _fingerprint(workspace, watched)
    inodes = {rel: os.lstat(workspace / rel).st_ino for rel in (".git", "config", "config/prod")}
    top = sorted(os.listdir(workspace))

    r = tier_run(tier, MOVE_AWAY.replace("PATHS", " ".join(PROTECTED)), home=home, workspace=workspace,
                 env=tier_env, args=["--deny-write", "config/prod/app.yml", "--allow-git-writes"])
    assert_no_traceback(r)
    assert "CONTROL" in r.stdout, (r.stdout, r.stderr)  # Writes beside the protected paths work.
    for word in ("MOVED", "GONE", "LINKED", "REPLACED"):
        assert word not in r.stdout, r.stdout
    # On the host: the same directories (same inodes), the same protected bytes, no new entries but the control.
    assert {rel: os.lstat(workspace / rel).st_ino for rel in inodes} == inodes
    assert _fingerprint(workspace, watched) == before
    assert sorted(os.listdir(workspace)) == sorted(top + ["ok.txt"])
    assert (workspace / "config" / "prod" / "renamed").read_text() == "a\n"
    assert (workspace / ".git" / "description").read_text() == "changed\n"
    leftovers = [name for _, dirs, files in os.walk(workspace) for name in dirs + files
                 if name.endswith((".moved", ".lnk", ".new"))]
    assert leftovers == []


@pytest.mark.parametrize("tier", tiers_for("replace-gitdir-file"))
def test_replace_gitdir_file(tier, home, workspace, scratch, tier_env):
    """A worktree's ``.git`` is a file naming the real git directory: rewriting or replacing it redirects git."""
    real = scratch / "real.git"
    subprocess.run(["git", "init", "-q", "--separate-git-dir", str(real), str(workspace)], check=True)
    marker = scratch / "PWNED"
    before = (workspace / ".git").read_bytes()
    script = (f"mkdir -p evil; printf '[core]\\n\\trepositoryformatversion = 0\\n\\tfsmonitor = touch {marker}\\n'"
              " > evil/config; mkdir -p evil/objects evil/refs; echo 'ref: refs/heads/main' > evil/HEAD; "
              "printf 'gitdir: ./evil\\n' > .git 2>/dev/null && echo REWROTE; "
              "rm -f .git 2>/dev/null && echo REMOVED; mv .git .git.old 2>/dev/null && echo MOVED; "
              "echo ok > ok.txt && echo CONTROL")
    r = tier_run(tier, script, home=home, workspace=workspace, env=tier_env)
    assert "CONTROL" in r.stdout, (r.stdout, r.stderr)
    assert not any(word in r.stdout for word in ("REWROTE", "REMOVED", "MOVED")), r.stdout
    assert (workspace / ".git").read_bytes() == before
    subprocess.run(["git", "-C", str(workspace), "status", "--short"], capture_output=True, timeout=30)
    assert not marker.exists()  # git on the host still uses the real git directory.


SETID = r"""
cp /bin/sh s1; chmod 4755 s1; chmod u+s s1; chmod 2755 s1; chmod g+s s1
install -m 4755 /bin/sh s2 2>/dev/null
python3 -c 'import os
for name, mode in (("s3", 0o4755), ("s4", 0o2755), ("s5", 0o6777)):
    try:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT, mode))
    except OSError:
        pass
try:
    os.mknod("c1", 0o666 | 0o020000, os.makedev(1, 3))
except OSError:
    pass
try:
    os.mknod("b1", 0o666 | 0o060000, os.makedev(7, 0))
except OSError:
    pass
import ctypes, platform
open("w1", "w").close()
# renameat2(AT_FDCWD, "w1", AT_FDCWD, "w2", RENAME_WHITEOUT) leaves a 0:0 character device at w1.
number = {"x86_64": 316, "aarch64": 276}[platform.machine()]
ctypes.CDLL(None, use_errno=True).syscall(number, -100, b"w1", -100, b"w2", 4)'
mknod c2 c 1 3 2>/dev/null; mkdir d1; chmod 2775 d1
cp /bin/sh plain && chmod 755 plain && echo CONTROL
"""


@pytest.mark.parametrize("tier", tiers_for("setid-and-device-files"))
def test_setid_and_device_files_never_reach_the_host(tier, home, workspace, tier_env):
    r = tier_run(tier, SETID, home=home, workspace=workspace, env=tier_env)
    assert_no_traceback(r)
    assert "CONTROL" in r.stdout, (r.stdout, r.stderr)
    made = {}
    for dirpath, dirnames, filenames in os.walk(workspace):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            made[os.path.relpath(path, workspace)] = os.lstat(path).st_mode
    assert stat.S_IMODE(made["plain"]) == 0o755  # The control: an ordinary mode lands as asked.
    setid = {p: oct(m) for p, m in made.items() if m & (stat.S_ISUID | stat.S_ISGID)}
    devices = {p: oct(m) for p, m in made.items() if stat.S_ISCHR(m) or stat.S_ISBLK(m)}
    assert setid == {} and devices == {}, (setid, devices)


@pytest.mark.parametrize("tier", tiers_for("never-root-inside"))
def test_command_is_never_root(tier, home, workspace, tier_env):
    r = tier_run(tier, "id -u; id -g; grep CapEff /proc/self/status; touch /usr/bin/blastwall-pwned 2>/dev/null "
                       "&& echo WROTE-SYSTEM; echo ok > ok.txt", home=home, workspace=workspace, env=tier_env)
    lines = r.stdout.split()
    assert r.returncode == 0, r.stderr
    expected = str(os.getuid() or 1000)
    assert lines[:2] == [expected, str(os.getgid() or 1000) if os.getuid() else "1000"], r.stdout
    assert "CapEff:" in r.stdout and lines[3] == "0000000000000000"
    assert "WROTE-SYSTEM" not in r.stdout
    # On the host the file belongs to the workspace's owner, whatever uid the command had inside.
    assert os.stat(workspace / "ok.txt").st_uid == os.stat(workspace).st_uid


GUEST_ROOT = r"""
cd WS
# Undo every protection the guest kernel holds: the agent's binds over the workspace.
for m in $(awk -v ws="WS/" 'index($2, ws) == 1 {print $2}' /proc/mounts | sort -r); do umount -l "$m"; done
awk -v ws="WS/" 'index($2, ws) == 1' /proc/mounts | grep -q . || echo UNMOUNTED
mv .git .git.old 2>/dev/null && echo MOVED
printf '[core]\n\tfsmonitor = touch PWNED\n' >> .git/config 2>/dev/null && echo CONFIG
printf '#!/bin/sh\n' > .git/hooks/pre-commit 2>/dev/null && echo HOOK
rmdir .bashrc 2>/dev/null; echo PWNED > .bashrc 2>/dev/null && echo BASHRC
chmod 4755 plain 2>/dev/null && echo SETUID
mknod dev c 1 3 2>/dev/null && echo DEVICE
touch new-by-root 2>/dev/null && echo CREATED
echo appended >> plain && echo CONTROL
"""

AS_USER = r"""
for port in /dev/vport*; do (: > "$port") 2>/dev/null && echo "PORT $port"; done
python3 -c 'import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
pidfd = libc.syscall(434, 1, 0)
print("PIDFD", pidfd >= 0 and libc.syscall(438, pidfd, 3, 0) >= 0)'
echo x > /usr/bin/blastwall-pwned 2>/dev/null && echo IMAGE
echo USER-CONTROL
"""


@pytest.mark.parametrize("tier", tiers_for("guest-root-held-on-the-host"))
def test_guest_root_is_held_on_the_host_side(tier, home, workspace, tier_env):
    """Root in the guest (a kernel exploit, on purpose here) undoes the agent's mounts; QEMU's sandbox still holds."""
    from blastwall import api
    from blastwall.policy.model import parse_layer
    from blastwall.tiers.vm.session import VmSession
    from tests.conftest import bw_env
    from tests.tiers.vm.test_vm import run

    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    (workspace / "plain").write_text("plain\n")
    env = bw_env(home, tier_env)
    policy = api.load(flags=parse_layer({"sandbox": {"tier": "vm"}}, "test"), workspace=str(workspace), environ=env)
    plan = api.plan_for(policy, workspace=str(workspace), cwd=str(workspace), environ=env)
    watched = [".git/config", ".git/hooks", ".git/hooks/pre-commit", ".bashrc", "dev", "new-by-root"]
    before = _fingerprint(workspace, watched)
    git_inode = os.lstat(workspace / ".git").st_ino
    session = VmSession(plan, environ=env, workspace=str(workspace), mount_at="/home/user")
    try:
        session.boot()
        status, out, err = run(session, GUEST_ROOT.replace("WS", "/home/user"), root=True)
        assert "CONTROL" in out and "UNMOUNTED" in out, (out, err)  # Root, and every guest-side bind gone.
        for word in ("MOVED", "CONFIG", "HOOK", "BASHRC", "SETUID", "DEVICE", "CREATED"):
            assert word not in out, out
        status, out, err = run(session, AS_USER)
        assert "USER-CONTROL" in out, (out, err)
        assert "PORT" not in out and "IMAGE" not in out, out  # The user reaches neither the channel nor the image.
        assert "PIDFD False" in out, out  # Nor the agent's descriptors.
    finally:
        session.close()
    assert os.lstat(workspace / ".git").st_ino == git_inode
    assert _fingerprint(workspace, watched) == before
    assert (workspace / "plain").read_text() == "plain\nappended\n"
    assert not stat.S_IMODE(os.stat(workspace / "plain").st_mode) & (stat.S_ISUID | stat.S_ISGID)
