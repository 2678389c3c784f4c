"""Kernel attack surface refused by the seccomp layer, through the full sandbox.

Each syscall is made with harmless arguments: without the filter the kernel
would answer EFAULT/EINVAL/EBADF (or succeed); with it, exactly EPERM.
"""

from __future__ import annotations

import json
import platform

import pytest

from tests.conftest import blastwall, in_sandbox, needs_bwrap

pytestmark = [needs_bwrap, pytest.mark.skipif(platform.machine() != "x86_64",
                                              reason="syscall numbers below are x86_64's")]

# name -> (x86_64 number, expected errno)
SYSCALLS = {
    "io_uring_setup": (425, 1),
    "io_uring_enter": (426, 1),
    "bpf": (321, 1),
    "perf_event_open": (298, 1),
    "userfaultfd": (323, 1),
    "keyctl": (250, 1),
    "add_key": (248, 1),
    "request_key": (249, 1),
    "init_module": (175, 1),
    "finit_module": (313, 1),
    "delete_module": (176, 1),
    "kexec_load": (246, 1),
    "kexec_file_load": (320, 1),
    "ptrace": (101, 1),
    "process_vm_readv": (310, 1),
    "process_vm_writev": (311, 1),
    "pidfd_getfd": (438, 1),
    "open_by_handle_at (shocker)": (304, 1),
    "mount": (165, 1),
    "umount2": (166, 1),
    "pivot_root": (155, 1),
    "chroot": (161, 1),
    "setns": (308, 1),
    "fsopen": (430, 1),
    "fsmount": (432, 1),
    "open_tree": (428, 1),
    "move_mount": (429, 1),
    "mount_setattr": (442, 1),
    "clone3 (must fall back to filtered clone)": (435, 38),
}

PROBE = """
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {}
for name, (nr, _) in json.loads(sys.argv[1]).items():
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0),
                      ctypes.c_long(0), ctypes.c_long(0))
    out[name] = [rc, ctypes.get_errno()]
print(json.dumps(out))
"""


def test_dangerous_syscalls_are_refused_with_exact_errno(home, workspace):

    r = blastwall(["run", "--", "python3", "-c", PROBE, json.dumps(SYSCALLS)], home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    wrong = {name: results[name] for name, (_, errno) in SYSCALLS.items() if results[name] != [-1, errno]}
    assert not wrong, f"not refused as expected (rc, errno): {wrong}"


@pytest.mark.parametrize("flag,name", [(0x10000000, "NEWUSER"), (0x00020000, "NEWNS"), (0x40000000, "NEWNET"),
                                       (0x20000000, "NEWPID"), (0x80, "NEWTIME")])
def test_unshare_namespaces(home, workspace, flag, name):
    script = (f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
              f"print(libc.unshare({flag}), ctypes.get_errno())")
    r = in_sandbox(script, home=home, cwd=workspace)
    assert r.stdout.split() == ["-1", "1"], (name, r.stdout, r.stderr)


def test_unshare_command_cannot_become_root_in_new_namespace(home, workspace):

    r = blastwall(["run", "--", "unshare", "--user", "--map-root-user", "--mount", "true"], home=home, cwd=workspace)
    assert r.returncode != 0
    assert "Operation not permitted" in r.stderr


def test_tiocsti_high_bits_cve_2019_10063(home, workspace):
    # flatpak's CVE-2019-10063: the kernel truncates ioctl's request to 32 bits,
    # so a filter comparing all 64 bits lets 0x1_00005412 through as TIOCSTI.
    script = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
              "c = ctypes.c_char(b'x')\nfor req in (0x5412, 0x100005412, 0x541C):\n"
              " rc = libc.syscall(ctypes.c_long(16), ctypes.c_long(0), ctypes.c_long(req), ctypes.byref(c))\n"
              " print(rc, ctypes.get_errno())")
    r = in_sandbox(script, home=home, cwd=workspace)
    assert r.stdout.split("\n")[:3] == ["-1 1", "-1 1", "-1 1"], r.stdout + r.stderr


def test_x32_abi_syscall_is_killed(home, workspace):
    # x32 syscall numbers (bit 30 set) would match none of the x86_64 rules;
    # libseccomp's filter treats them as a foreign architecture and kills.
    script = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
              "print('before', flush=True)\n"
              "rc = libc.syscall(ctypes.c_long(0x40000000 + 272), ctypes.c_long(0x10000000))\n"
              "print('after', rc, ctypes.get_errno(), flush=True)")
    r = in_sandbox(script, home=home, cwd=workspace)
    assert "before" in r.stdout
    assert "after 0 " not in r.stdout  # Never a successful unshare.
    assert r.returncode == 128 + 31 or "after -1" in r.stdout  # SIGSYS, or refused


def test_no_capabilities_and_no_new_privs(home, workspace):
    r = in_sandbox("print(open('/proc/self/status').read())", home=home, cwd=workspace)
    status = dict(line.split(":", 1) for line in r.stdout.splitlines() if ":" in line)
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, cap


def test_ptrace_of_another_process_in_sandbox(home, workspace):
    script = ("import ctypes, os, time\nlibc = ctypes.CDLL(None, use_errno=True)\n"
              "pid = os.fork()\nif pid == 0:\n time.sleep(5); os._exit(0)\n"
              "rc = libc.ptrace(16, pid, 0, 0)\nprint(rc, ctypes.get_errno())\nos.kill(pid, 9)")
    r = in_sandbox(script, home=home, cwd=workspace)
    assert r.stdout.split() == ["-1", "1"], r.stdout + r.stderr
