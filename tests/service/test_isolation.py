"""Tenant isolation attacks: another tenant's ids, revoked, expired and replayed keys, cross-sandbox reads.

Tenant B holds tenant A's sandbox id (ids leak: logs, URLs, support tickets).
Every route must answer B exactly as for an id that never existed, and A's
sandbox must be untouched afterwards, as checked on the host.
"""

from __future__ import annotations

import time

import pytest

from tests.service.conftest import needs_gvisor

pytestmark = needs_gvisor

UNKNOWN = "sbx_" + "0" * 24


def answers(service, key, sandbox_id, command_id="cmd_" + "0" * 24):
    """(status, error code, message with the ids masked) for every route, as ``key`` sees ``sandbox_id``."""
    base = f"/v1/sandboxes/{sandbox_id}"
    calls = [
        ("GET", base, {}),
        ("POST", f"{base}/timeout", {"json": {"ttl": 5}}),
        ("POST", f"{base}/commands", {"json": {"cmd": "echo pwned > /home/user/pwned"}}),
        ("POST", f"{base}/commands", {"json": {"cmd": "echo pwned > /home/user/pwned", "background": True}}),
        ("GET", f"{base}/commands/{command_id}", {}),
        ("POST", f"{base}/commands/{command_id}/kill", {}),
        ("PUT", f"{base}/files/pwned", {"data": b"pwned"}),
        ("GET", f"{base}/files/secret.txt", {}),
        ("DELETE", base, {}),
    ]
    out = []
    for method, path, kwargs in calls:
        r = service.call(method, path, key, **kwargs)
        body = r.json()
        out.append((method, path.replace(sandbox_id, "ID").replace(command_id, "CID"), r.status_code,
                    body["error"]["code"], body["error"]["message"].replace(sandbox_id, "ID")))
    return out


def test_another_tenants_sandbox_id_is_unknown(service):
    key_a, key_b = service.tenant(), service.tenant()
    victim = service.create(key_a)["id"]
    service.call("PUT", f"/v1/sandboxes/{victim}/files/secret.txt", key_a, data=b"A's secret")
    running = service.call("POST", f"/v1/sandboxes/{victim}/commands", key_a,
                           json={"cmd": "sleep 120", "background": True}).json()["id"]
    expires = service.call("GET", f"/v1/sandboxes/{victim}", key_a).json()["expires_at"]

    # B with A's sandbox id and A's command id, and B with an id that never existed: the same answers.
    seen_by_b = answers(service, key_b, victim, running)
    never = answers(service, key_b, UNKNOWN, running)
    assert seen_by_b == never
    assert {answer[2] for answer in seen_by_b} == {404}
    assert victim not in str(service.call("GET", "/v1/sandboxes", key_b).json())

    # A's sandbox is untouched: alive, same TTL, no file written, its command still running, its secret unread.
    info = service.call("GET", f"/v1/sandboxes/{victim}", key_a).json()
    assert info["state"] == "running" and info["expires_at"] == expires
    assert not (service.workspace(victim) / "pwned").exists()
    assert (service.workspace(victim) / "secret.txt").read_bytes() == b"A's secret"
    assert service.call("GET", f"/v1/sandboxes/{victim}/commands/{running}", key_a).json()["state"] == "running"
    denied = [r for r in service.audit_rows() if victim in r["session"] and r["command"].startswith(("write", "exec"))]
    assert all("pwned" not in r["command"] for r in denied)
    service.call("DELETE", f"/v1/sandboxes/{victim}", key_a)


def test_sandboxes_cannot_see_each_other_or_the_service(service):
    key_a, key_b = service.tenant(), service.tenant()
    a = service.create(key_a)["id"]
    b = service.create(key_b)["id"]
    try:
        service.call("PUT", f"/v1/sandboxes/{b}/files/b-secret.txt", key_b, data=b"B-SECRET-0451")
        b_host = service.workspace(b)
        out, err, code = service.run(key_a, a, f"cat {b_host}/b-secret.txt {service.db} {service.audit_db}")
        assert code != 0 and "B-SECRET-0451" not in out + err and "SQLite" not in out
        # Nothing of B, of the service's data, or of its keys is mounted or running in A.
        out, err, _ = service.run(key_a, a, "cat /proc/mounts; ls -a /home /home/user; "
                                            "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done")
        assert b not in out and "b-secret" not in out and "bwk_" not in out
        assert str(service.root) not in out.replace(str(service.workspace(a)), "")
    finally:
        service.call("DELETE", f"/v1/sandboxes/{a}", key_a)
        service.call("DELETE", f"/v1/sandboxes/{b}", key_b)


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer bwk_000000000000_" + "x" * 43},
    {"Authorization": "bwk_nonsense"},
    {"X-API-Key": "bwk_000000000000_" + "x" * 43},
])
def test_missing_or_wrong_keys_get_401(service, headers):
    r = service.call("GET", "/v1/sandboxes", headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert r.headers.get("www-authenticate") == "Bearer"
    r = service.call("POST", "/v1/sandboxes", headers=headers, json={})
    assert r.status_code == 401


def test_revoked_key_is_refused_at_once_and_replays_fail(service):
    from blastwall.service.store import Store

    key = service.tenant()
    sid = service.create(key)["id"]
    store = Store(str(service.db))
    try:
        tenant = store.authenticate(key).name
        _, second = store.add_key(tenant)
    finally:
        store.close()
    service.revoke(key.rsplit("_", 1)[0])  # The key, not the tenant.
    for _ in range(3):  # Replaying the old key changes nothing.
        assert service.call("GET", f"/v1/sandboxes/{sid}", key).status_code == 401
        assert service.call("POST", "/v1/sandboxes", key, json={}).status_code == 401
    # The tenant's other key still works, and its sandbox lives on.
    assert service.call("GET", f"/v1/sandboxes/{sid}", second).json()["state"] == "running"
    rows = [r for r in service.audit_rows() if r["command"] == "authenticate" and r["decision"] == "deny"]
    assert any(r["reason"].startswith("revoked key") and r["rule"] == f"key {key.split('_')[1]}" for r in rows)
    assert all(key.rsplit("_", 1)[1] not in str(r) for r in service.audit_rows())  # Never the secret.
    service.call("DELETE", f"/v1/sandboxes/{sid}", second)


def test_revoking_a_tenant_destroys_its_sandboxes(service):
    key = service.tenant()
    other = service.tenant()
    before = service.containers()
    sid = service.create(key)["id"]
    mine = [c for c in service.containers() if c not in before]
    survivor = service.create(other)["id"]
    from blastwall.service.store import Store

    store = Store(str(service.db))
    try:
        name = store.authenticate(key).name
    finally:
        store.close()
    service.revoke(name)
    assert service.call("GET", f"/v1/sandboxes/{sid}", key).status_code == 401
    deadline = time.time() + 15
    while service.workspace(sid).exists():
        assert time.time() < deadline, service.read_log()
        time.sleep(0.2)
    assert service.wait_clean(mine, [sid]) == {}
    # Only that tenant's: the other tenant's sandbox is alive.
    assert service.call("GET", f"/v1/sandboxes/{survivor}", other).json()["state"] == "running"
    assert service.run(other, survivor, "echo alive")[0] == "alive\n"
    service.call("DELETE", f"/v1/sandboxes/{survivor}", other)


def test_expired_key_is_refused(service):
    key = service.tenant(expires=time.time() + 2)
    assert service.call("GET", "/v1/sandboxes", key).status_code == 200
    time.sleep(2.2)
    r = service.call("GET", "/v1/sandboxes", key)
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "the API key is invalid, revoked or expired"
