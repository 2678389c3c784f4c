"""HAZMAT: seccomp rules, as BPF programs (libseccomp through ctypes) and as OCI profiles.

Only the tiers may import this module.  It turns syscall *families* (names
from ``blastwall.policy.defaults.DENIED_SYSCALL_FAMILIES``) and an allowlist
of socket address families into:

* a BPF program that bubblewrap installs as the last step before exec (the
  process tier, and the VM tier around QEMU): ``compile_filter``;
* the ``linux.seccomp`` section of an OCI spec, which gVisor applies inside
  its own kernel (``runsc --oci-seccomp``): ``oci_profile``.

Misuse looks like: a family name that is silently ignored (both raise on
unknown names instead), a rule on a 32-bit argument compared without masking
(the kernel truncates ``int`` and ``mode_t`` arguments to 32 bits, so an
unmasked ``socket(0x1_00000001, ...)`` passes a rule for AF_UNIX and creates a
unix socket all the same), or a filter exported for the wrong architecture.
The filter's default action is *allow*: it is a deny-list of dangerous kernel
surface, layered under the namespaces and Landlock, not the whole boundary --
except for socket(2), whose address families are an allowlist.  Syscalls of
any other architecture (32-bit ``int 0x80``, x32) hit libseccomp's
bad-architecture action, which kills the process.
"""

from __future__ import annotations

import ctypes
import errno
import os

__all__ = ["FAMILIES", "SOCKET_FAMILY_NUMBERS", "SeccompUnavailable", "compile_filter", "oci_profile"]

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_KILL_PROCESS = 0x80000000


def SCMP_ACT_ERRNO(code: int) -> int:  # noqa: N802 - libseccomp's name
    return 0x00050000 | (code & 0xFFFF)


SCMP_CMP_EQ = 4
SCMP_CMP_GE = 5
SCMP_CMP_MASKED_EQ = 7
_OCI_OPS = {SCMP_CMP_EQ: "SCMP_CMP_EQ", SCMP_CMP_GE: "SCMP_CMP_GE", SCMP_CMP_MASKED_EQ: "SCMP_CMP_MASKED_EQ"}

LOW32 = 0xFFFFFFFF
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
RENAME_WHITEOUT = 1 << 2
SOCK_TYPE_MASK = 0xF  # The type's low bits; SOCK_NONBLOCK and SOCK_CLOEXEC live above them.
PAIR_TYPES = (1, 5)  # SOCK_STREAM, SOCK_SEQPACKET: the socketpair(2) types that reach only each other.

# Address families by name, for the allowlist.  Every number below
# SOCKET_FAMILY_LIMIT that is not allowed gets its own rule (compared on the
# low 32 bits, as the kernel reads it), and every value at or above the limit
# is refused whole: the kernel knows no family above 45 today.
SOCKET_FAMILY_NUMBERS = {"unix": 1, "inet": 2, "inet6": 10}
SOCKET_FAMILY_LIMIT = 64

# Namespace flags shared by clone(2) and unshare(2).  CLONE_NEWTIME (0x80)
# overlaps the exit-signal byte of clone(2), so it is checked for unshare only.
_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
CLONE_NEWTIME = 0x80

S_ISUID = 0o4000
S_ISGID = 0o2000
S_IFMT = 0o170000
S_IFCHR = 0o020000
S_IFBLK = 0o060000
O_CREAT = 0o100
O_TMPFILE_FLAG = 0o20000000  # __O_TMPFILE: O_TMPFILE is this plus O_DIRECTORY.

# Syscalls newer than some libseccomp releases know, by x86_64 number.
_X86_64_FALLBACK = {"open_tree_attr": 467, "mount_setattr": 442, "move_mount": 429,
                    "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
                    "fspick": 433, "pidfd_getfd": 438, "landlock_restrict_self": 446,
                    "openat2": 437, "fchmodat2": 452}


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class SeccompUnavailable(OSError):
    """libseccomp could not be loaded or refused a rule."""


Rule = tuple[str, int, list[tuple[int, int, int, int]]]


def _set_id() -> list[Rule]:
    """chmod to a set-id mode, and creating a file with one, in every form the kernel offers."""
    eperm = errno.EPERM
    rules: list[Rule] = []
    for bit in (S_ISUID, S_ISGID):
        held = (SCMP_CMP_MASKED_EQ, bit, bit)
        rules += [("chmod", eperm, [(1, *held)]), ("fchmod", eperm, [(1, *held)]),
                  ("fchmodat", eperm, [(2, *held)]), ("fchmodat2", eperm, [(2, *held)]),
                  ("creat", eperm, [(1, *held)]), ("mknod", eperm, [(1, *held)]),
                  ("mknodat", eperm, [(2, *held)])]
        for flag in (O_CREAT, O_TMPFILE_FLAG):
            rules += [("open", eperm, [(1, SCMP_CMP_MASKED_EQ, flag, flag), (2, *held)]),
                      ("openat", eperm, [(2, SCMP_CMP_MASKED_EQ, flag, flag), (3, *held)])]
    # openat2 passes its mode in memory that seccomp cannot read: ENOSYS, so
    # that callers fall back to openat(2), whose mode the rules above check.
    rules.append(("openat2", errno.ENOSYS, []))
    return rules


def _devices() -> list[Rule]:
    eperm = errno.EPERM
    rules = [(name, eperm, [(index, SCMP_CMP_MASKED_EQ, S_IFMT, kind)])
             for name, index in (("mknod", 1), ("mknodat", 2)) for kind in (S_IFCHR, S_IFBLK)]
    # renameat2(RENAME_WHITEOUT) leaves a 0:0 character device where the source was, and the
    # kernel lets an unprivileged user make one.
    rules.append(("renameat2", eperm, [(4, SCMP_CMP_MASKED_EQ, RENAME_WHITEOUT, RENAME_WHITEOUT)]))
    return rules


# family -> list of (syscall, errno, [(arg index, op, a, b), ...]).  Each entry
# is one rule; the conditions of one rule must all hold.
def _families() -> dict[str, list[Rule]]:
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
            ("ioctl", eperm, [(1, SCMP_CMP_MASKED_EQ, LOW32, TIOCSTI)]),
            ("ioctl", eperm, [(1, SCMP_CMP_MASKED_EQ, LOW32, TIOCLINUX)]),
        ],
        "handle-open": simple("open_by_handle_at"),
        "userfaultfd": simple("userfaultfd"),
        "set-id": _set_id(),
        "devices": _devices(),
    }


FAMILIES = tuple(_families())


def _socket_rules(allowed: tuple[str, ...]) -> list[Rule]:
    """socket(2) refused for every address family not in ``allowed``; socketpair(2) likewise, but for unix
    stream and seqpacket pairs."""
    unknown = [name for name in allowed if name not in SOCKET_FAMILY_NUMBERS]
    if unknown:
        raise ValueError(f"unknown socket families: {unknown}")
    rules: list[Rule] = []
    # socketpair(AF_UNIX) makes an anonymous connected pair (asyncio's self-pipe
    # is one): a stream or seqpacket pair reaches nothing else, so those two
    # types stay allowed whatever the policy says.  Any other type is refused
    # without unix sockets in the policy: a datagram socket of a pair (and
    # SOCK_RAW, which the kernel makes a datagram one) delivers, with
    # sendto(2) or sendmsg(2), to any bound datagram socket whose path the
    # sandbox can see (the journal's, /dev/log).
    if "unix" not in allowed:
        for kind in range(SOCK_TYPE_MASK + 1):
            if kind not in PAIR_TYPES:
                rules.append(("socketpair", errno.EPERM, [(1, SCMP_CMP_MASKED_EQ, SOCK_TYPE_MASK, kind)]))
    for call, names in (("socket", set(allowed)), ("socketpair", set(allowed) | {"unix"})):
        numbers = {SOCKET_FAMILY_NUMBERS[name] for name in names}
        for family in range(SOCKET_FAMILY_LIMIT):
            if family not in numbers:
                rules.append((call, errno.EPERM, [(0, SCMP_CMP_MASKED_EQ, LOW32, family)]))
        # Anything with a bit set at or above the limit, in either half: refused whole.
        rules.append((call, errno.EPERM, [(0, SCMP_CMP_GE, SOCKET_FAMILY_LIMIT, 0)]))
    return rules


def _rules(families: tuple[str, ...], socket_families: tuple[str, ...]) -> list[Rule]:
    table = _families()
    unknown = [f for f in families if f not in table]
    if unknown:
        raise ValueError(f"unknown syscall families: {unknown}")
    rules = [rule for family in families for rule in table[family]]
    return rules + _socket_rules(socket_families)


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


def compile_filter(*, families: tuple[str, ...], socket_families: tuple[str, ...]) -> int:
    """Return a file descriptor holding the BPF program refusing ``families`` and other sockets.

    ``socket_families``: the only address families socket(2) may create
    (names of SOCKET_FAMILY_NUMBERS).  The descriptor is a memfd positioned
    at 0, inheritable, ready to be handed to ``bwrap --seccomp FD``.  The
    caller owns and must close it.
    """
    key = (tuple(families), tuple(socket_families))
    program = _compiled.get(key)
    if program is None:
        fd = _compile(families, socket_families)
        size = os.fstat(fd).st_size
        _compiled[key] = os.pread(fd, size, 0)
        return fd
    fd = os.memfd_create("blastwall-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    return fd


# Programs this process compiled, by their rules: the same rules give the same program, so the
# service's and the SDK's many sandboxes skip libseccomp after the first.  Bytes only; each gets its own memfd.
_compiled: dict[tuple, bytes] = {}


def _compile(families: tuple[str, ...], socket_families: tuple[str, ...]) -> int:
    rules = _rules(families, socket_families)
    lib = _load()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable(errno.ENOMEM, "seccomp_init failed")
    try:
        for name, code, conds in rules:
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


def oci_profile(*, families: tuple[str, ...], socket_families: tuple[str, ...]) -> dict:
    """The same rules as an OCI ``linux.seccomp`` section (default: allow).

    gVisor applies it inside its own kernel only with ``runsc --oci-seccomp``;
    without that flag it is ignored, so the container tier passes both.
    """
    syscalls = []
    for name, code, conds in _rules(families, socket_families):
        syscalls.append({"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": code,
                         "args": [{"index": arg, "value": a, "valueTwo": b, "op": _OCI_OPS[op]}
                                  for arg, op, a, b in conds]})
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"], "syscalls": syscalls}
