"""Placeholder guards of several runs in one process (the service's sessions, the SDK's background commands)."""

from __future__ import annotations

import os

from blastwall import api


def _plan(workspace, home):
    env = {"HOME": str(home), "XDG_STATE_HOME": str(home / ".state"), "PATH": os.environ["PATH"]}
    policy = api.load(None, workspace=str(workspace), environ=env)
    return api.plan_for(policy, workspace=str(workspace), cwd=str(workspace), environ=env), env


def test_the_last_guard_out_removes_the_placeholders(home, workspace):
    from blastwall.policy import plan as P
    from blastwall.tiers.process.placeholders import Guard

    plan, env = _plan(workspace, home)
    placeholders = [op.path for op in plan.of(P.Placeholder)]
    assert placeholders, "the default policy protects paths that do not exist yet"
    first = Guard(plan, environ=env)
    second = Guard(plan, environ=env)  # Same process, same workspace: relies on the first's placeholders.
    assert all(os.path.isdir(p) for p in placeholders)
    first.close()
    # Removing them now would detach the read-only mounts of the second run's sandbox.
    assert all(os.path.isdir(p) for p in placeholders)
    second.close()
    assert not any(os.path.lexists(p) for p in placeholders)
    journals = os.path.join(env["XDG_STATE_HOME"], "blastwall", "placeholders")
    assert not os.path.isdir(journals) or not os.listdir(journals)
