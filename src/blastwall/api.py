"""The high-level API every shell (CLI, service, SDK) calls.

``load(...)`` gives the effective Policy, ``plan_for(...)`` compiles it for this
host and workspace, ``run(...)`` runs a command in a sandbox of the policy's
tier and returns its exit status.
"""

from __future__ import annotations

import os
import sys

from blastwall.errors import Unsupported
from blastwall.policy import plan as P
from blastwall.policy.load import cache_dir, config_dir, load_policy, state_dir
from blastwall.policy.model import Layer, Policy

__all__ = ["load", "plan_for", "protected_paths", "run", "sandbox"]


def load(policy_file: str | None = None, *, flags: Layer | None = None, environ=os.environ) -> Policy:
    return load_policy(policy_file, flags=flags, environ=environ)


def protected_paths(environ=os.environ) -> tuple[str, ...]:
    """blastwall's own files: never writable from inside a sandbox.

    Its configuration and state (a sandbox that could write them could widen
    its next policy or forge the audit trail) and its installation (code that
    runs on the host after the sandbox ends).
    """
    return _unique([config_dir(environ), state_dir(environ), cache_dir(environ), *runtime_paths()])


def runtime_paths() -> tuple[str, ...]:
    """What the sandbox needs to start: this Python and the blastwall package."""
    package = os.path.dirname(os.path.abspath(__file__))
    return _unique([package, sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))])


def _unique(paths) -> tuple[str, ...]:
    out: list[str] = []
    for path in paths:
        if path and path not in out:
            out.append(path)
    return tuple(out)


def plan_for(
    policy: Policy,
    *,
    workspace: str | None = None,
    cwd: str | None = None,
    environ=os.environ,
) -> P.Plan:
    """Compile ``policy`` for the invoking user, this machine and ``workspace``."""
    cwd = cwd or os.getcwd()
    workspace = os.path.abspath(workspace) if workspace else cwd
    from blastwall.policy.load import _home

    host = P.Host(
        home=os.path.realpath(_home(environ)),
        uid=os.getuid(),
        workspace=workspace,
        cwd=cwd,
        environ=dict(environ),
        protected=protected_paths(environ),
        runtime=runtime_paths(),
        hidden=(state_dir(environ),),
    )
    return P.compile_plan(policy, host)


def run(
    command: list[str],
    *,
    policy: Policy | None = None,
    workspace: str | None = None,
    cwd: str | None = None,
    environ=os.environ,
    stdin: int = 0,
    stdout: int = 1,
    stderr: int = 2,
) -> int:
    """Run ``command`` in a sandbox; return its exit status.

    Raises PolicyError, EnforcementError or Unsupported before anything runs
    when the sandbox cannot be set up exactly as the policy says.
    """
    policy = policy if policy is not None else load(environ=environ)
    box = sandbox(policy, workspace=workspace, cwd=cwd, environ=environ)
    try:
        box.prepare()
        box.start(command, stdin=stdin, stdout=stdout, stderr=stderr)
        return box.wait()
    finally:
        box.close()


def sandbox(policy: Policy, *, workspace: str | None = None, cwd: str | None = None, environ=os.environ):
    """An unprepared sandbox of the policy's tier for ``workspace``.

    Call ``prepare()``, ``start(command)``, ``wait()`` and ``close()`` on it,
    or use it as a context manager (which prepares and closes).
    """
    tier = policy.sandbox.tier
    if tier != "process":
        raise Unsupported(
            f"Can't use the {tier} tier: it is not available in this version",
            fix="use --tier process",
        )
    from blastwall.tiers.process import ProcessSandbox

    # Leftovers of a run killed with SIGKILL change what exists on disk, so
    # they are cleaned before the plan looks at the disk.
    ProcessSandbox.recover(environ=environ)
    plan = plan_for(policy, workspace=workspace, cwd=cwd, environ=environ)
    return ProcessSandbox(plan, environ=environ)
