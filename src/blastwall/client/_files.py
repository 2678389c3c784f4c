"""Workspace file access for the SDK: pure path checks plus no-follow I/O.

A path from an SDK caller is untrusted: it must name something inside the
workspace, and no component may be a symlink (a sandbox could have planted one
pointing anywhere on the host).
"""

from __future__ import annotations

import os
import stat

from blastwall._nofollow import open_beneath

MAX_FILE_BYTES = 64 << 20


def split_relative(path: str) -> list[str]:
    """The components of a workspace-relative path; ValueError for anything else."""
    if not isinstance(path, str) or not path or "\x00" in path or len(path) > 4096:
        raise ValueError("invalid path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if path.startswith("/") or not parts or any(p == ".." for p in parts):
        raise ValueError(f"{path!r} is not a path inside the workspace")
    return parts


def write(root: str, path: str, data: bytes, *, limit: int = MAX_FILE_BYTES,
          owner: tuple[int, int] | None = None) -> None:
    """Write ``data`` to ``root/path``, creating parent directories; never through a link.

    ``owner``: (uid, gid) for what this creates and for the file written (the
    service writes as root on behalf of the sandbox's user).
    """
    if len(data) > limit:
        raise ValueError(f"file larger than {limit} bytes")
    parts = split_relative(path)
    parent = open_beneath(root, parts[:-1], create=True, owner=owner)
    try:
        # O_NONBLOCK: a FIFO planted by the sandbox must not hang the writer
        # (it fails with ENXIO instead); regular files ignore the flag.
        fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NONBLOCK, 0o644, dir_fd=parent)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(22, "not a regular file")
            if owner is not None:
                os.fchown(fd, owner[0], owner[1])
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    finally:
        os.close(parent)


def open_regular(root: str, path: str, *, limit: int = MAX_FILE_BYTES) -> tuple[int, int]:
    """(fd, size) of the regular file ``root/path``, opened without following links; the caller closes fd."""
    parts = split_relative(path)
    parent = open_beneath(root, parts[:-1], create=False)
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent)
    finally:
        os.close(parent)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(22, "not a regular file")
        if info.st_size > limit:
            raise OSError(27, f"larger than {limit} bytes")
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def read(root: str, path: str, *, limit: int = MAX_FILE_BYTES) -> bytes:
    fd, _size = open_regular(root, path, limit=limit)
    try:
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:  # The file grew while we read it.
                raise OSError(27, f"larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
