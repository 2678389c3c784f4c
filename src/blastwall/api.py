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
from blastwall.policy.load import cache_dir, config_dir, state_dir
from blastwall.policy.model import Layer, Policy

__all__ = ["MAX_STATE_PATH", "load", "plan_for", "protected_paths", "run", "sandbox", "session"]

# The longest state directory: SQLite opens no path over 512 bytes, and the
# audit log and the gateway's session files live beneath it.  (Socket paths do
# not count: they are bound through a descriptor of their directory.)
MAX_STATE_PATH = 400


def load(policy_file: str | None = None, *, flags: Layer | None = None, workspace: str | None = None,
         environ=os.environ, notes: list[str] | None = None) -> Policy:
    """The effective policy: defaults < user file < trusted project policy < ``flags``.

    The workspace's ``.blastwall/policy.toml`` is not opened unless the user
    trusted this workspace (``blastwall trust``) and the file still has the
    trusted content; even then only its narrowing part applies, unless the
    user explicitly accepted its widening part.  ``notes`` collects what the
    user should be told.
    """
    from blastwall.policy.load import user_layers
    from blastwall.policy.model import merge

    layers = user_layers(policy_file, environ=environ)
    if workspace is not None:
        project = project_layer(workspace, merge(layers), environ=environ, notes=notes)
        if project is not None:
            layers.append(project)
    if flags is not None:
        layers.append(flags)
    return merge(layers)


def project_layer(workspace: str, base: Policy, *, environ=os.environ, notes: list[str] | None = None):
    """The trusted project policy's layer for ``workspace``, or None."""
    # Kept free of imports until a project policy exists: this runs on every start.
    path = os.path.join(os.path.realpath(workspace), ".blastwall", "policy.toml")
    notes = notes if notes is not None else []
    if not os.path.lexists(path):  # An lstat: the file is not opened.
        return None
    from blastwall.trust.store import TrustStore, digest, read_project_bytes

    record = TrustStore(environ).lookup(workspace)
    if record is None:
        notes.append(f"{path} is not trusted and was not read (review it with `blastwall trust`)")
        return None
    try:
        data = read_project_bytes(path)
    except OSError as exc:
        notes.append(f"{path} could not be read ({exc.strerror or exc}); it was ignored")
        return None
    if digest(data) != record["sha256"]:
        notes.append(f"{path} changed since you trusted it and was not applied (review it with `blastwall trust`)")
        return None
    from blastwall.policy.load import parse_toml, _home
    from blastwall.policy.model import parse_layer
    from blastwall.trust.project import split

    layer = parse_layer(parse_toml(data.decode("utf-8", "replace"), path), path)
    narrowing, widening = split(base, layer, workspace=os.path.realpath(workspace), home=_home(environ))
    if widening and record.get("widening_accepted"):
        return layer
    if widening:
        notes.append(f"{path}: only its narrowing part applies; {len(widening)} widening part(s) were not accepted")
    return narrowing


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
    disposable_workspace: bool = False,
) -> P.Plan:
    """Compile ``policy`` for the invoking user, this machine and ``workspace``.

    ``disposable_workspace``: the workspace dies with the sandbox and the host
    never trusts its files (the service's sandboxes); see ``plan.Host``.
    """
    cwd = cwd or os.getcwd()
    workspace = os.path.abspath(workspace) if workspace else cwd
    from blastwall.policy.load import _home

    host = P.Host(
        home=os.path.realpath(_home(environ)),
        uid=os.getuid(),
        gid=os.getgid(),
        workspace=workspace,
        cwd=cwd,
        environ=dict(environ),
        protected=protected_paths(environ),
        runtime=runtime_paths(),
        hidden=(state_dir(environ),),
        disposable_workspace=disposable_workspace,
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
    approve=None,
) -> int:
    """Run ``command`` in a sandbox; return its exit status.

    ``approve(host, port) -> (allowed, scope)`` answers for hosts the policy
    does not list when ``network.unlisted = "ask"`` (scope: once, session or
    workspace); without it such hosts are denied.

    Raises PolicyError, EnforcementError or Unsupported before anything runs
    when the sandbox cannot be set up exactly as the policy says.
    """
    policy = policy if policy is not None else load(environ=environ)
    broker = None
    if approve is not None:
        from blastwall.approvals.broker import CallbackBroker

        broker = CallbackBroker(approve)
    box = sandbox(policy, workspace=workspace, cwd=cwd, environ=environ, broker=broker)
    try:
        box.prepare()
        box.boot()
        return box.exec(command, stdin=stdin, stdout=stdout, stderr=stderr).wait()
    finally:
        box.close()


def _make_state_dir(environ) -> None:
    """blastwall's state directory (journals, the gateway, sessions): made now, or a clear refusal."""
    from blastwall.errors import EnforcementError

    path = state_dir(environ)
    if len(os.fsencode(path)) > MAX_STATE_PATH:
        raise EnforcementError(f"Can't use {path[:60]}... as blastwall's state directory: its path is "
                               f"{len(os.fsencode(path))} bytes, more than the {MAX_STATE_PATH} its databases "
                               "accept (SQLite's limit, with room for the names inside)",
                               fix="set XDG_STATE_HOME to a shorter path")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise EnforcementError(f"Can't create blastwall's state directory {path}: {exc.strerror or exc}",
                               fix="set XDG_STATE_HOME to a directory you can write") from None


def sandbox(policy: Policy, *, workspace: str | None = None, cwd: str | None = None, environ=os.environ,
            broker=None):
    """A one-shot session of the policy's tier for ``workspace`` (tiers/contract.py): one ``exec``.

    ``prepare()``, then ``exec(command)`` (or ``start`` and ``wait``), then
    ``close()``; or use it as a context manager (which prepares and closes).
    """
    return _open(policy, workspace=workspace, cwd=cwd, environ=environ, broker=broker, one_shot=True)


def session(policy: Policy, *, workspace: str | None = None, environ=os.environ, broker=None, label: str = ""):
    """A session of the policy's tier for ``workspace``: ``boot()``, any number of ``exec``, ``close()``.

    Its commands share the sandbox (its ``/tmp``, its processes, its network);
    the workspace appears at its own path in every tier.
    """
    return _open(policy, workspace=workspace, cwd=None, environ=environ, broker=broker, one_shot=False, label=label)


def _open(policy: Policy, *, workspace, cwd, environ, broker, one_shot: bool, label: str = ""):
    """The one place that picks a tier."""
    _make_state_dir(environ)
    tier = policy.sandbox.tier
    if tier not in ("process", "container", "vm"):
        raise Unsupported(
            f"Can't use the {tier} tier: it is not available in this version",
            fix="use --tier process, --tier container or --tier vm",
        )
    if tier == "container":
        from blastwall.tiers.container import ContainerSandbox as OneShotBox
    elif tier == "vm":
        from blastwall.tiers.vm import VmSandbox as OneShotBox
    else:
        from blastwall.tiers.process import ProcessSandbox as OneShotBox
    # Leftovers of a run killed with SIGKILL change what exists on disk (placeholders), so
    # they are cleaned before the plan looks at the disk.
    OneShotBox.recover(environ=environ)
    plan = plan_for(policy, workspace=workspace, cwd=cwd if one_shot else workspace, environ=environ)
    if one_shot:
        if tier == "process":
            return OneShotBox(plan, environ=environ, broker=broker)
        return OneShotBox(plan, image=policy.sandbox.image, environ=environ, broker=broker)
    if tier == "process":
        from blastwall.tiers.process.session import ProcessSession

        # Its sandbox belongs to a thread of its own that lives as long as the session (not the caller's).
        return ProcessSession(plan, environ=environ, broker=broker)
    if tier == "container":
        from blastwall.tiers.container.session import ContainerSession as Session
    else:
        from blastwall.tiers.vm.session import VmSession as Session
    return Session(plan, image=policy.sandbox.image, environ=environ, broker=broker, workspace=plan.workspace,
                   mount_at=plan.workspace, label=label)
