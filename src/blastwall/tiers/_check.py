"""What a tier enforces, the one check of a plan against it, and the end of a sandbox under its commands.

Imported by every one-shot run: standard library only, and little of it
(``typing`` and ``dataclasses`` cost more than the check).  The contract
itself is ``tiers/contract.py``.
"""

from __future__ import annotations

from blastwall.errors import EnforcementError, Unsupported

__all__ = ["KILLED", "Enforces", "SandboxStopped", "check_plan"]

KILLED = 128 + 9  # The status of a command whose sandbox went down under it (SIGKILL).


class SandboxStopped(EnforcementError):
    """The session's sandbox is gone (closed, timed out, killed from inside): its commands cannot finish."""


class Enforces:
    """What a tier does with each kind of plan operation: enforces it, or refuses the plan, and why.

    Every kind in ``plan.OPERATION_TYPES`` is in one of the two (a test checks
    it), so a new kind cannot reach a tier that silently skips it.  ``checks``:
    the tier's own further refusals (limits, paths), each called with the plan.
    """

    __slots__ = ("tier", "handled", "refused", "fix", "checks")

    def __init__(self, tier: str, handled: frozenset, refused: dict | None = None, *,
                 fix: str = "use another tier for this policy", checks: tuple = ()) -> None:
        self.tier = tier
        self.handled = frozenset(handled)
        self.refused = dict(refused or {})
        self.fix = fix
        self.checks = tuple(checks)


def check_plan(plan, table: Enforces) -> None:
    """Raise Unsupported unless ``table``'s tier enforces every operation of ``plan`` exactly."""
    for op in plan.operations:
        kind = type(op)
        if kind in table.refused:
            raise Unsupported(f"Refusing the plan: {table.refused[kind]}", fix=table.fix)
        if kind not in table.handled:
            raise Unsupported(f"Refusing the plan: the {table.tier} tier cannot enforce {kind.__name__}")
    for check in table.checks:
        check(plan)
