"""Several `blastwall serve` replicas on one PostgreSQL database, and that database going away.

Real replicas (separate processes, data and state directories, one database),
real gVisor sandboxes; what is judged is on the host and in the database.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from tests.postgres import sandbox_rows
from tests.service.conftest import container_ids, destroy_service, make_service, needs_gvisor

pytestmark = needs_gvisor


@pytest.fixture
def replicas(database, service_images):
    pair = [make_service(service_images, database=database) for _ in range(2)]
    try:
        for svc in pair:
            svc.start()
        yield pair
    finally:
        for svc in pair:
            destroy_service(svc)


def _wait(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.time() < deadline, what
        time.sleep(0.2)


def test_replicas_share_tenants_and_one_quota_and_a_revocation_reaches_both(replicas, database):
    a, b = replicas
    name = "acme"
    key = a.tenant(name, max_sessions=1)
    # The key made through one replica's database is the other's too.
    assert b.call("GET", "/v1/sandboxes", key).status_code == 200
    # The race for the tenant's only slot, one request to each replica at once.
    answers = {}
    start = threading.Barrier(2)

    def create(svc):
        start.wait()
        answers[svc.port] = svc.call("POST", "/v1/sandboxes", key, json={})

    threads = [threading.Thread(target=create, args=(svc,)) for svc in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    statuses = sorted(r.status_code for r in answers.values())
    assert statuses == [201, 429], [(r.status_code, r.text) for r in answers.values()]
    winner = next(svc for svc in replicas if answers[svc.port].status_code == 201)
    loser = b if winner is a else a
    assert answers[loser.port].json()["error"]["code"] == "quota_exceeded"
    sandbox = answers[winner.port].json()["id"]
    assert winner.run(key, sandbox, "echo hi from $(hostname)")[0].startswith("hi from")
    assert [r["id"] for r in sandbox_rows(database)] == [sandbox]
    assert not os.listdir(loser.data / "sandboxes")  # The loser booted nothing.
    # Freed on one replica, the slot is the other's.
    assert winner.call("DELETE", f"/v1/sandboxes/{sandbox}", key).status_code == 204
    second = loser.create(key)
    assert loser.run(key, second["id"], "echo again")[0] == "again\n"
    # Revoked in the database: refused by both at once, and the running sandbox is destroyed.
    a.revoke(name)
    assert a.call("GET", "/v1/sandboxes", key).status_code == 401
    assert b.call("GET", "/v1/sandboxes", key).status_code == 401
    assert loser.wait_clean(sandboxes=[second["id"]]) == {}
    _wait(lambda: not sandbox_rows(database), 15, "the revoked tenant's row stayed")


def test_a_replica_reaps_its_own_leftovers_never_another_replicas_sandboxes(replicas, database):
    a, b = replicas
    key = a.tenant(max_sessions=5)
    sandbox = a.create(key)["id"]
    b.stop()
    b.start()  # B's start reaps what B left: nothing of A's.
    assert a.run(key, sandbox, "echo alive")[0] == "alive\n"
    assert [r["id"] for r in sandbox_rows(database)] == [sandbox]
    a.kill()  # A crashes; its next start reaps its own.
    a.start()
    assert sandbox_rows(database) == []
    assert a.wait_clean(sandboxes=[sandbox]) == {}
    assert any(r["command"].startswith("reap") and sandbox in r["session"] for r in a.audit_rows())
    # B still serves the tenant: the database is one truth, the sandboxes each replica's own.
    other = b.create(key)["id"]
    assert b.run(key, other, "echo fine")[0] == "fine\n"


def test_the_database_away_is_503_with_retry_after_nothing_half_done_and_back_by_itself(
        postgres, database, service_images):
    svc = make_service(service_images, database=database)
    try:
        svc.start()
        key = svc.tenant(max_sessions=2)
        kept = svc.create(key)["id"]
        before = svc.containers()
        short = svc.create(key, ttl=4)["id"]  # Expires while the database is away.
        short_containers = container_ids(svc, before)
        assert len(short_containers) == 1
        postgres.stop()
        try:
            listed = svc.call("GET", "/v1/sandboxes", key)
            assert listed.status_code == 503 and listed.json()["error"]["code"] == "database_unavailable"
            assert listed.headers["retry-after"] == "2"
            created = svc.call("POST", "/v1/sandboxes", key, json={})
            assert created.status_code == 503 and created.json()["error"]["code"] == "database_unavailable"
            assert svc.call("GET", "/v1/health").status_code == 200
            # The TTL reaper still destroys on time; only the row waits for the database.
            assert svc.wait_clean(containers=short_containers, sandboxes=[short], timeout=20) == {}
            assert sorted(os.listdir(svc.data / "sandboxes")) == [kept]  # Nothing booted for the refused create.
            assert svc.containers() == before
        finally:
            postgres.start()
        _wait(lambda: [r["id"] for r in sandbox_rows(database)] == [kept], 15, "the expired sandbox's row stayed")
        # Its quota is back: two sandboxes again, the kept one still working.
        third = svc.create(key)["id"]
        assert svc.run(key, kept, "echo kept")[0] == "kept\n"
        assert svc.run(key, third, "echo third")[0] == "third\n"
        assert svc.call("POST", "/v1/sandboxes", key, json={}).status_code == 429
        log = svc.log.read_text(errors="replace")
        assert "Traceback" not in log and postgres.password not in log
    finally:
        destroy_service(svc)
