"""Unix socket paths that do not depend on the length of the user's paths.

A unix socket's address holds at most 107 bytes, and blastwall's sockets live
in the user's state directory, whose path the user chooses
(``XDG_STATE_HOME``).  Every bind and connect goes through ``short``, which
hands back the path itself when it fits, or else the same file named through
a descriptor of its directory (``/proc/self/fd/N/NAME``): the kernel resolves
it like any path, and it is short whatever the directory's name.  A program
of another process (socat, QEMU) is given the directory as its working
directory and the bare name instead (``relative``).
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["MAX_PATH", "relative", "short"]

MAX_PATH = 107  # sizeof(sun_path) - 1


@contextlib.contextmanager
def short(path: str):
    """A name for ``path`` that fits in a socket address, valid inside the ``with`` block."""
    if len(os.fsencode(path)) <= MAX_PATH:
        yield path
        return
    directory, name = os.path.split(path)
    if len(os.fsencode(name)) > MAX_PATH - 32:
        raise OSError(36, f"socket name too long: {name[:40]}...")
    fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def relative(path: str) -> tuple[str, str]:
    """(directory, name) of ``path``: run the other program in ``directory`` and give it ``name``."""
    directory, name = os.path.split(path)
    return directory or ".", name
