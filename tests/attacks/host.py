"""Judging an attack on the host: what a tree looks like from outside the sandbox."""

from __future__ import annotations

import os
import stat


def snapshot(root) -> dict[str, tuple[int, bytes | None, str | None]]:
    """{relative path: (mode, a regular file's bytes, a link's target)} of everything under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            body = None
            if stat.S_ISREG(info.st_mode):
                with open(path, "rb") as f:
                    body = f.read()
            link = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
            out[os.path.relpath(path, root)] = (info.st_mode, body, link)
    return out
