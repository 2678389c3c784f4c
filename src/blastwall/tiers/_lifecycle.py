"""Process lifecycle helpers every tier shares: reaping, liveness, exit statuses."""

from __future__ import annotations

import os

__all__ = ["alive", "reap", "reap_quietly"]


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
