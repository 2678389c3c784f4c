"""Network access through the service: each tenant gets only its ceiling's hosts, each session only its own
gateway identity.

The operator's base policy (``serve --policy``) points the test names at a
loopback upstream; tenants may only *ask* for hosts within their ceilings.
Session B holding session A's proxy credentials (read from inside A, as an
injected agent would) gets nothing with them: not through A's listener, not
through its own.
"""

from __future__ import annotations

import shutil
import time

import pytest

from tests.conftest import kill_gateway
from tests.egress.upstreams import Upstream
from tests.service.conftest import destroy_service, make_service, needs_gvisor

pytestmark = [*needs_gvisor,
              pytest.mark.skipif(shutil.which("nft", path="/usr/sbin:/sbin") is None,
                                 reason="nftables is not installed")]


@pytest.fixture(scope="module")
def net(service_images, tmp_path_factory):
    directory = tmp_path_factory.mktemp("egress")
    up = Upstream(str(directory))
    base = directory / "base.toml"
    base.write_text('[network]\nresolve = { "api.test" = "127.0.0.1", "other.test" = "127.0.0.1" }\n'
                    'trusted_addresses = ["127.0.0.1/32"]\n')
    svc = make_service(service_images, args=["--policy", str(base)])
    svc.env["BLASTWALL_GATEWAY_IDLE"] = "30"
    svc.start()
    yield svc, up
    svc.stop()
    kill_gateway(svc.state)  # Started on demand by the sessions; it would idle on for a while.
    destroy_service(svc)
    up.close()


def test_tenants_get_their_ceilings_hosts_and_sessions_their_own_identity(net):
    svc, up = net
    key_a = svc.tenant(allow_domains=["api.test"])
    key_b = svc.tenant(allow_domains=["other.test"])
    r = svc.call("POST", "/v1/sandboxes", key_a, json={"policy": {"network": {"allow": ["other.test"]}}})
    assert r.status_code == 403  # Another tenant's grant is not this tenant's.
    a = svc.create(key_a, policy={"network": {"allow": ["api.test"]}})["id"]
    b = svc.create(key_b, policy={"network": {"allow": ["other.test"]}})["id"]
    try:
        port = up.http_port
        out, err, _ = svc.run(key_a, a, f"curl -sS -m 10 http://api.test:{port}/from-a; echo; "
                                        f"curl -sS -m 10 http://other.test:{port}/a-to-other; echo; "
                                        "echo PROXY=$HTTP_PROXY")
        assert "hello from upstream" in out, out + err
        proxy_a = out.split("PROXY=", 1)[1].strip()
        assert proxy_a, out
        # B replays A's proxy URL (token and address), then A's token on its own listener.
        out_b, _, _ = svc.run(key_b, b, "echo PROXY=$HTTP_PROXY")
        proxy_b = out_b.split("PROXY=", 1)[1].strip()
        token_a = proxy_a.split("//", 1)[1].split("@", 1)[0] if "@" in proxy_a else ""
        own_listener = proxy_b.split("@", 1)[1] if "@" in proxy_b else proxy_b.split("//", 1)[1]
        out, err, _ = svc.run(key_b, b, f"curl -sS -m 5 -x {proxy_a} http://api.test:{port}/replay-a; echo rc=$?; "
                                        f"curl -sS -m 5 -x http://{token_a}@{own_listener} "
                                        f"http://api.test:{port}/replay-b; echo rc=$?")
        assert "hello from upstream" not in out, out + err
        # A's listener is not even reachable from B's namespace; B's own gateway refuses A's token.
        assert "Failed to connect" in err and "proxy credentials required" in out, out + err
        paths = [r[1] for r in up.requests]
        assert "/from-a" in paths
        assert not {"/a-to-other", "/replay-a", "/replay-b"} & set(paths), paths
    finally:
        svc.call("DELETE", f"/v1/sandboxes/{a}", key_a)
        svc.call("DELETE", f"/v1/sandboxes/{b}", key_b)
    time.sleep(0.5)
    assert svc.leftovers(sandboxes=[a, b]) == {}


def test_a_vm_sandbox_reaches_its_hosts_only_through_its_gateway_session(net):
    from tests.conftest import tier_missing

    if tier_missing("vm"):
        pytest.skip(reason=tier_missing("vm"))
    svc, up = net
    key = svc.tenant(allow_domains=["api.test"], tiers=["vm"])
    sid = svc.create(key, tier="vm", policy={"network": {"allow": ["api.test"]}})["id"]
    try:
        port = up.http_port
        out, err, _ = svc.run(key, sid, f"curl -sS -m 20 http://api.test:{port}/from-vm; echo; "
                                        f"curl -sS -m 20 http://other.test:{port}/vm-to-other; echo rc=$?; "
                                        f"curl -sS -m 5 --noproxy '*' http://127.0.0.1:{port}/vm-direct; echo rc=$?",
                              timeout=120)
        assert "hello from upstream" in out, out + err
        paths = [r[1] for r in up.requests]
        assert "/from-vm" in paths
        assert not {"/vm-to-other", "/vm-direct"} & set(paths), paths
    finally:
        svc.call("DELETE", f"/v1/sandboxes/{sid}", key)
    time.sleep(0.5)
    assert svc.leftovers(sandboxes=[sid]) == {} and svc.processes(b"qemu-system-") == {}


def test_update_network_narrows_at_once_and_widens_only_within_the_ceiling(net):
    svc, up = net
    key = svc.tenant(allow_domains=["api.test", "other.test"])
    other_key = svc.tenant(allow_domains=["api.test"])
    sid = svc.create(key, policy={"network": {"allow": ["api.test", "other.test"]}})["id"]
    bare = svc.create(key)["id"]  # no network at all
    port = up.http_port

    class fetch:  # noqa: N801 - reads as the command it builds
        @staticmethod
        def format(api_path: str, other_path: str) -> str:
            return (f"curl -sS -m 10 -o /dev/null -w '%{{http_code}} ' http://api.test:{port}/{api_path}; "
                    f"curl -sS -m 10 -D - -o /dev/null -w '%{{http_code}}' http://other.test:{port}/{other_path}")
    try:
        out, err, _ = svc.run(key, sid, fetch.format("a1", "o1"))  # positive control: both reachable
        assert out.startswith("200 ") and out.endswith("200"), out + err
        r = svc.call("POST", f"/v1/sandboxes/{sid}/network", key, json={"allow": ["api.test"]})
        assert r.status_code == 200 and r.json()["network"]["allow"] == ["api.test"], r.text
        out, err, _ = svc.run(key, sid, fetch.format("a2", "o2"))
        assert out.startswith("200 ") and out.endswith("403"), out + err
        assert "x-blastwall-reason: not-allowed" in out.lower(), out  # a reason the agent can act on
        # Deny wins over allow, at once.
        r = svc.call("POST", f"/v1/sandboxes/{sid}/network", key, json={"deny": ["api.test"]})
        assert r.status_code == 200 and r.json()["network"]["deny"] == ["api.test"], r.text
        out, err, _ = svc.run(key, sid, fetch.format("a3", "o3"))
        assert out.startswith("403 "), out + err
        # Widening: within the ceiling (other.test) yes; beyond it no, and nothing changes.
        r = svc.call("POST", f"/v1/sandboxes/{sid}/network", key, json={"allow": ["api.test", "other.test"]})
        assert r.status_code == 200, r.text
        out, err, _ = svc.run(key, sid, fetch.format("a4", "o4"))
        assert out.endswith("200"), out + err
        r = svc.call("POST", f"/v1/sandboxes/{sid}/network", key, json={"allow": ["evil.test"]})
        assert r.status_code == 403 and r.json()["error"]["code"] == "ceiling_exceeded", r.text
        assert svc.call("GET", f"/v1/sandboxes/{sid}", key).json()["network"]["allow"] == ["api.test", "other.test"]
        rows = [row for row in svc.audit_rows() if row.get("command") == "network" or "network" in str(row)]
        assert any("ceiling_exceeded" in str(row) for row in rows) and len(rows) >= 4, rows
        # Bad input, another tenant, a sandbox without network: refused, nothing changed.
        for body in ({"allow": "api.test"}, {"allow": [5]}, {"allow": ["bad host"]}, {"nope": []}):
            assert svc.call("POST", f"/v1/sandboxes/{sid}/network", key, json=body).status_code == 422, body
        assert svc.call("POST", f"/v1/sandboxes/{sid}/network", other_key, json={"allow": []}).status_code == 404
        r = svc.call("POST", f"/v1/sandboxes/{bare}/network", key, json={"allow": ["api.test"]})
        assert r.status_code == 422 and "without network" in r.json()["error"]["message"], r.text
        paths = [r[1] for r in up.requests]
        assert {"/a1", "/o1", "/a2", "/o4"} <= set(paths) and not {"/o2", "/a3"} & set(paths), paths
    finally:
        svc.call("DELETE", f"/v1/sandboxes/{sid}", key)
        svc.call("DELETE", f"/v1/sandboxes/{bare}", key)


KEEP_ALIVE = r'''
import base64, os, socket, ssl, struct, sys, time, urllib.parse
kind, port = sys.argv[1], int(sys.argv[2])
proxy = urllib.parse.urlsplit(os.environ["HTTP_PROXY"])
user, password = urllib.parse.unquote(proxy.username), urllib.parse.unquote(proxy.password)
auth = base64.b64encode(f"{user}:{password}".encode()).decode()

def ask(s, path, absolute):
    target = f"http://api.test:{port}{path}" if absolute else path
    extra = f"Proxy-Authorization: Basic {auth}\r\n" if absolute else ""
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: api.test:{port}\r\n{extra}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return "closed"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head.split(b" ")[1].decode()

if kind == "socks":
    socks = urllib.parse.urlsplit(os.environ["BLASTWALL_SOCKS_PROXY"])
    s = socket.create_connection((socks.hostname, socks.port), timeout=10)
    s.sendall(b"\x05\x01\x02"); s.recv(2)
    u, p = urllib.parse.unquote(socks.username).encode(), urllib.parse.unquote(socks.password).encode()
    s.sendall(b"\x01" + bytes([len(u)]) + u + bytes([len(p)]) + p); s.recv(2)
    s.sendall(b"\x05\x01\x00\x03\x08api.test" + struct.pack(">H", port)); s.recv(10)
    absolute = False
else:
    s = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
    absolute = kind == "http"
    if kind in ("connect", "tls"):
        s.sendall(f"CONNECT api.test:{port} HTTP/1.1\r\nHost: api.test:{port}\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode())
        s.recv(65536)
    if kind == "tls":  # not decrypted by the gateway (no grants): a tunnel it never looks into again
        s = ssl.create_default_context(cafile="/home/user/ca.pem").wrap_socket(s, server_hostname="api.test")
print("before", ask(s, f"/{kind}-before", absolute), flush=True)
while not os.path.exists(f"/tmp/go-{kind}"):
    time.sleep(0.1)
try:
    print("after", ask(s, f"/{kind}-after", absolute), flush=True)
except OSError as exc:
    print("after", type(exc).__name__, flush=True)
'''


def test_update_network_narrows_connections_already_open(net):
    """A keep-alive connection opened before the change -- through the HTTP proxy, a CONNECT tunnel (plain, and
    TLS the gateway does not decrypt), SOCKS5 -- gets no further request to a host the change took away."""
    svc, up = net
    key = svc.tenant(allow_domains=["api.test"])
    sid = svc.create(key, policy={"network": {"allow": ["api.test"]}})["id"]
    port = up.http_port
    try:
        svc.run(key, sid, f"cat > /tmp/keep.py <<'EOF'\n{KEEP_ALIVE}\nEOF")
        with open(up.ca, "rb") as f:
            assert svc.call("PUT", f"/v1/sandboxes/{sid}/files/ca.pem", key, data=f.read()).status_code == 200
        handles = {}
        for kind in ("http", "connect", "socks", "tls"):
            where = up.https_port if kind == "tls" else port
            r = svc.call("POST", f"/v1/sandboxes/{sid}/commands", key,
                         json={"cmd": f"python3 /tmp/keep.py {kind} {where}", "background": True, "timeout": 60})
            handles[kind] = r.json()["id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                "before" in svc.call("GET", f"/v1/sandboxes/{sid}/commands/{cid}", key).json()["stdout"]
                for cid in handles.values()):
            time.sleep(0.3)
        assert svc.call("POST", f"/v1/sandboxes/{sid}/network", key, json={"deny": ["api.test"]}).status_code == 200
        svc.run(key, sid, "touch /tmp/go-http /tmp/go-connect /tmp/go-socks /tmp/go-tls")
        outputs = {kind: svc.call("GET", f"/v1/sandboxes/{sid}/commands/{cid}?wait=30", key).json()["stdout"]
                   for kind, cid in handles.items()}
        paths = [r[1] for r in up.requests]
        for kind, out in outputs.items():
            assert "before 200" in out, (kind, out)  # positive control: the connection worked before
            assert f"/{kind}-before" in paths and f"/{kind}-after" not in paths, (kind, out, paths)
            assert "after 200" not in out, (kind, out)
    finally:
        svc.call("DELETE", f"/v1/sandboxes/{sid}", key)
