"""HAZMAT: building seccomp BPF programs with libseccomp through ctypes.

Only the process tier may import this module.  It turns syscall *families*
(names from ``blastwall.policy.defaults.DENIED_SYSCALL_FAMILIES``) into a BPF
program that bubblewrap installs as the last step before exec.

Misuse looks like: a family name that is silently ignored (``compile_filter``
raises on unknown names instead), a rule on a 32-bit argument compared without
masking (the kernel truncates ``ioctl`` requests to 32 bits, so an unmasked
comparison lets ``0x1_00005412`` through as TIOCSTI), or a filter exported for
the wrong architecture.  The filter's default action is *allow*: it is a
deny-list of dangerous kernel surface, layered under bubblewrap's namespaces and
Landlock, not the whole boundary.  Syscalls of any other architecture (32-bit
``int 0x80``, x32) hit libseccomp's bad-architecture action, which kills the
process.
"""

from __future__ import annotations

import ctypes
import errno
import os

__all__ = ["SeccompUnavailable", "compile_filter"]

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_KILL_PROCESS = 0x80000000


def SCMP_ACT_ERRNO(code: int) -> int:  # noqa: N802 - libseccomp's name
    return 0x00050000 | (code & 0xFFFF)


SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7

AF_UNIX = 1
AF_VSOCK = 40
TIOCSTI = 0x5412
TIOCLINUX = 0x541C

# Namespace flags shared by clone(2) and unshare(2).  CLONE_NEWTIME (0x80)
# overlaps the exit-signal byte of clone(2), so it is checked for unshare only.
_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
CLONE_NEWTIME = 0x80

# Syscalls newer than some libseccomp releases know, by x86_64 number.
_X86_64_FALLBACK = {"open_tree_attr": 467, "mount_setattr": 442, "move_mount": 429,
                    "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
                    "fspick": 433, "pidfd_getfd": 438, "landlock_restrict_self": 446}


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class SeccompUnavailable(OSError):
    """libseccomp could not be loaded or refused a rule."""


# family -> list of (syscall, errno, [(arg index, op, a, b), ...]).  Each entry
# is one rule; the conditions of one rule must all hold.
def _families() -> dict[str, list[tuple[str, int, list[tuple[int, int, int, int]]]]]:
    eperm = errno.EPERM
    simple = lambda *names: [(n, eperm, []) for n in names]  # noqa: E731
    namespaces = [("setns", eperm, [])]
    for flag in _NAMESPACE_FLAGS:
        namespaces.append(("unshare", eperm, [(0, SCMP_CMP_MASKED_EQ, flag, flag)]))
        namespaces.append(("clone", eperm, [(0, SCMP_CMP_MASKED_EQ, flag, flag)]))
    namespaces.append(("unshare", eperm, [(0, SCMP_CMP_MASKED_EQ, CLONE_NEWTIME, CLONE_NEWTIME)]))
    # clone3 passes its flags in memory that seccomp cannot read: answer ENOSYS so
    # that libc falls back to clone(2), whose flags the rules above do check.
    namespaces.append(("clone3", errno.ENOSYS, []))
    return {
        "unix-sockets": [("socket", eperm, [(0, SCMP_CMP_EQ, AF_UNIX, 0)])],
        "vsock": [("socket", eperm, [(0, SCMP_CMP_EQ, AF_VSOCK, 0)])],
        "namespaces": namespaces,
        "mount": simple("mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
                        "open_tree_attr", "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr"),
        "ptrace": simple("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd"),
        "io-uring": simple("io_uring_setup", "io_uring_enter", "io_uring_register"),
        "bpf": simple("bpf"),
        "perf": simple("perf_event_open"),
        "keyring": simple("add_key", "request_key", "keyctl"),
        "kernel-modules": simple("init_module", "finit_module", "delete_module"),
        "kexec": simple("kexec_load", "kexec_file_load"),
        "terminal-injection": [
            ("ioctl", eperm, [(1, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, TIOCSTI)]),
            ("ioctl", eperm, [(1, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, TIOCLINUX)]),
        ],
        "handle-open": simple("open_by_handle_at"),
        "userfaultfd": simple("userfaultfd"),
    }


FAMILIES = tuple(_families())

_lib = None


def _load():
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError as exc:
            raise SeccompUnavailable(
                errno.ENOENT, f"libseccomp is not installed ({exc}); install the libseccomp2 package"
            ) from None
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        _lib = lib
    return _lib


def _resolve(lib, name: str) -> int:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr >= 0:
        return nr
    if os.uname().machine == "x86_64" and name in _X86_64_FALLBACK:
        return _X86_64_FALLBACK[name]
    return -1


def compile_filter(*, families: tuple[str, ...]) -> int:
    """Return a file descriptor holding the BPF program refusing ``families``.

    The descriptor is a memfd positioned at 0, inheritable, ready to be
    handed to ``bwrap --seccomp FD``.  The caller owns and must close it.
    """
    table = _families()
    unknown = [f for f in families if f not in table]
    if unknown:
        raise ValueError(f"unknown syscall families: {unknown}")
    lib = _load()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable(errno.ENOMEM, "seccomp_init failed")
    try:
        for family in families:
            for name, code, conds in table[family]:
                nr = _resolve(lib, name)
                if nr < 0:
                    # Unknown to this libseccomp and not in our table: the kernel
                    # this libseccomp was built for does not have it either.
                    continue
                array = (_ArgCmp * max(1, len(conds)))()
                for i, (arg, op, a, b) in enumerate(conds):
                    array[i] = _ArgCmp(arg, op, a, b)
                rc = lib.seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(code), nr, len(conds), array)
                if rc < 0:
                    raise SeccompUnavailable(-rc, f"Can't add seccomp rule for {name}: {os.strerror(-rc)}")
        fd = os.memfd_create("blastwall-seccomp", os.MFD_CLOEXEC)
        rc = lib.seccomp_export_bpf(ctx, fd)
        if rc < 0:
            os.close(fd)
            raise SeccompUnavailable(-rc, f"Can't export seccomp filter: {os.strerror(-rc)}")
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
        return fd
    finally:
        lib.seccomp_release(ctx)
