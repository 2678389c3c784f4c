"""A sandbox's files, touched from the host and held to the sandbox's plan.

Every shell that reads or writes a sandbox's files -- the MCP server, the
SDK's local backend, the service for the remote one -- does it through
``Files``, whatever the tier.  Each operation first asks the plan what a
command inside would see at that path (``plan.access``: writable, read-only,
hidden, or a mount point it cannot move), and refuses what the command would
be refused, with the same reason code.  Only then does it act, through a walk
that opens every component relative to the one before and never follows a
symbolic link (``O_NOFOLLOW``): the object acted on is the one at that path
of the workspace, whatever the sandbox swapped in between two calls, and a
path that goes through a link is refused rather than resolved.

Writes land whole or not at all: a new file is written beside the target
and renamed over it, so a reader never sees half of one, a failed write
leaves the old file, and a hard link to another file (a protected one, say)
is replaced rather than written through.  Nothing is opened for blocking
I/O: a FIFO or a device node planted by the sandbox is refused, never read.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat

from blastwall.errors import FileError, PathRefused
from blastwall.policy import plan as P

__all__ = ["MAX_ENTRIES", "MAX_FILE_BYTES", "Entry", "Files", "split_relative"]

MAX_FILE_BYTES = 64 << 20
MAX_ENTRIES = 10_000
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def split_relative(path: object) -> list[str]:
    """The components of a workspace-relative path ("" or "." is the workspace itself); FileError otherwise."""
    if not isinstance(path, str) or "\x00" in path or len(path.encode("utf-8", "surrogateescape")) > 4096:
        raise FileError("invalid file path", path=str(path)[:200], code="invalid_path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if path.startswith("/") or any(p == ".." for p in parts):
        raise FileError(f"{path[:200]!r} is not a path inside the workspace", path=path[:200], code="invalid_path")
    if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        raise FileError(f"{path[:200]!r} has a component longer than 255 bytes", path=path[:200], code="invalid_path")
    return parts


class Entry:
    """One file as the sandbox's files API reports it."""

    __slots__ = ("path", "name", "type", "size", "mode", "mtime", "state")

    def __init__(self, path: str, info: os.stat_result | None, state: str) -> None:
        self.path = path
        self.name = path.rsplit("/", 1)[-1] if path else ""
        self.state = state  # "writable", "read-only" or "hidden": what a command inside sees there.
        if info is None:  # Hidden: the command sees an empty one; nothing of the host's is said.
            self.type, self.size, self.mode, self.mtime = "hidden", 0, 0, 0.0
            return
        mode = info.st_mode
        self.type = ("dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode)
                     else "symlink" if stat.S_ISLNK(mode) else "other")
        self.size = info.st_size if self.type == "file" else 0
        self.mode = stat.S_IMODE(mode)
        self.mtime = info.st_mtime

    def as_dict(self) -> dict:
        return {"path": self.path, "name": self.name, "type": self.type, "size": self.size,
                "mode": self.mode, "mtime": self.mtime, "state": self.state}

    def __repr__(self) -> str:
        return f"Entry({self.path!r}, {self.type}, {self.size}, {self.state})"


class Files:
    """The files of the sandbox that ``plan`` describes, at its workspace.

    ``owner``: (uid, gid) on the host for what this creates (the service
    writes as root on behalf of the sandbox's user: a session's
    ``host_owner``); None keeps the caller's.  ``limit``: the largest file
    read or written, in bytes.
    """

    def __init__(self, plan: P.Plan, *, owner: tuple[int, int] | None = None, limit: int = MAX_FILE_BYTES) -> None:
        self.plan = plan
        self.root = plan.workspace
        self.owner = owner
        self.limit = limit

    # -- decisions ------------------------------------------------------------------------------
    def _host(self, parts: list[str]) -> str:
        return os.path.join(self.root, *parts)

    def _allow(self, parts: list[str], verb: str, *, write: bool, moving: bool = False) -> P.Access:
        """The plan's answer for ``parts``, or PathRefused as a command inside would be refused."""
        shown = "/".join(parts) or "."
        found = P.access(self.plan, self._host(parts))
        if found.state == "hidden":
            raise PathRefused(f"Refusing to {verb} {shown!r}: it is hidden in the sandbox ({found.reason})",
                              path=shown, state="hidden", reason=found.reason)
        if write and found.state != "writable":
            raise PathRefused(f"Refusing to {verb} {shown!r}: it is read-only in the sandbox ({found.reason})",
                              path=shown, state="read-only", reason=found.reason)
        if moving:
            if found.mount or not parts:
                raise PathRefused(f"Refusing to {verb} {shown!r}: the sandbox cannot move or remove it "
                                  f"({found.reason})", path=shown, state="busy", reason=found.reason)
            held = P.guarded_beneath(self.plan, self._host(parts))
            if held:
                reason = getattr(held[0], "reason", found.reason)
                inner = os.path.relpath(held[0].path, self.root)
                raise PathRefused(f"Refusing to {verb} {shown!r}: it holds {inner!r}, which the sandbox cannot "
                                  f"move or remove ({reason})", path=shown, state="busy", reason=reason)
        return found

    _NEEDS = {"read": (False, False), "list": (False, False), "stat": (False, False), "write": (True, False),
              "mkdir": (True, False), "remove": (True, True), "rename": (True, True)}

    def check(self, operation: str, *paths: str) -> None:
        """Raise PathRefused if the plan refuses ``operation`` on ``paths`` (what the operation itself checks first).

        For a caller that must record the decision before acting (the service's audit log).
        """
        write, moving = self._NEEDS[operation]
        for path in paths:
            self._allow(split_relative(path), operation, write=write, moving=moving)

    # -- the walk -------------------------------------------------------------------------------------
    def _open_dir(self, parts: list[str], *, create: bool = False) -> int:
        """A descriptor of directory ``parts`` (made, each part allowed first, if ``create``)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for index, part in enumerate(parts):
                if create:
                    try:
                        os.stat(part, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        self._allow(parts[:index + 1], "create", write=True)
                        self._mkdir(fd, part)
                nxt = os.open(part, _DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _mkdir(self, parent: int, name: str) -> bool:
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
        except FileExistsError:
            return False
        if self.owner is not None:
            os.chown(name, *self.owner, dir_fd=parent, follow_symlinks=False)
        return True

    def _fail(self, exc: OSError, verb: str, parts: list[str]) -> FileError:
        shown = "/".join(parts) or "."
        number = exc.errno
        if number == errno.ENOENT:
            return FileError(f"Can't {verb} {shown!r}: no such file or directory", path=shown, code="not_found")
        if number in (errno.ELOOP, errno.ENOTDIR):
            return FileError(f"Can't {verb} {shown!r}: a component is a symbolic link or not a directory",
                             path=shown, code="invalid_path")
        if number == errno.EISDIR:
            return FileError(f"Can't {verb} {shown!r}: it is a directory", path=shown, code="is_directory")
        if number in (errno.EEXIST, errno.ENOTEMPTY):
            return FileError(f"Can't {verb} {shown!r}: it exists", path=shown, code="exists")
        if number == errno.ENOSPC:
            return FileError(f"Can't {verb} {shown!r}: no space left in the workspace", path=shown, code="no_space")
        return FileError(f"Can't {verb} {shown!r}: {exc.strerror or exc}", path=shown, code="invalid_path")

    # -- reading ------------------------------------------------------------------------------------
    def open(self, path: str) -> tuple[int, int]:
        """(fd, size) of the regular file at ``path``, for streaming; the caller closes fd."""
        parts = split_relative(path)
        if not parts:
            raise FileError("Can't read '.': it is a directory", path=".", code="is_directory")
        self._allow(parts, "read", write=False)
        try:
            parent = self._open_dir(parts[:-1])
            try:
                before = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                self._regular(before, parts)
                # O_NONBLOCK: a FIFO swapped in after the check above opens at once (and is refused below).
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
            finally:
                os.close(parent)
        except OSError as exc:
            raise self._fail(exc, "read", parts) from None
        try:
            info = os.fstat(fd)
            self._regular(info, parts)
            if (info.st_dev, info.st_ino) != (before.st_dev, before.st_ino):
                raise FileError(f"Can't read {path!r}: it changed while it was opened", path=path,
                                code="not_regular")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd, info.st_size

    def _regular(self, info: os.stat_result, parts: list[str]) -> None:
        shown = "/".join(parts)
        if stat.S_ISDIR(info.st_mode):
            raise FileError(f"Can't read {shown!r}: it is a directory", path=shown, code="is_directory")
        if not stat.S_ISREG(info.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file"
            raise FileError(f"Can't read {shown!r}: it is {kind}", path=shown, code="not_regular")
        if info.st_size > self.limit:
            raise FileError(f"Can't read {shown!r}: it is larger than the limit of {self.limit} bytes", path=shown,
                            code="too_large")

    def read(self, path: str) -> bytes:
        fd, _size = self.open(path)
        try:
            chunks, total = [], 0
            while chunk := os.read(fd, 1 << 20):
                total += len(chunk)
                if total > self.limit:  # It grew while we read it.
                    raise FileError(f"Can't read {path!r}: it is larger than the limit of {self.limit} bytes",
                                    path=path, code="too_large")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def stat(self, path: str) -> Entry:
        parts = split_relative(path)
        found = self._allow(parts, "look at", write=False)
        try:
            if not parts:
                return Entry("", os.stat(self.root), found.state)
            parent = self._open_dir(parts[:-1])
            try:
                return Entry("/".join(parts), os.stat(parts[-1], dir_fd=parent, follow_symlinks=False), found.state)
            finally:
                os.close(parent)
        except OSError as exc:
            raise self._fail(exc, "look at", parts) from None

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except FileError as exc:
            if exc.code in ("not_found", "invalid_path"):
                return False
            raise
        return True

    def list(self, path: str = "") -> tuple[list[Entry], bool]:
        """(entries of directory ``path``, sorted by name; whether there were more than MAX_ENTRIES)."""
        parts = split_relative(path)
        self._allow(parts, "list", write=False)
        try:
            fd = self._open_dir(parts)
        except OSError as exc:
            raise self._fail(exc, "list", parts) from None
        entries: list[Entry] = []
        truncated = False
        try:
            with os.scandir(fd) as it:
                for item in it:
                    if len(entries) >= MAX_ENTRIES:
                        truncated = True
                        break
                    child = [*parts, item.name]
                    state = P.access(self.plan, self._host(child)).state
                    try:
                        info = None if state == "hidden" else item.stat(follow_symlinks=False)
                    except OSError:
                        continue  # Gone meanwhile.
                    entries.append(Entry("/".join(child), info, state))
        finally:
            os.close(fd)
        return sorted(entries, key=lambda e: e.name), truncated

    # -- writing ------------------------------------------------------------------------------------
    def write(self, path: str, data: bytes) -> int:
        """Write ``data`` to ``path``, making its directories; whole or not at all.  Returns its size."""
        parts = split_relative(path)
        if not parts:
            raise FileError("Can't write '.': it is a directory", path=".", code="is_directory")
        if len(data) > self.limit:
            raise FileError(f"Can't write {path!r}: {len(data)} bytes is more than the limit of {self.limit}",
                            path=path, code="too_large")
        self._allow(parts, "write", write=True)
        try:
            parent = self._open_dir(parts[:-1], create=True)
        except OSError as exc:
            raise self._fail(exc, "write", parts) from None
        temporary = f".blastwall-{secrets.token_hex(8)}.tmp"
        try:
            mode = 0o644
            try:
                info = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                info = None
            if info is not None:
                if stat.S_ISDIR(info.st_mode):
                    raise FileError(f"Can't write {path!r}: it is a directory", path=path, code="is_directory")
                if not stat.S_ISREG(info.st_mode):
                    raise FileError(f"Can't write {path!r}: it is not a regular file (a link, a FIFO, ...)",
                                    path=path, code="not_regular")
                mode = stat.S_IMODE(info.st_mode) & 0o777  # Never a set-id bit.
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=parent)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fchmod(fd, mode)
                if self.owner is not None:
                    os.fchown(fd, *self.owner)
            finally:
                os.close(fd)
            # The same directory, so the rename is atomic; a link in the target's place is replaced, not followed.
            os.rename(temporary, parts[-1], src_dir_fd=parent, dst_dir_fd=parent)
            temporary = ""
        except OSError as exc:
            raise self._fail(exc, "write", parts) from None
        finally:
            if temporary:
                try:
                    os.unlink(temporary, dir_fd=parent)
                except OSError:
                    pass
            os.close(parent)
        return len(data)

    def make_dir(self, path: str) -> bool:
        """Make directory ``path`` and its parents; False if it existed already."""
        parts = split_relative(path)
        if not parts:
            return False
        self._allow(parts, "create", write=True)
        try:
            parent = self._open_dir(parts[:-1], create=True)
            try:
                made = self._mkdir(parent, parts[-1])
                if not made and not stat.S_ISDIR(os.stat(parts[-1], dir_fd=parent, follow_symlinks=False).st_mode):
                    raise FileError(f"Can't create {path!r}: a file is in the way", path=path, code="exists")
                return made
            finally:
                os.close(parent)
        except OSError as exc:
            raise self._fail(exc, "create", parts) from None

    def remove(self, path: str) -> None:
        """Remove the file or directory (with its contents) at ``path``."""
        import shutil

        parts = split_relative(path)
        self._allow(parts, "remove", write=True, moving=True)
        try:
            parent = self._open_dir(parts[:-1])
            try:
                if stat.S_ISDIR(os.stat(parts[-1], dir_fd=parent, follow_symlinks=False).st_mode):
                    shutil.rmtree(parts[-1], dir_fd=parent)  # File-descriptor based: never follows a link.
                else:
                    os.unlink(parts[-1], dir_fd=parent)
            finally:
                os.close(parent)
        except OSError as exc:
            raise self._fail(exc, "remove", parts) from None

    def rename(self, source: str, target: str) -> None:
        """Move ``source`` to ``target`` (which must not exist; its directory is made)."""
        src, dst = split_relative(source), split_relative(target)
        self._allow(src, "move", write=True, moving=True)
        self._allow(dst, "move to", write=True, moving=True)
        if dst[:len(src)] == src:
            raise FileError(f"Can't move {source!r} into itself", path=source, code="invalid_path")
        try:
            src_parent = self._open_dir(src[:-1])
            try:
                dst_parent = self._open_dir(dst[:-1], create=True)
                try:
                    try:
                        os.stat(dst[-1], dir_fd=dst_parent, follow_symlinks=False)
                    except FileNotFoundError:
                        pass
                    else:
                        raise FileError(f"Can't move to {target!r}: it exists", path=target, code="exists")
                    os.rename(src[-1], dst[-1], src_dir_fd=src_parent, dst_dir_fd=dst_parent)
                finally:
                    os.close(dst_parent)
            finally:
                os.close(src_parent)
        except OSError as exc:
            raise self._fail(exc, "move", src) from None
