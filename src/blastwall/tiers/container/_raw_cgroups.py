"""HAZMAT: the host's cgroups, for the container tier's resource limits.

Only the container tier may import this module.  runsc creates the sandbox's
cgroup (``linux.cgroupsPath`` of the OCI spec), writes the limits of
``linux.resources`` into it and moves its processes in; this module builds
that part of the spec (``oci_linux``), reads the limits back from the host so
that the tier can check they took effect (``read_limits``), and removes the
leaf cgroups runsc leaves behind (``remove_cgroup``, ``leftovers``).

A process limit needs two layers.  Inside gVisor, the sandboxed program's
processes and threads are the sentry's tasks, not host processes: the limit
it meets is RLIMIT_NPROC (soft = hard = ``pids``; it holds no capability to
raise it), so fork and clone fail with EAGAIN as under a Linux ``pids.max``.
On the host, gVisor's ptrace platform runs every address space in a stub
process with up to one thread per sentry thread: measured here, a fork bomb
held to 64 tasks inside still made ~1900 host tasks (8: ~90, 32: ~600), far
beyond ``pids``, and this machine's whole pid space is 32768.  So the host
cgroup's ``pids.max`` is a backstop, ``host_pids(pids)``; a sandbox that needs
more host tasks than that is killed (the sentry cannot start a thread).

Every path handled here is ``/blastwall/NAME`` inside a cgroup hierarchy.
Misuse looks like: a memory limit without the same memory+swap limit (the
sandbox could page out past it), a cgroups path two sandboxes share (runsc
does not set limits on a cgroup that already exists: the second sandbox would
run with the first one's, or none), a process holding CAP_SYS_RESOURCE or
CAP_SYS_ADMIN (it could ignore RLIMIT_NPROC), or removing a cgroup outside
``/blastwall/``.
"""

from __future__ import annotations

import errno
import os
import time

__all__ = ["CPU_PERIOD_US", "PARENT", "cgroup_path", "expected_limits", "hierarchies", "host_pids", "leftovers",
           "oci_linux", "oci_rlimits", "read_limits", "remove_cgroup"]

PARENT = "/blastwall"
CPU_PERIOD_US = 100_000  # The CFS period: cpus = quota / period.
# Host tasks allowed per sandbox: gVisor's own (sentry and gofer threads, ~150
# measured) plus ptrace stubs, generously per task allowed inside (see above).
HOST_TASKS_BASE = 512
HOST_TASKS_PER_PID = 48
PID_MAX_LIMIT = 4 * 1024 * 1024  # The largest value pids.max takes (the kernel's PID_MAX_LIMIT).
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def cgroup_path(name: str) -> str:
    """``/blastwall/NAME`` for a sandbox's id; refuses anything that is not one plain name."""
    if not name or name in (".", "..") or len(name) > 128 or not set(name) <= _NAME_CHARS:
        raise ValueError(f"{name!r} is not a cgroup name")
    return f"{PARENT}/{name}"


def host_pids(pids: int) -> int:
    """The host cgroup's pids.max for a sandbox whose program may run ``pids`` tasks."""
    return min(HOST_TASKS_BASE + HOST_TASKS_PER_PID * pids, PID_MAX_LIMIT)


def oci_rlimits(*, resources) -> list[dict]:
    """``process.rlimits`` entries for the limits gVisor enforces itself (RLIMIT_NPROC for ``pids``)."""
    if resources is None or resources.pids is None:
        return []
    return [{"type": "RLIMIT_NPROC", "hard": resources.pids, "soft": resources.pids}]


def oci_linux(*, resources, cgroups_path: str) -> dict:
    """``linux.cgroupsPath`` and ``linux.resources`` for the OCI spec.

    ``resources`` has ``memory_bytes``, ``cpus`` and ``pids`` (each None for no
    limit), or is None.  Memory and memory+swap get the same value, so there is
    no swap to escape to.
    """
    if not cgroups_path.startswith(PARENT + "/"):
        raise ValueError(f"cgroups path {cgroups_path!r} is not under {PARENT}/")
    cgroup_path(cgroups_path[len(PARENT) + 1:])
    out: dict = {"cgroupsPath": cgroups_path}
    if resources is None:
        return out
    limits: dict = {}
    if resources.memory_bytes is not None:
        limits["memory"] = {"limit": resources.memory_bytes, "swap": resources.memory_bytes}
    if resources.cpus is not None:
        limits["cpu"] = {"quota": max(1000, round(resources.cpus * CPU_PERIOD_US)), "period": CPU_PERIOD_US}
    if resources.pids is not None:
        limits["pids"] = {"limit": host_pids(resources.pids)}
    if limits:
        out["resources"] = limits
    return out


def hierarchies() -> list[str]:
    """Mount points of the host's cgroup hierarchies (v1 controllers and the v2 tree), from mountinfo."""
    found: list[str] = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        fields, sep, rest = line.partition(" - ")
        parts = fields.split()
        if not sep or len(parts) < 5 or rest.split(" ", 1)[0] not in ("cgroup", "cgroup2"):
            continue
        # A bind mount of a sub-tree (root field != "/") is not a hierarchy's top.
        mount_point = parts[4].replace("\\040", " ")
        if parts[3] == "/" and mount_point not in found:
            found.append(mount_point)
    return found


def expected_limits(resources) -> dict[str, int | None]:
    """What ``read_limits`` must find on the host once runsc has applied ``oci_linux``'s resources."""
    memory = None if resources.memory_bytes is None else resources.memory_bytes // PAGE_SIZE * PAGE_SIZE
    linux = oci_linux(resources=resources, cgroups_path=PARENT + "/x").get("resources", {})
    cpu = linux.get("cpu", {})
    return {"memory": memory, "memsw": memory, "cpu_quota": cpu.get("quota"), "cpu_period": cpu.get("period"),
            "pids": linux.get("pids", {}).get("limit")}


def read_limits(path: str) -> dict[str, int | None] | None:
    """The limits the host enforces on cgroup ``path``: memory, memory+swap, cpu quota/period, pids.

    A value is None where that controller says "unlimited" or is absent.
    None for the whole when the cgroup does not exist (yet) in any hierarchy.
    """
    found = False
    limits: dict[str, int | None] = {"memory": None, "memsw": None, "cpu_quota": None, "cpu_period": None,
                                     "pids": None}
    files = {
        # cgroup v1
        "memory.limit_in_bytes": "memory", "memory.memsw.limit_in_bytes": "memsw",
        "cpu.cfs_quota_us": "cpu_quota", "cpu.cfs_period_us": "cpu_period",
        # cgroup v2 (memory.swap.max is swap alone; see below)
        "memory.max": "memory", "memory.swap.max": "memsw", "cpu.max": "cpu_quota",
        # both
        "pids.max": "pids",
    }
    for top in hierarchies():
        directory = top + path
        if not os.path.isdir(directory):
            continue
        found = True
        for filename, key in files.items():
            try:
                with open(os.path.join(directory, filename)) as f:
                    text = f.read().strip()
            except OSError:
                continue
            if filename == "cpu.max":  # "QUOTA PERIOD" or "max PERIOD"
                quota, _, period = text.partition(" ")
                limits["cpu_quota"] = int(quota) if quota.isdigit() else None
                limits["cpu_period"] = int(period) if period.isdigit() else None
                continue
            value = int(text) if text.lstrip("-").isdigit() else None
            if value is not None and (value < 0 or value >= 1 << 62):
                value = None  # -1 (cpu quota) and PAGE_COUNTER_MAX (memory) mean unlimited.
            if filename == "memory.swap.max" and value is not None and limits["memory"] is not None:
                value += limits["memory"]  # Report v2 like v1: memory plus swap.
            limits[key] = value
    return limits if found else None


def _is_legacy(name: str) -> bool:
    """``blastwall-`` and 12 hex digits: a container id, used by runsc as a top-level cgroup
    when the spec named no cgroups path (runs of versions before ``/blastwall/``)."""
    hexdigits = name[len("blastwall-"):]
    return name.startswith("blastwall-") and len(hexdigits) == 12 and set(hexdigits) <= set("0123456789abcdef")


def remove_cgroup(path: str, *, timeout: float) -> list[str]:
    """Remove leaf cgroup ``path`` (``/blastwall/NAME``) from every hierarchy; the directories that remain.

    A cgroup with processes in it cannot be removed (EBUSY): processes that
    were just killed may take a moment to leave, so this retries for up to
    ``timeout`` seconds.  A live sandbox's cgroup is therefore never removed.
    """
    if path.startswith(PARENT + "/"):
        cgroup_path(path[len(PARENT) + 1:])
    elif not (path.startswith("/") and _is_legacy(path[1:])):
        raise ValueError(f"Refusing to remove cgroup {path!r}: not under {PARENT}/")
    deadline = time.monotonic() + timeout
    remaining = [top + path for top in hierarchies()]
    failed: list[str] = []
    while True:
        busy = []
        for directory in remaining:
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError as exc:
                (busy if exc.errno == errno.EBUSY else failed).append(directory)
        if not busy or time.monotonic() >= deadline:
            return failed + busy
        remaining = busy
        time.sleep(0.05)


def leftovers(*, older_than: float) -> list[str]:
    """Cgroups under ``/blastwall/`` (and legacy top-level ones) created more than ``older_than`` seconds ago.

    The age keeps the reaper away from a cgroup runsc has just created and is
    about to move a starting sandbox into.
    """
    now = time.time()
    out: list[str] = []
    for top in hierarchies():
        for parent, legacy in ((top + PARENT, False), (top, True)):
            try:
                entries = list(os.scandir(parent))
            except OSError:
                continue
            for entry in entries:
                if legacy and not _is_legacy(entry.name):
                    continue
                try:
                    if not entry.is_dir(follow_symlinks=False) or \
                            now - entry.stat(follow_symlinks=False).st_mtime < older_than:
                        continue
                    path = "/" + entry.name if legacy else cgroup_path(entry.name)
                except (OSError, ValueError):
                    continue
                if path not in out:
                    out.append(path)
    return out
