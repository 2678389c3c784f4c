"""The escape known to beat srt 0.0.78, re-enacted step by step.

Pre-open an O_PATH handle to the workspace's .git, create a new user + mount
namespace, mount a tmpfs, pivot_root into it, then rename and rewrite the
write-denied .git/config through the held handle.  In srt the new namespace
dropped the read-only bind; here every step must fail, and the host's
.git/config must be byte-for-byte unchanged.
"""

from __future__ import annotations

import json
import subprocess

from tests.conftest import blastwall, needs_bwrap

pytestmark = needs_bwrap

CHAIN = r"""
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
steps = {}
def record(name, rc):
    steps[name] = [rc, ctypes.get_errno() if rc != 0 else 0]
handle = os.open(".git", os.O_PATH | os.O_DIRECTORY)
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
record("unshare", libc.unshare(CLONE_NEWUSER | CLONE_NEWNS))
os.makedirs("newroot", exist_ok=True)
record("mount-tmpfs", libc.mount(b"none", b"newroot", b"tmpfs", 0, None))
try:
    os.makedirs("newroot/old", exist_ok=True)
except OSError:
    pass
record("pivot_root", libc.syscall(155, b"newroot", b"newroot/old"))
for name, action in (
    ("rename", lambda: os.rename("config", "config.bak", src_dir_fd=handle, dst_dir_fd=handle)),
    ("rewrite", lambda: os.write(os.open("config", os.O_WRONLY | os.O_TRUNC, dir_fd=handle),
                                 b"[core]\n\tfsmonitor = touch /tmp/pwned\n")),
    ("replace-hooks", lambda: os.rename("hooks", "hooks.old", src_dir_fd=handle, dst_dir_fd=handle)),
):
    try:
        action()
        steps[name] = [0, 0]
    except OSError as exc:
        steps[name] = [-1, exc.errno]
print(json.dumps(steps))
"""


def test_opath_pivot_root_chain_cannot_rewrite_git_config(home, workspace):
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    config = workspace / ".git" / "config"
    before = config.read_bytes()
    r = blastwall(["run", "--", "python3", "-c", CHAIN], home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr
    steps = json.loads(r.stdout)
    assert steps["unshare"] == [-1, 1]  # EPERM: seccomp (and --disable-userns)
    assert steps["mount-tmpfs"] == [-1, 1]
    assert steps["pivot_root"] == [-1, 1]
    for step in ("rename", "rewrite", "replace-hooks"):
        assert steps[step][0] == -1, (step, steps)
    assert config.read_bytes() == before
    assert not (workspace / ".git" / "config.bak").exists()
    assert (workspace / ".git" / "hooks").is_dir()


def test_same_chain_with_unshare_tool(home, workspace):
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    config = workspace / ".git" / "config"
    before = config.read_bytes()
    r = blastwall(["run", "--", "sh", "-c",
                   "exec 3<.git; unshare -Urm sh -c 'mount -t tmpfs none /mnt; echo pwned > .git/config'; "
                   "echo pwned > .git/config; mv .git/config .git/c2"], home=home, cwd=workspace)
    assert r.returncode != 0
    assert config.read_bytes() == before
    assert not (workspace / ".git" / "c2").exists()
