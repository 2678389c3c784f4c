"""HAZMAT: assembling bubblewrap command lines.

Only the tiers may import this module: the process tier runs the command
under bubblewrap, the VM tier runs QEMU under it.  ``bwrap_argv`` turns
already decided mount operations into bubblewrap arguments, in the order
given; it makes no policy decisions and validates nothing but its own
invariants.

Misuse looks like: passing paths that were not resolved by the plan compiler
(a symlink in a destination makes bubblewrap mount over its *target*), putting
a writable bind after a read-only one that it contains (the later mount wins),
or dropping one of the fixed isolation flags below.  Each flag is load-bearing:

* ``--unshare-user``, ``--disable-userns``: the sandbox owns a user namespace
  and can create no further one (together with seccomp, this is what defeats
  the unshare + mount + pivot_root escape);
* ``--unshare-pid/ipc/uts/cgroup-try``, ``--unshare-net``: private process
  table, IPC, hostname, cgroup view, and a network with nothing but loopback;
* ``--die-with-parent``: the command dies when bubblewrap does;
* ``--new-session``: no controlling terminal shared with the host (TIOCSTI);
* ``--cap-drop ALL``: no capabilities, even as root inside;
* ``--uid``/``--gid``: the user inside, which the user namespace maps onto the
  caller (a root caller's command is uid 1000 inside, owning what root owns,
  with no capability); never 0.

Every bind bubblewrap makes is ``nosuid,nodev``.
"""

from __future__ import annotations

__all__ = ["FIXED_FLAGS", "bwrap_argv"]

FIXED_FLAGS: tuple[str, ...] = (
    "--unshare-user",
    "--disable-userns",
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--die-with-parent",
    "--new-session",
    "--cap-drop",
    "ALL",
    "--hostname",
    "blastwall",
)


def bwrap_argv(
    *,
    bwrap: str,
    mounts: list[tuple[str, ...]],
    isolate_network: bool,
    chdir: str,
    uid: int,
    gid: int,
    seccomp_fd: int,
    status_fd: int,
    block_fd: int | None,
    launcher: list[str],
    command: list[str],
) -> list[str]:
    """The full bubblewrap argv.

    ``mounts`` is a list of tuples, each one of ``("ro-root",)``, ``("dev",)``,
    ``("proc",)``, ``("tmpfs", path)``, ``("bind", path)``, ``("ro-bind", path)``,
    ``("hide-dir", path)``, ``("hide-file", path)``, ``("ro-bind-at", source, destination)``,
    ``("dev-bind", path)`` (a device node, usable: the VM tier's /dev/kvm, nothing else);
    they are emitted in order.
    ``block_fd``: bubblewrap waits for a byte on it before starting the command
    (None: no wait).
    """
    if not isolate_network:
        raise ValueError("the process tier always isolates the network")
    if uid == 0 or gid == 0:
        raise ValueError("the sandbox's user is never root")
    argv = [bwrap, *FIXED_FLAGS, "--unshare-net", "--uid", str(int(uid)), "--gid", str(int(gid))]
    for mount in mounts:
        kind = mount[0]
        if kind == "ro-root":
            argv += ["--ro-bind", "/", "/"]
        elif kind == "dev":
            argv += ["--dev", "/dev"]
        elif kind == "proc":
            argv += ["--proc", "/proc"]
        elif kind == "tmpfs":
            argv += ["--tmpfs", mount[1]]
        elif kind == "bind":
            argv += ["--bind", mount[1], mount[1]]
        elif kind == "ro-bind":
            argv += ["--ro-bind", mount[1], mount[1]]
        elif kind == "hide-dir":
            argv += ["--tmpfs", mount[1], "--remount-ro", mount[1]]
        elif kind == "hide-file":
            argv += ["--ro-bind", "/dev/null", mount[1]]
        elif kind == "ro-bind-at":
            argv += ["--ro-bind", mount[1], mount[2]]
        elif kind == "dev-bind":
            argv += ["--dev-bind", mount[1], mount[1]]
        else:
            raise ValueError(f"unknown mount kind {kind!r}")
    argv += [
        "--chdir", chdir,
        "--seccomp", str(seccomp_fd),
        "--json-status-fd", str(status_fd),
        *(("--block-fd", str(block_fd)) if block_fd is not None else ()),
        "--",
        *launcher,
        "--",
        *command,
    ]
    return argv
