"""Every tier implements the one contract (tiers/contract.py), checked the same way for each.

A session is booted, runs several commands that share its state (a file in
its /tmp, a background process the next command signals), streams output
before the end, reports exit statuses and kills; after ``close()`` nothing
it started runs on the host.  The tables of what each tier enforces name
every plan operation kind, so a new kind cannot be skipped silently.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from blastwall import api
from blastwall.errors import Unsupported
from blastwall.policy import plan as P
from blastwall.policy.model import merge, parse_layer
from blastwall.tiers import contract
from blastwall.tiers.container import ENFORCES as CONTAINER
from blastwall.tiers.process import ENFORCES as PROCESS
from blastwall.tiers.vm import ENFORCES as VM
from tests.attacks.tiers import TIERS, tier_params
from tests.conftest import bw_env


def _tiers():
    return tier_params(TIERS)


@pytest.mark.parametrize("table", [PROCESS, CONTAINER, VM], ids=lambda t: t.tier)
def test_each_table_decides_every_operation_kind(table):
    undecided = [kind.__name__ for kind in P.OPERATION_TYPES if kind not in table.handled and kind not in table.refused]
    assert undecided == []
    assert not set(table.handled) & set(table.refused)


def test_an_unknown_operation_kind_is_refused_loudly():
    class Novel(P.Operation):
        __slots__ = ()

    plan = P.Plan((Novel(),), (), "/")
    for table in (PROCESS, CONTAINER, VM):
        with pytest.raises(Unsupported, match=f"the {table.tier} tier cannot enforce Novel"):
            contract.check_plan(plan, table)


def _session(tier, home, workspace, image_cache):
    env = {**os.environ, **bw_env(home)}
    if tier != "process":
        env["XDG_CACHE_HOME"] = str(image_cache)
    policy = merge([parse_layer({"sandbox": {"tier": tier}}, "test")])
    return api.session(policy, workspace=str(workspace), environ=env)


def _run(session, argv, **kw):
    r, w = os.pipe()
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        process = session.exec(argv, stdin=devnull, stdout=w, stderr=w, **kw)
    finally:
        os.close(w)
        os.close(devnull)
    try:
        status = process.wait(120)
        chunks = []
        os.set_blocking(r, False)
        try:
            while chunk := os.read(r, 65536):
                chunks.append(chunk)
        except BlockingIOError:
            pass
        return status, b"".join(chunks).decode()
    finally:
        process.release()
        os.close(r)


@pytest.mark.parametrize("tier", _tiers())
def test_a_session_keeps_its_state_between_commands(tier, home, workspace, request):
    image_cache = request.getfixturevalue("image_cache") if tier != "process" else None
    session = _session(tier, home, workspace, image_cache)
    assert isinstance(session, contract.Session) and session.tier == tier
    session.prepare()
    session.boot()
    try:
        assert session.alive()
        assert _run(session, ["sh", "-c", "echo kept > /tmp/state; echo $GREETING"], env={"GREETING": "hi"}) \
            == (0, "hi\n")
        assert _run(session, ["cat", "/tmp/state"]) == (0, "kept\n")  # The same sandbox's /tmp.
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            server = session.exec(["sh", "-c", "echo $$ > /tmp/server.pid; exec sleep 300"], stdin=devnull,
                                  stdout=devnull, stderr=devnull)
        finally:
            os.close(devnull)
        assert isinstance(server, contract.Process) and server.poll() is None
        assert server.exit_fd() is None or isinstance(server.exit_fd(), int)
        deadline = time.monotonic() + 60
        while _run(session, ["test", "-s", "/tmp/server.pid"])[0] != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        # Another command reaches the first one's process.
        assert _run(session, ["sh", "-c", "kill -0 $(cat /tmp/server.pid) && echo reached"]) == (0, "reached\n")
        with pytest.raises(TimeoutError):
            server.wait(0.2)
        server.kill(signal.SIGTERM)
        assert server.wait(60) == 128 + signal.SIGTERM
        server.release()
        assert _run(session, ["sh", "-c", "exit 7"])[0] == 7
        assert _run(session, ["sh", "-c", "pwd"], cwd="/tmp") == (0, "/tmp\n")
        (workspace / "from-host.txt").write_text("host\n")
        assert _run(session, ["cat", str(workspace / "from-host.txt")]) == (0, "host\n")  # At its own path.
    finally:
        session.close()
    assert not session.alive()
    assert session.egress_summary is None and session.gateway_lost is False  # No network asked for.


@pytest.mark.parametrize("tier", _tiers())
def test_the_environment_a_command_sees_is_the_plans(tier, home, workspace, request):
    """Every variable of the plan, as the plan has it; a tier with an image of its own sets only
    PATH, HOME, USER and LOGNAME to its layout, and GIT_CONFIG_GLOBAL to a private file (its home is the
    workspace, whose .gitconfig is protected; tiers._lifecycle.image_environment)."""
    image_cache = request.getfixturevalue("image_cache") if tier != "process" else None
    with _session(tier, home, workspace, image_cache) as session:
        (env_op,) = session.plan.of(P.Environment)
        status, out = _run(session, ["env", "-0"])
    assert status == 0, out
    seen = dict(item.partition("=")[::2] for item in out.split("\0") if item)
    planned = dict(env_op.variables)
    assert planned["BLASTWALL_SANDBOX"] == tier and "HOME" in planned  # The control: a real plan.
    layout = {"PATH", "HOME", "USER", "LOGNAME", "GIT_CONFIG_GLOBAL"} if tier != "process" else set()
    kept = ("PWD", "OLDPWD", "SHLVL", "_")  # The working directory's, which bubblewrap and shells keep.
    assert {k: v for k, v in seen.items() if k not in layout and k not in kept} == \
        {k: v for k, v in planned.items() if k not in layout and k not in kept}
    if tier == "process":
        assert seen["HOME"] == planned["HOME"] and seen["PATH"] == planned["PATH"]
    else:
        assert seen["USER"] == seen["LOGNAME"] == "user" and seen["PATH"].startswith("/usr/local/sbin:")
        assert seen["GIT_CONFIG_GLOBAL"] == "/tmp/.gitconfig"
