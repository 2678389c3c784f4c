"""Process lifecycle helpers every tier shares: reaping, liveness, exit statuses."""

from __future__ import annotations

import os

__all__ = ["alive", "reap", "reap_quietly", "spawn"]


def spawn(argv: list[str], env: dict[str, str], layout: dict[int, int], *, new_session: bool) -> int:
    """Fork and exec ``argv`` with descriptors placed as ``layout`` ({target: source}); return the pid.

    The child dies with its parent, even on SIGKILL (PR_SET_PDEATHSIG, checked
    against the race with the parent's death).  Sources are first moved out of
    the way, so placing one never clobbers another sitting on its target.  Any
    failure before exec exits 125.
    """
    import ctypes
    import fcntl
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG: no orphan may outlive run
            os._exit(125)
        if os.getppid() != parent:
            os._exit(125)
        moved = {}
        for target, source in layout.items():
            try:
                moved[target] = fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, 64)
            except OSError:
                moved[target] = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        for target, temp in moved.items():
            os.dup2(temp, target, inheritable=True)
        if new_session:
            os.setsid()
        os.execve(argv[0], argv, env)
    except BaseException:  # noqa: BLE001 - the child must never return into the caller
        pass
    os._exit(125)


def reap(pid: int) -> int:
    """Wait for ``pid``; its exit status as a shell reports it (128+N when killed by signal N)."""
    while True:
        try:
            _, raw = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    status = os.waitstatus_to_exitcode(raw)
    return 128 - status if status < 0 else status


def reap_quietly(pid: int) -> None:
    """Reap ``pid`` if it is still our child; nothing if it was reaped already."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def alive(pid: int) -> bool:
    """True while a process with this pid exists (it may belong to someone else)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
