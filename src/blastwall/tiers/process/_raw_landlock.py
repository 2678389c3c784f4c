"""HAZMAT: asking the kernel for its Landlock ABI version.

Enforcement happens in the compiled launcher (_raw_enter.c); the host side only
needs to know whether Landlock exists, to fail early under ``--require
landlock`` and for ``blastwall doctor``.  Misuse looks like: treating an error
from the syscall as "some ABI" (it means none).
"""

from __future__ import annotations

import ctypes

__all__ = ["landlock_abi"]

SYS_LANDLOCK_CREATE_RULESET = 444  # The same number on every architecture.
LANDLOCK_CREATE_RULESET_VERSION = 1


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 where Landlock is unavailable."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
                      ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return int(rc) if rc > 0 else 0
