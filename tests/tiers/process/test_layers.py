"""Each layer of the process tier, tested on its own.

* seccomp: the filter installed in a plain process, without bubblewrap;
* Landlock: the launcher under bubblewrap with two writable mounts, only one
  of which it grants;
* mounts: the bubblewrap command line with an allow-everything filter and no
  launcher;
* verification: the launcher refuses to run when the filter is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from blastwall.policy.defaults import DENIED_SYSCALL_FAMILIES, SOCKET_FAMILIES
from blastwall.tiers import _raw_bwrap, _raw_seccomp
from blastwall.tiers.process import landlock_abi, launcher_path
from tests.conftest import BWRAP, needs_bwrap

LAUNCHER = launcher_path()

PROBES = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def probe():
    out = {}
    def call(name, *args):
        ctypes.set_errno(0)
        rc = libc.syscall(*[ctypes.c_long(a) for a in args])
        out[name] = ctypes.get_errno() if rc < 0 else 0
    call("bpf", 321, 0, 0, 0)
    call("io_uring_setup", 425, 0, 0)
    call("perf_event_open", 298, 0, 0, 0, 0, 0)
    call("keyctl", 250, 0, 0)
    call("kexec_load", 246, 0, 0, 0, 0)
    call("open_by_handle_at", 304, -1, 0, 0)
    call("mount", 165, 0, 0, 0, 0, 0)
    call("ptrace", 101, 0x4206, 1, 0, 0)
    call("socket-unix", 41, 1, 1, 0)
    call("socket-unix-upper-half", 41, 0x100000001, 1, 0)
    call("socket-vsock", 41, 40, 1, 0)
    call("socket-netlink", 41, 16, 3, 0)
    call("socket-packet", 41, 17, 3, 0)
    call("socket-family-99", 41, 99, 1, 0)
    memfd = os.memfd_create("probe")
    call("fchmod-setuid", 91, memfd, 0o4755)
    call("fchmod-setgid", 91, memfd, 0o2755)
    os.close(memfd)
    name = ctypes.create_string_buffer(("/tmp/blastwall-probe-%d" % os.getpid()).encode())
    call("openat-create-setuid", 257, -100, ctypes.addressof(name), 0o101, 0o4755)  # O_WRONLY|O_CREAT
    if os.path.exists(name.value):
        os.unlink(name.value)
    call("mknodat-char-device", 259, -100, ctypes.addressof(name), 0o20644, 0x103)  # /dev/null's 1:3
    if os.path.exists(name.value):
        os.unlink(name.value)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if libc.unshare(0x10000000) == 0 else ctypes.get_errno())
    out["unshare-user"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return out
before = probe()
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
data = os.read(int(sys.argv[1]), 1 << 20)
buf = ctypes.create_string_buffer(data, len(data))
prog = Prog(len(data) // 8, ctypes.cast(buf, ctypes.c_void_p))
assert libc.prctl(38, 1, 0, 0, 0) == 0
assert libc.prctl(22, 2, ctypes.byref(prog)) == 0, ctypes.get_errno()
print(json.dumps({"before": before, "after": probe()}))
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="probe syscall numbers are x86_64's")
def test_seccomp_filter_alone():
    fd = _raw_seccomp.compile_filter(families=DENIED_SYSCALL_FAMILIES, socket_families=SOCKET_FAMILIES)
    try:
        r = subprocess.run([sys.executable, "-c", PROBES, str(fd)], pass_fds=(fd,), capture_output=True,
                           text=True, timeout=30)
    finally:
        os.close(fd)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    after = results["after"]
    assert all(code == 1 for code in after.values()), after  # Exactly EPERM, every one.
    # The control: without the filter the kernel answered otherwise, so the
    # EPERMs above come from the filter.
    before = results["before"]
    assert sum(code != 1 for code in before.values()) >= len(before) - 3, before
    # Without the filter the upper half of the family is dropped: a unix socket, and a setuid file.
    assert before["socket-unix-upper-half"] == 0 and before["fchmod-setuid"] == 0 and before["socket-netlink"] == 0


def test_sockets_are_an_allowlist():
    rules = _raw_seccomp._socket_rules(("inet", "inet6"))
    refused = {cond[0][3] for name, _, cond in rules if name == "socket" and cond[0][1] == _raw_seccomp.SCMP_CMP_MASKED_EQ}
    assert refused == set(range(_raw_seccomp.SOCKET_FAMILY_LIMIT)) - {2, 10}
    with pytest.raises(ValueError):
        _raw_seccomp._socket_rules(("netlink",))


def test_seccomp_rejects_unknown_family():
    with pytest.raises(ValueError):
        _raw_seccomp.compile_filter(families=("no-such-family",), socket_families=SOCKET_FAMILIES)


def test_every_family_in_the_defaults_is_known():
    assert set(DENIED_SYSCALL_FAMILIES) == set(_raw_seccomp.FAMILIES)


def _launcher_argv(writable, extra=()):
    return [LAUNCHER, *[a for w in writable for a in ("--write", str(w))], *extra]


@needs_bwrap
@pytest.mark.skipif(landlock_abi() == 0, reason="this kernel has no Landlock")
def test_landlock_alone_restricts_writes_to_granted_paths(scratch):
    granted, refused = scratch / "granted", scratch / "refused"
    granted.mkdir()
    refused.mkdir()
    fd = _raw_seccomp.compile_filter(families=DENIED_SYSCALL_FAMILIES, socket_families=SOCKET_FAMILIES)
    try:
        # Both directories are writable *mounts*; only Landlock tells them apart.
        argv = [BWRAP, "--unshare-user", "--unshare-pid", "--die-with-parent", "--cap-drop", "ALL",
                "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                "--bind", str(granted), str(granted), "--bind", str(refused), str(refused),
                "--seccomp", str(fd), "--", *_launcher_argv([granted, "/dev"]), "--",
                "sh", "-c", f"echo ok > {granted}/f; echo pwned > {refused}/f; mkdir {refused}/d; echo done"]
        r = subprocess.run(argv, pass_fds=(fd,), capture_output=True, text=True, timeout=30)
    finally:
        os.close(fd)
    assert "done" in r.stdout, r.stderr
    assert (granted / "f").read_text() == "ok\n"
    assert not (refused / "f").exists() and not (refused / "d").exists()
    assert "Permission denied" in r.stderr  # EACCES: Landlock, not EROFS from a mount


@needs_bwrap
def test_launcher_refuses_without_seccomp(scratch):
    marker = scratch / "marker"
    argv = [BWRAP, "--unshare-user", "--cap-drop", "ALL", "--ro-bind", "/", "/", "--dev", "/dev",
            "--bind", str(scratch), str(scratch), "--", *_launcher_argv([scratch]), "--", "touch", str(marker)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert r.returncode == 125
    assert "Refusing to run" in r.stderr and "seccomp" in r.stderr
    assert not marker.exists()


@needs_bwrap
def test_launcher_refuses_when_landlock_required_but_unavailable(scratch):
    # Make Landlock look absent by answering its syscalls with ENOSYS, as an
    # old kernel would.
    import errno

    lib = _raw_seccomp._load()
    ctx = lib.seccomp_init(_raw_seccomp.SCMP_ACT_ALLOW)
    for nr in (444, 445, 446):
        lib.seccomp_rule_add_array(ctx, _raw_seccomp.SCMP_ACT_ERRNO(errno.ENOSYS), nr, 0,
                                   (_raw_seccomp._ArgCmp * 1)())
    # Everything else as the real filter, so that the launcher's own checks pass.
    for name, code, conds in _raw_seccomp._rules(DENIED_SYSCALL_FAMILIES, SOCKET_FAMILIES):
        nr = _raw_seccomp._resolve(lib, name)
        arr = (_raw_seccomp._ArgCmp * max(1, len(conds)))(*[_raw_seccomp._ArgCmp(*c) for c in conds])
        assert lib.seccomp_rule_add_array(ctx, _raw_seccomp.SCMP_ACT_ERRNO(code), nr, len(conds), arr) == 0
    fd = os.memfd_create("test-filter", 0)
    assert lib.seccomp_export_bpf(ctx, fd) == 0
    lib.seccomp_release(ctx)
    os.lseek(fd, 0, os.SEEK_SET)
    marker = scratch / "marker"
    try:
        argv = [BWRAP, "--unshare-user", "--cap-drop", "ALL", "--ro-bind", "/", "/", "--dev", "/dev",
                "--bind", str(scratch), str(scratch), "--seccomp", str(fd), "--",
                *_launcher_argv([scratch], ["--require-landlock"]), "--", "touch", str(marker)]
        r = subprocess.run(argv, pass_fds=(fd,), capture_output=True, text=True, timeout=30)
    finally:
        os.close(fd)
    assert r.returncode == 125, r.stderr
    assert "Landlock is required" in r.stderr
    assert not marker.exists()


@needs_bwrap
def test_mount_layer_alone(scratch):
    ws = scratch / "ws"
    secret = scratch / "secret"
    ws.mkdir()
    secret.mkdir()
    (secret / "key").write_text("s3cret")
    fd = _raw_seccomp.compile_filter(families=(), socket_families=("unix", "inet", "inet6"))  # Allows nearly all.
    status_r, status_w = os.pipe()
    try:
        argv = _raw_bwrap.bwrap_argv(
            bwrap=BWRAP,
            mounts=[("ro-root",), ("dev",), ("proc",), ("tmpfs", "/tmp"), ("bind", str(ws)), ("hide-dir", str(secret))],
            isolate_network=True, chdir=str(ws), uid=1000, gid=1000, seccomp_fd=fd, status_fd=status_w, block_fd=None, launcher=["env"],
            command=["sh", "-c", f"echo ok > {ws}/f; cat {secret}/key; echo x > {scratch}/outside; echo done"],
        )
        r = subprocess.run(argv, pass_fds=(fd, status_w), capture_output=True, text=True, timeout=30)
    finally:
        for f in (fd, status_r, status_w):
            os.close(f)
    assert "done" in r.stdout, r.stderr
    assert (ws / "f").read_text() == "ok\n"
    assert "s3cret" not in r.stdout
    assert not (scratch / "outside").exists()
    assert "Read-only file system" in r.stderr


def test_launcher_outside_a_sandbox_refuses(scratch):
    # Run directly on the host (no seccomp, no no-new-privs): it must refuse.
    marker = scratch / "marker"
    r = subprocess.run([LAUNCHER, "--write", str(scratch), "--", "touch", str(marker)], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 125 and "Refusing to run" in r.stderr
    assert not marker.exists()


@pytest.mark.parametrize("args", [
    [], ["--"], ["--write"], ["--write", "relative", "--", "true"], ["--stderr-fd", "x", "--", "true"],
    ["--stderr-fd", "99999999", "--", "true"], ["--bogus", "--", "true"], ["--ready-fd"],
    ["--write", "/x"] * 300 + ["--", "true"],
])
def test_launcher_rejects_bad_arguments(args, scratch):
    r = subprocess.run([LAUNCHER, *args], capture_output=True, text=True, timeout=10, cwd=scratch)
    assert r.returncode == 125
    assert r.stderr.startswith("blastwall: ")
