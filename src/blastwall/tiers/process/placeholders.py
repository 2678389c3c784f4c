"""Temporary placeholders that stop a sandbox from creating protected paths.

A mount can only cover a path that exists, so a protected path that does not
exist yet (``.git/hooks`` in a fresh directory, ``.bashrc`` in a workspace) is
covered by creating its first missing component on the host as an empty
directory, binding it read-only into the sandbox, and removing it after.

Three rules keep this safe:

* A placeholder is removed only if it is still the same inode and still empty,
  so nothing a person wrote meanwhile is lost.
* Removing a mountpoint on the host detaches the mount inside *other* sandboxes
  still using it; so every run holds a shared lock on the workspace while it
  runs, and placeholders are removed only by a run that can take the lock
  exclusively (the last one out).
* A journal in the state directory records what each run created, so that the
  next run cleans up after a ``blastwall run`` that was killed with SIGKILL.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import threading

from blastwall.policy.load import state_dir

__all__ = ["Guard", "create", "lock_roots", "remove", "recover"]

# (path, kind, dev, ino, root)
Record = tuple[str, str, int, int, str]

_serial = itertools.count(1)  # next() is atomic: sessions start from several threads.
# Placeholders a run of this process could not remove (another run of this
# process still used the root), for the last one out: {root: [(records, journal)]}.
_deferred: dict[str, list[tuple[list[Record], str]]] = {}
_deferred_lock = threading.Lock()


def _journal_dir(environ) -> str:
    return os.path.join(state_dir(environ), "placeholders")


def _journal_path(environ, tag: str) -> str:
    """One journal per run: ``PID.txt``, or ``PID.N.txt`` for the Nth of a process running several."""
    return os.path.join(_journal_dir(environ), f"{tag}.txt")


def lock_roots(roots) -> dict[str, int]:
    """A shared lock on every writable root, held for the life of the run; returns {root: fd}.

    Every run takes it, whether or not it created placeholders, because it
    relies on placeholders that other runs may have created.  Each run has its
    own descriptors (flock locks belong to open files), so runs in one process
    (the service's sessions) count as separate users too.
    """
    held: dict[str, int] = {}
    for root in roots:
        if root in held:
            continue
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        fcntl.flock(fd, fcntl.LOCK_SH)
        held[root] = fd
    return held


def _try_exclusive(workspace: str, held_locks: dict[str, int]) -> int | None:
    """An exclusive lock on the workspace if no other run holds it, else None."""
    held = held_locks.pop(workspace, None)
    try:
        fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        if held is not None:
            os.close(held)
        return None
    if held is not None:
        os.close(held)  # Drops our shared lock.
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def create(ops, roots, held_locks: dict[str, int], *, environ=os.environ, tag: str | None = None) -> list[Record]:
    """Create the placeholders of ``ops`` (Placeholder operations); journal them.

    ``roots`` are the writable roots; ``held_locks`` what ``lock_roots(roots)``
    gave (call ``recover()`` before the plan was compiled).  On failure what
    was created is removed as ``remove`` would, which lets go of the locks.
    """
    if not ops:
        return []
    records: list[Record] = []
    journal = _journal_path(environ, tag or str(os.getpid()))
    os.makedirs(os.path.dirname(journal), mode=0o700, exist_ok=True)
    parents = _Parents()
    with parents, open(journal, "w", encoding="utf-8") as out:
        for op in sorted(ops, key=lambda o: o.path):
            root = _root_of(op.path, roots)
            try:
                parent, name = parents.open(op.path, root)
                os.mkdir(name, 0o755, dir_fd=parent)
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileExistsError:
                # Created since the plan was compiled (another run, or the user):
                # it exists now, so the read-only bind still covers it; not ours to remove.
                continue
            except OSError as exc:
                from blastwall.errors import EnforcementError

                remove(records, held_locks, environ=environ, tag=tag)
                raise EnforcementError(
                    f"Can't create the placeholder {op.path} that protects {op.target}: {exc.strerror}"
                ) from None
            records.append((op.path, "dir", st.st_dev, st.st_ino, root))
            out.write(f"{root}\tdir\t{st.st_dev}\t{st.st_ino}\t{op.path}\n")
            out.flush()
    return records


class _Parents:
    """Parent directories opened once for many placeholders (most share the workspace)."""

    def __init__(self) -> None:
        self._fds: dict[tuple[str, str], int] = {}

    def open(self, path: str, root: str) -> tuple[int, str]:
        key = (os.path.dirname(path), root)
        fd = self._fds.get(key)
        if fd is None:
            fd, name = _open_parent(path, root)
            self._fds[key] = fd
            return fd, name
        return fd, os.path.basename(path)

    def __enter__(self) -> "_Parents":
        return self

    def __exit__(self, *_exc) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _open_parent(path: str, root: str) -> tuple[int, str]:
    """An fd of ``path``'s parent, reached from ``root`` without following symlinks.

    The workspace is writable by sandboxes: a component swapped for a symlink
    after the plan was compiled must not make us create or remove anything
    outside it.
    """
    rel = os.path.relpath(path, root)
    parts = rel.split("/")
    if rel.startswith("..") or not parts or "" in parts:
        raise OSError(22, f"{path} is not beneath {root}")
    from blastwall._nofollow import open_beneath

    return open_beneath(root, parts[:-1], create=False), parts[-1]


def _root_of(path: str, roots) -> str:
    best = os.path.dirname(path)
    for root in roots:
        if path.startswith(root.rstrip("/") + "/") and len(root) <= len(best):
            best = root
    return best


def remove(records: list[Record], held_locks: dict[str, int], *, environ=os.environ, tag: str | None = None) -> None:
    """Remove our placeholders if we are the last run using their directories; let go of our locks."""
    by_root: dict[str, list[Record]] = {root: [] for root in held_locks}
    for record in records:
        by_root.setdefault(record[4], []).append(record)
    journal = _journal_path(environ, tag or str(os.getpid()))
    leftover = False
    for root, items in by_root.items():
        with _deferred_lock:
            waiting = root in _deferred
        if not items and not waiting:
            continue
        fd = _try_exclusive(root, held_locks)
        if fd is None:
            if not items:
                continue
            # Another run still uses them.  If it is in this process, it removes
            # them when it leaves last; else recover() does, once we are gone.
            leftover = True
            with _deferred_lock:
                _deferred.setdefault(root, []).append((items, journal))
            continue
        with _deferred_lock:
            earlier = _deferred.pop(root, [])
        try:
            with _Parents() as parents:
                for batch, _ in [(items, journal), *earlier]:
                    for path, kind, dev, ino, item_root in sorted(batch, reverse=True):
                        _remove_one(path, kind, dev, ino, item_root, parents)
        finally:
            os.close(fd)
        for _, other in earlier:
            _unlink_journal_if_settled(other)
    for fd in held_locks.values():
        os.close(fd)
    held_locks.clear()
    if not leftover:
        _unlink_journal_if_settled(journal)


def _unlink_journal_if_settled(journal: str) -> None:
    """Remove a journal unless some of its placeholders still wait for another run to leave."""
    with _deferred_lock:
        if any(j == journal for batches in _deferred.values() for _, j in batches):
            return
    try:
        os.unlink(journal)
    except FileNotFoundError:
        pass


def _remove_one(path: str, kind: str, dev: int, ino: int, root: str, parents: _Parents) -> None:
    try:
        parent, name = parents.open(path, root)
    except OSError:
        return  # Gone, or a component is no longer a real directory: leave it.
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if (st.st_dev, st.st_ino) != (dev, ino) or kind != "dir":
            return
        os.rmdir(name, dir_fd=parent)  # Fails, harmlessly, unless still empty.
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.EBUSY, errno.ENOTDIR):
            raise


def recover(*, environ=os.environ) -> None:
    """Clean up the placeholders of runs that died without removing them."""
    directory = _journal_dir(environ)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        stem, _, ext = name.rpartition(".")
        pid = stem.split(".", 1)[0]
        if ext != "txt" or not pid.isdigit() or not stem.replace(".", "").isdigit() or int(pid) == os.getpid():
            continue
        if _alive(int(pid)):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        done = True
        by_root: dict[str, list] = {}
        for line in lines:
            parts = line.split("\t", 4)
            if len(parts) != 5 or not parts[2].isdigit() or not parts[3].isdigit():
                continue
            by_root.setdefault(parts[0], []).append((parts[4], parts[1], int(parts[2]), int(parts[3]), parts[0]))
        for root, items in by_root.items():
            fd = _try_exclusive(root, {})
            if fd is None:
                done = False
                continue
            try:
                with _Parents() as parents:
                    for rec in sorted(items, reverse=True):
                        _remove_one(*rec, parents)
            finally:
                os.close(fd)
        if done:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _alive(pid: int) -> bool:
    from blastwall.tiers._lifecycle import alive

    return alive(pid)


class Guard:
    """A run's hold on its writable roots and its placeholders: ``close()`` undoes both.

    Every tier that binds host directories uses this, so that placeholders are
    locked, created, journaled and removed the same way everywhere.
    """

    def __init__(self, plan, *, environ=os.environ) -> None:
        from blastwall.policy import plan as P

        self._environ = environ
        roots = [op.path for op in plan.of(P.Writable)]
        self._tag = f"{os.getpid()}.{next(_serial)}"
        self._locks = lock_roots(roots)
        try:
            self._records: list[Record] | None = create(plan.of(P.Placeholder), roots, self._locks,
                                                        environ=environ, tag=self._tag)
        except BaseException:
            for fd in self._locks.values():
                os.close(fd)
            raise

    def close(self) -> None:
        if self._records is not None:
            remove(self._records, self._locks, environ=self._environ, tag=self._tag)
            self._records = None
