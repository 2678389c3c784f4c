"""[resources] on the process tier: the timeout is kept, limits it cannot enforce are refused."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from tests.conftest import assert_no_traceback, blastwall, needs_bwrap

pytestmark = needs_bwrap


def policy_file(scratch, text: str):
    path = scratch / f"policy-{uuid.uuid4().hex[:8]}.toml"
    path.write_text(text)
    return path


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker`` (an argument no other process has)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read().split(b"\0"):
                        found.append(int(pid))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("key,value", [("memory", '"256M"'), ("cpus", "1"), ("pids", "64")])
def test_limits_the_tier_cannot_enforce_are_refused_whole(home, workspace, scratch, key, value):
    policy = policy_file(scratch, f"[resources]\n{key} = {value}\ntimeout = \"1m\"\n")
    r = blastwall(["run", "--policy", str(policy), "--", "touch", "ran"], home=home, cwd=workspace)
    assert r.returncode == 125, r.stderr
    assert f"the process tier cannot limit {key}" in r.stderr
    assert "use --tier container, or remove [resources] memory/cpus/pids" in r.stderr
    assert_no_traceback(r)
    assert not (workspace / "ran").exists()  # Nothing ran.


def test_timeout_kills_the_whole_sandbox_and_exits_124(home, workspace, scratch):
    policy = policy_file(scratch, '[resources]\ntimeout = "1s"\n')
    marker = str(900000 + int(uuid.uuid4().hex[:5], 16) % 99999)  # sleep's argument, unique on this host
    start = time.monotonic()
    # The command's own child too: everything in the sandbox dies, not just the command.
    r = blastwall(["run", "--policy", str(policy), "--", "sh", "-c", f"sleep {marker} & sleep {marker}; echo no"],
                  home=home, cwd=workspace, timeout=30)
    elapsed = time.monotonic() - start
    assert r.returncode == 124, r.stderr
    assert "ran longer than its [resources] timeout of 1s" in r.stderr
    assert "no" not in r.stdout
    assert elapsed < 10
    deadline = time.monotonic() + 5
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == []


def test_a_command_that_ends_in_time_is_not_touched(home, workspace, scratch):
    policy = policy_file(scratch, '[resources]\ntimeout = "30s"\n')
    start = time.monotonic()
    r = blastwall(["run", "--policy", str(policy), "--", "sh", "-c", "exit 3"], home=home, cwd=workspace)
    assert r.returncode == 3, r.stderr
    assert "timeout" not in r.stderr
    assert time.monotonic() - start < 10  # The timer does not keep blastwall alive.


def test_the_sdk_keeps_the_policy_timeout(home, workspace, scratch):
    from blastwall.client import CommandExitError, Sandbox
    from tests.conftest import bw_env

    policy = policy_file(scratch, '[resources]\ntimeout = "1s"\n')
    start = time.monotonic()
    with Sandbox.create(policy_file=str(policy), workspace=str(workspace), environ=bw_env(home)) as sbx:
        with pytest.raises(CommandExitError) as info:
            sbx.commands.run("sleep 30", timeout=60)
    assert info.value.exit_code == 124
    assert time.monotonic() - start < 10
