"""Egress on a cluster: each sandbox only its own grant and gateway identity, whichever node it and its neighbour are on.

As for one machine (tests/service/test_egress.py), the operator's base policy
points the test names at a loopback upstream; here the two tenants' sandboxes
are on different Ray nodes, created and driven through different replicas, and
one replays the other's proxy credentials.
"""

from __future__ import annotations

import shutil

import pytest

from tests.cluster.conftest import LOOPBACK_ONLY, close_agents
from tests.conftest import kill_gateway
from tests.egress.upstreams import Upstream
from tests.service.conftest import destroy_service, make_service

pytestmark = pytest.mark.skipif(shutil.which("nft", path="/usr/sbin:/sbin") is None,
                                reason="nftables is not installed")


@pytest.fixture
def net(ray_cluster, database, service_images, tmp_path_factory):
    directory = tmp_path_factory.mktemp("cluster-egress")
    up = Upstream(str(directory))
    base = directory / "base.toml"
    base.write_text('[network]\nresolve = { "api.test" = "127.0.0.1", "other.test" = "127.0.0.1" }\n'
                    'trusted_addresses = ["127.0.0.1/32"]\n')
    pair = [make_service(service_images, database=database,
                         args=["--cluster", ray_cluster.address, "--policy", str(base)]) for _ in range(2)]
    for svc in pair:
        svc.env.update(LOOPBACK_ONLY)
        svc.env["BLASTWALL_GATEWAY_IDLE"] = "30"
    try:
        for svc in pair:
            svc.start()
        yield pair, up
    finally:
        for svc in pair:
            svc.stop()
        close_agents()
        for svc in pair:
            kill_gateway(svc.state)
            destroy_service(svc)
        up.close()


def test_sandboxes_on_different_nodes_get_only_their_own_grant_and_gateway_identity(net):
    (a, b), up = net
    key_a = a.tenant(allow_domains=["api.test"])
    key_b = b.tenant(allow_domains=["other.test"])
    first = a.create(key_a, policy={"network": {"allow": ["api.test"]}})
    second = None
    for _ in range(3):  # A node holds two: at most two tries land beside the first.
        second = b.create(key_b, policy={"network": {"allow": ["other.test"]}})
        if second["node"] != first["node"]:
            break
    assert second["node"] != first["node"]
    port = up.http_port
    out, err, _ = b.run(key_a, first["id"], f"curl -sS -m 10 http://api.test:{port}/from-a; echo; "
                                            f"curl -sS -m 10 http://other.test:{port}/a-to-other; echo; "
                                            "echo PROXY=$HTTP_PROXY")
    assert "hello from upstream" in out, out + err
    proxy_a = out.split("PROXY=", 1)[1].strip()
    out_b, _, _ = a.run(key_b, second["id"], f"curl -sS -m 10 http://other.test:{port}/from-b; echo; "
                                             "echo PROXY=$HTTP_PROXY")
    assert "hello from upstream" in out_b
    proxy_b = out_b.split("PROXY=", 1)[1].strip()
    token_a = proxy_a.split("//", 1)[1].split("@", 1)[0] if "@" in proxy_a else ""
    own_listener = proxy_b.split("@", 1)[1] if "@" in proxy_b else proxy_b.split("//", 1)[1]
    out, err, _ = a.run(key_b, second["id"], f"curl -sS -m 5 -x {proxy_a} http://api.test:{port}/replay-a; "
                                             f"echo rc=$?; curl -sS -m 5 -x http://{token_a}@{own_listener} "
                                             f"http://api.test:{port}/replay-b; echo rc=$?")
    assert "hello from upstream" not in out, out + err
    assert "Failed to connect" in err and "proxy credentials required" in out, out + err
    paths = [r[1] for r in up.requests]
    assert "/from-a" in paths and "/from-b" in paths  # The positive controls, one per node.
    assert not {"/a-to-other", "/replay-a", "/replay-b"} & set(paths), paths
