"""The Gatekeeper addon's hooks with mitmproxy's own connection objects.

The resolver is the attacker's input here (a DNS answer), so it is replaced
by a scripted one; nothing of the boundary is faked.
"""

from __future__ import annotations

import asyncio

from mitmproxy import connection
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from blastwall.egress.addon import Gatekeeper
from blastwall.egress.decide import Rules
from blastwall.egress.gateway import SESSION_PEER, Registry, Session


def setup(answers, allow=("rebind.test",)):
    registry = Registry()
    session = Session(Rules(allow=allow), "test", "/nonexistent")
    registry.sessions[session.id] = session
    registry.bind_port("http", 5555, session)
    script = iter(answers)

    async def resolver(host, port):
        return next(script)

    return registry, session, Gatekeeper(registry, None, resolver)


def hook_data(host="rebind.test", port=80, peer_port=5555):
    client = connection.Client(peername=(SESSION_PEER, peer_port), sockname=(SESSION_PEER, 0),
                               timestamp_start=0, proxy_mode=ProxyMode.parse("regular"))
    return ServerConnectionHookData(server=connection.Server(address=(host, port)), client=client)


def test_dns_rebinding_connects_to_the_checked_address_only():
    registry, session, gk = setup([["93.184.216.34"], ["127.0.0.1"]])
    first = hook_data()
    asyncio.run(gk.server_connect(first))
    assert first.server.error is None
    assert first.server.address == ("93.184.216.34", 80)  # Pinned: no second lookup.
    second = hook_data()  # The same name now answers with loopback.
    asyncio.run(gk.server_connect(second))
    assert second.server.error and "forbidden-address" in second.server.error
    assert session.blocked_count == 1


def test_mixed_answer_is_refused_whole():
    _, _, gk = setup([["93.184.216.34", "169.254.169.254"]])
    data = hook_data()
    asyncio.run(gk.server_connect(data))
    assert data.server.error and "forbidden-address" in data.server.error


def test_real_loopback_peer_is_never_a_session():
    _, _, gk = setup([["93.184.216.34"]])
    data = hook_data()
    data.client.peername = ("127.0.0.1", 5555)  # Same number, but a real socket's address.
    asyncio.run(gk.server_connect(data))
    assert data.server.error == "blastwall: no session"


def test_connection_without_session_is_refused():
    _, _, gk = setup([["93.184.216.34"]])
    data = hook_data(peer_port=6666)
    asyncio.run(gk.server_connect(data))
    assert data.server.error == "blastwall: no session"


def test_fault_in_decision_code_fails_closed():
    _, _, gk = setup([["93.184.216.34"]])
    gk.fault = RuntimeError("injected")
    data = hook_data()
    asyncio.run(gk.server_connect(data))
    assert data.server.error and "internal error" in data.server.error
