"""Walking into a directory tree that a sandbox can write, without following its symlinks.

Used on the host side wherever blastwall creates, removes or reads files in a
workspace: a component swapped for a symlink must not lead it outside.
"""

from __future__ import annotations

import os

__all__ = ["open_beneath"]


def open_beneath(root: str, parts, *, create: bool, owner: tuple[int, int] | None = None) -> int:
    """An fd of ``root/parts...``, each component a real directory (created if ``create``).

    ``owner``: (uid, gid) given to the directories this call creates (the
    service creates them as root for a sandbox's unprivileged user).
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    if owner is not None:
                        os.chown(part, owner[0], owner[1], dir_fd=fd, follow_symlinks=False)
                except FileExistsError:
                    pass
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError:
        os.close(fd)
        raise
    return fd
