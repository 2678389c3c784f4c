"""HAZMAT: idmapped views of a writable root, for a sandbox user who does not own it on the host.

Only the container tier may import this module.  gVisor's gofer creates a
file on the host with the uid of the sandboxed program that made it, so a
program running as uid 1000 in a root-owned workspace could neither write the
workspace nor leave files the host's owner can use.  Instead of running the
program as root, the tier shows gVisor an *idmapped* view of the workspace, in
which the owner's ids and the sandbox user's are swapped: the owner's files
appear as the sandbox user's, and what the sandbox user creates lands on the
host as the owner's.  The view exists only in a private mount namespace of the
``runsc run`` that starts the sandbox, so nothing of it is left on the host.

Misuse looks like: a map that is not a swap (the gofer, which runs as root,
must stay mapped or it cannot create files at all: EOVERFLOW), a view
attached in the host's mount namespace (``shutil.rmtree`` of the state
directory would then delete the user's files through it), or a view without
``nosuid,nodev``.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["attach", "idmapped_view", "swap_userns"]

_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = 0o2000000
_AT_RECURSIVE = 0x8000
_AT_EMPTY_PATH = 0x1000
_AT_FDCWD = -100
_MOVE_MOUNT_F_EMPTY_PATH = 4
_MOUNT_ATTR_NOSUID = 0x2
_MOUNT_ATTR_NODEV = 0x4
_MOUNT_ATTR_IDMAP = 0x00100000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def _swap_map(owner: int, user: int) -> str:
    if owner == user:
        return f"{owner} {owner} 1\n"
    return f"{owner} {user} 1\n{user} {owner} 1\n"


def swap_userns(*, owner: tuple[int, int], user: tuple[int, int]) -> int:
    """A descriptor of a user namespace whose maps swap ``owner``'s ids with ``user``'s.

    A helper process creates the namespace and exits once it is held by the
    descriptor; the caller closes the descriptor when the views are made.
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # The helper: only raw calls between fork and _exit.
        try:
            os.close(ready_r)
            os.close(go_w)
            code = 0 if _libc.unshare(_CLONE_NEWUSER) == 0 else 1
            os.write(ready_w, bytes([code]))
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"\0":
            raise OSError(1, "Can't create a user namespace for the workspace's view")
        with open(f"/proc/{pid}/uid_map", "w") as f:
            f.write(_swap_map(owner[0], user[0]))
        with open(f"/proc/{pid}/gid_map", "w") as f:
            f.write(_swap_map(owner[1], user[1]))
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(go_w)  # The helper reads end of file and exits; the namespace lives on in the descriptor.
        os.waitpid(pid, 0)


def idmapped_view(*, source: str, userns: int) -> int:
    """A detached copy of the tree at ``source`` (with its submounts), idmapped by ``userns``, nosuid, nodev."""
    tree = _check(_libc.syscall(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_int(_AT_FDCWD), source.encode(),
                                ctypes.c_uint(_OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_RECURSIVE)),
                  f"open_tree({source})")
    attr = _MountAttr(_MOUNT_ATTR_IDMAP | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV, 0, 0, userns)
    try:
        _check(_libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(tree), b"",
                             ctypes.c_uint(_AT_EMPTY_PATH | _AT_RECURSIVE), ctypes.byref(attr),
                             ctypes.c_size_t(ctypes.sizeof(attr))),
               f"idmapping {source}")
    except BaseException:
        os.close(tree)
        raise
    return int(tree)


def attach(views: list[tuple[int, str]]) -> None:
    """In the child that is about to exec ``runsc run``: a private mount namespace with each view at its target.

    Raises OSError; the caller's child then exits without exec'ing.
    """
    _check(_libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(None, b"/", None, ctypes.c_ulong(_MS_REC | _MS_PRIVATE), None), "making / private")
    for tree, target in views:
        _check(_libc.syscall(ctypes.c_long(_SYS_MOVE_MOUNT), ctypes.c_int(tree), b"", ctypes.c_int(_AT_FDCWD),
                             target.encode(), ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH)),
               f"attaching the view at {target}")
