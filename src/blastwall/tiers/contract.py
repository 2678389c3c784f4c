"""The one contract every tier implements: a Session that runs Processes, and the check of a plan.

A tier turns a Plan into a ``Session``: ``prepare()`` checks the machine and
the plan (refusing the whole plan if any part cannot be enforced), ``boot()``
makes the sandbox, ``exec(argv, ...)`` starts a command in it and returns a
``Process``, ``close()`` destroys it and everything left in it.  A one-shot
``blastwall run`` is a session with one ``exec``.  The shells (CLI, SDK,
service, MCP) hold sessions and processes and nothing tier-specific: which
tier runs is chosen in ``blastwall.api`` alone.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, runtime_checkable

from blastwall.errors import EnforcementError, Unsupported
from blastwall.policy import plan as P

__all__ = ["Process", "Session", "SandboxStopped", "Enforces", "check_plan"]

KILLED = 128 + signal.SIGKILL  # The status of a command whose sandbox went down under it.


class SandboxStopped(EnforcementError):
    """The session's sandbox is gone (closed, timed out, killed from inside): its commands cannot finish."""


@runtime_checkable
class Process(Protocol):
    """One command running in a session."""

    def exit_fd(self) -> int | None:
        """A descriptor that becomes readable once the command ended (for a selector), or None: poll."""

    def poll(self) -> int | None:
        """The exit status once the command ended (as a shell reports it: 128+N for signal N), else None."""

    def wait(self, timeout: float | None = None) -> int:
        """Block until the command ends; its exit status.  TimeoutError when ``timeout`` passes first;
        SandboxStopped when the sandbox went down under it (``poll`` then says KILLED)."""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the command and the processes it started (its process group).  A second SIGKILL also
        kills whatever the tier runs for it on the host."""

    def release(self) -> None:
        """Let go of the handle's own descriptors (after the end, or to abandon it)."""


@runtime_checkable
class Session(Protocol):
    """One sandbox: prepared, booted, running any number of commands, closed."""

    tier: str
    plan: P.Plan
    egress_summary: dict | None  # What the gateway allowed and refused, once the session ended.
    gateway_lost: bool  # True when the gateway went away under a session that had one.
    degraded: tuple[str, ...]  # Layers this machine lacks that the policy lets the tier go without ("landlock").

    def prepare(self) -> None: ...

    def boot(self) -> None: ...

    def exec(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
             stdin: int = 0, stdout: int = 1, stderr: int = 2) -> Process: ...

    def alive(self) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Enforces:
    """What a tier does with each kind of plan operation: enforces it, or refuses the plan, and why.

    Every kind in ``plan.OPERATION_TYPES`` is in one of the two (a test checks
    it), so a new kind cannot reach a tier that silently skips it.
    """

    tier: str
    handled: frozenset
    refused: Mapping[type, str] = field(default_factory=dict)
    fix: str = "use another tier for this policy"
    checks: tuple[Callable[[P.Plan], None], ...] = ()  # The tier's own further refusals (limits, paths).


def check_plan(plan: P.Plan, table: Enforces) -> None:
    """Raise Unsupported unless ``table``'s tier enforces every operation of ``plan`` exactly."""
    for op in plan.operations:
        kind = type(op)
        if kind in table.refused:
            raise Unsupported(f"Refusing the plan: {table.refused[kind]}", fix=table.fix)
        if kind not in table.handled:
            raise Unsupported(f"Refusing the plan: the {table.tier} tier cannot enforce {kind.__name__}")
    for check in table.checks:
        check(plan)
