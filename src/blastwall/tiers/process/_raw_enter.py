"""HAZMAT: the launcher that runs *inside* the sandbox, just before the command.

bubblewrap has set up the namespaces, dropped capabilities, set no-new-privs and
installed the seccomp filter, then executed this file with ``python -I -S -B``.
It must stay self-contained (isolated mode puts no blastwall package on the
path) and import nothing beyond ``os``, ``sys`` and ``ctypes``.  In order, it:

1. puts the real stderr back on fd 2 (bubblewrap's own messages went to a pipe
   the host reads) and closes every other inherited descriptor;
2. *verifies* the boundary bubblewrap promised: no-new-privs, seccomp in filter
   mode, no effective capabilities, and probes that must fail (a new user
   namespace; a unix socket unless the policy allows them).  Any surprise aborts;
3. applies Landlock: writes allowed only beneath the writable hierarchies,
   abstract unix sockets and signals scoped to the sandbox where the ABI allows;
4. takes the terminal as controlling terminal if one was provided, and execs.

Misuse looks like: adding an import (it runs on every ``blastwall run``), catching
a verification failure, or exec'ing the command before Landlock returned.
Exit status 125 means the launcher refused; messages start with ``blastwall:``.

Arguments: ``--stderr-fd N --ready-fd N [--write PATH]... [--require-landlock] [--allow-unix]
[--ctty] -- COMMAND [ARG]...``
"""

import ctypes
import os
import sys

SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
CLONE_NEWUSER = 0x10000000
TIOCSCTTY = 0x540E

# Landlock filesystem rights, with the ABI that introduced them.
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = None


def _syscall():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc.syscall


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 where Landlock is unavailable."""
    rc = _syscall()(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                    ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return int(rc) if rc > 0 else 0


def write_rights(abi: int) -> int:
    """Every write-like right the ABI knows.  Device nodes are never granted."""
    rights = (FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_CHAR | FS_MAKE_DIR
              | FS_MAKE_REG | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_BLOCK | FS_MAKE_SYM)
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def restrict_writes(*, writable: list, abi: int) -> None:
    """Apply a Landlock domain allowing writes only beneath ``writable``.

    Reads and execution are not handled (they stay allowed); secrets are hidden
    by the mount layer.  Raises OSError if any step fails: never half applied.
    """
    handled = write_rights(abi)
    attr = _RulesetAttr(handled, 0, 0)
    size = 8
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = 24
    call = _syscall()
    ruleset = call(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock_create_ruleset: {os.strerror(err)}")
    try:
        for path in writable:
            allowed = handled & ~(FS_MAKE_CHAR | FS_MAKE_BLOCK)
            if path != "/dev":
                allowed &= ~FS_IOCTL_DEV
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY)
            except OSError as exc:
                raise OSError(exc.errno, f"Can't open {path} for Landlock: {exc.strerror}") from None
            try:
                rule = _PathBeneath(allowed, fd)
                rc = call(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                          ctypes.byref(rule), ctypes.c_uint32(0))
                if rc < 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"landlock_add_rule({path}): {os.strerror(err)}")
            finally:
                os.close(fd)
        rc = call(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
        if rc < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_restrict_self: {os.strerror(err)}")
    finally:
        os.close(ruleset)


def parse_args(argv: list) -> dict:
    """Parse the launcher's arguments; raise ValueError on anything unexpected."""
    spec = {"stderr_fd": None, "ready_fd": None, "write": [], "require_landlock": False, "allow_unix": False,
            "ctty": False, "command": None}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            spec["command"] = argv[i + 1:]
            break
        if arg in ("--stderr-fd", "--ready-fd", "--write"):
            if i + 1 >= len(argv):
                raise ValueError(f"{arg} needs a value")
            value = argv[i + 1]
            if arg in ("--stderr-fd", "--ready-fd"):
                if not value.isdigit():
                    raise ValueError(f"{arg} takes a number")
                spec[arg[2:].replace("-", "_")] = int(value)
            else:
                if not value.startswith("/"):
                    raise ValueError("--write takes an absolute path")
                spec["write"].append(value)
            i += 2
            continue
        if arg == "--require-landlock":
            spec["require_landlock"] = True
        elif arg == "--allow-unix":
            spec["allow_unix"] = True
        elif arg == "--ctty":
            spec["ctty"] = True
        else:
            raise ValueError(f"unknown argument {arg!r}")
        i += 1
    if not spec["command"]:
        raise ValueError("no command given")
    return spec


def _status() -> dict:
    out = {}
    with open("/proc/self/status", "rb") as f:
        for line in f.read().decode("ascii", "replace").splitlines():
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def verify_boundary(*, allow_unix: bool) -> None:
    """Raise RuntimeError unless the restrictions bubblewrap promised are in effect."""
    status = _status()
    if status.get("NoNewPrivs") != "1":
        raise RuntimeError("no-new-privileges is not set")
    if status.get("Seccomp") != "2":
        raise RuntimeError("the seccomp filter is not in effect")
    if int(status.get("CapEff", "1"), 16) != 0:
        raise RuntimeError("the sandbox still holds capabilities")
    # Probes that must fail.  A success means the filter is not what we built.
    _syscall()  # Loads libc.
    if _libc.unshare(ctypes.c_int(CLONE_NEWUSER)) == 0:
        raise RuntimeError("creating a user namespace succeeded")
    if not allow_unix:
        import _socket  # The C module: the `socket` wrapper costs ~15 ms to import.

        try:
            probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        except PermissionError:
            pass
        else:
            probe.close()
            raise RuntimeError("creating a unix socket succeeded")


def _fail(message: str) -> "None":
    os.write(2, f"blastwall: {message}\n".encode("utf-8", "replace"))
    os._exit(125)


def main(argv: list) -> None:
    try:
        spec = parse_args(argv)
    except ValueError as exc:
        _fail(f"Can't start the sandbox launcher: {exc}")
    # 1. Descriptors: the real stderr back on 2; keep the ready pipe until the
    # boundary is verified; nothing else leaks in.
    if spec["stderr_fd"] is not None:
        os.dup2(spec["stderr_fd"], 2)
    ready = spec["ready_fd"]
    if ready is not None:
        os.closerange(3, ready)
        os.closerange(ready + 1, 65536)
    else:
        os.closerange(3, 65536)
    # 2. Check that the boundary is really there before trusting it.
    try:
        verify_boundary(allow_unix=spec["allow_unix"])
    except (RuntimeError, OSError) as exc:
        _fail(f"Refusing to run: {exc}")
    # 3. Landlock.
    abi = landlock_abi()
    if abi:
        try:
            restrict_writes(writable=spec["write"], abi=abi)
        except OSError as exc:
            _fail(f"Can't apply Landlock: {exc.strerror or exc}")
    elif spec["require_landlock"]:
        _fail("Refusing to run: Landlock is required but this kernel does not provide it")
    # Tell the host that the boundary is verified and in place.
    if ready is not None:
        os.write(ready, b"1")
        os.close(ready)
    # 4. The terminal, then the command.
    if spec["ctty"]:
        import fcntl

        # bubblewrap's new session belongs to its pid 1; start our own so the
        # private pty can become our controlling terminal.
        try:
            if os.getsid(0) != os.getpid():
                os.setsid()
            fcntl.ioctl(0, TIOCSCTTY, 0)
            os.tcsetpgrp(0, os.getpgrp())
        except OSError as exc:
            _fail(f"Can't attach the sandbox's terminal: {exc.strerror}")
    command = spec["command"]
    try:
        os.execvp(command[0], command)
    except FileNotFoundError:
        os.write(2, f"blastwall: Can't run {command[0]!r}: command not found\n".encode())
        os._exit(127)
    except PermissionError:
        os.write(2, f"blastwall: Can't run {command[0]!r}: permission denied\n".encode())
        os._exit(126)
    except OSError as exc:
        os.write(2, f"blastwall: Can't run {command[0]!r}: {exc.strerror}\n".encode())
        os._exit(126)


if __name__ == "__main__":
    main(sys.argv[1:])
