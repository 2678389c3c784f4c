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
from typing import Protocol, runtime_checkable

from blastwall.policy import plan as P
from blastwall.tiers._check import KILLED, Enforces, SandboxStopped, check_plan

__all__ = ["KILLED", "Process", "Session", "SandboxStopped", "Enforces", "check_plan"]


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
    def update_network(self, allow: list[str], deny: list[str] = ()) -> None:
        """New requests may reach ``allow`` (it replaces the allow list) and never ``deny`` (added)."""

    def close(self) -> None: ...
