"""The container tier's cgroups: check the limits took effect, remove what runsc leaves behind.

runsc creates each sandbox's cgroup (``/blastwall/ID`` in every hierarchy),
applies the plan's limits and removes it when the sandbox ends normally.  A
run killed with SIGKILL leaves it behind, and limits that silently did not
apply would be a boundary that is not there: hence ``verify`` after start,
``remove`` at close and ``sweep`` in the reaper.
"""

from __future__ import annotations

from blastwall.errors import EnforcementError
from blastwall.policy import plan as P

__all__ = ["remove", "sweep", "verify"]

# A cgroup younger than this may belong to a sandbox runsc is still setting up.
SWEEP_MIN_AGE = 60.0


def verify(plan: P.Plan, cgroups_path: str, pid: int, *, timeout: float = 10.0) -> None:
    """Wait until the host enforces the plan's limits on ``cgroups_path``; raise if it does not.

    runsc writes the limits before it moves the sandbox in, so once they read
    back right every process of the sandbox is under them.  If runsc (``pid``)
    ends first, there is nothing left to limit and ``wait()`` reports how it ended.
    """
    import time

    from blastwall.tiers._lifecycle import exited
    from blastwall.tiers.container._raw_cgroups import expected_limits, read_limits

    ops = [op for op in plan.of(P.Resources) if op.limits()]
    if not ops:
        return
    wanted = {k: v for k, v in expected_limits(ops[0]).items() if v is not None}
    deadline = time.monotonic() + timeout
    found = None
    while time.monotonic() < deadline:
        found = read_limits(cgroups_path)
        if found is not None and all(found.get(k) == v for k, v in wanted.items()):
            return
        if exited(pid):
            return
        time.sleep(0.01)
    differs = ", ".join(f"{k} {found.get(k) if found else 'missing'} instead of {v}" for k, v in wanted.items()
                        if not found or found.get(k) != v)
    raise EnforcementError(f"Can't verify the sandbox's resource limits on the host (cgroup {cgroups_path}): "
                           f"{differs}", fix="check that the cgroup controllers (memory with swap accounting, "
                                             "cpu, pids) are enabled; `blastwall doctor` shows them")


def remove(cgroups_path: str) -> None:
    """Remove the sandbox's cgroup if runsc did not (the run was killed); never raises."""
    from blastwall.tiers.container._raw_cgroups import remove_cgroup

    try:
        remove_cgroup(cgroups_path, timeout=2.0)
    except (OSError, ValueError):
        pass


def sweep() -> None:
    """The reaper: remove empty blastwall cgroups older than a minute (their runs are gone)."""
    from blastwall.tiers.container._raw_cgroups import leftovers, remove_cgroup

    for path in leftovers(older_than=SWEEP_MIN_AGE):
        try:
            remove_cgroup(path, timeout=0)  # A live sandbox's cgroup is busy and stays.
        except (OSError, ValueError):
            pass
