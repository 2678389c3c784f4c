"""`blastwall serve --cluster`: sandboxes placed by Ray on a three-node cluster, state in PostgreSQL.

Judged on the host and in Ray: which node each sandbox is on, what a tenant
can reach, what is left after a node dies, what the database holds.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from tests.postgres import sandbox_rows
from tests.cluster.conftest import LOOPBACK_ONLY, SLOTS_PER_NODE, close_agents
from tests.service.conftest import destroy_service, make_service


@pytest.fixture
def replicas(ray_cluster, database, service_images):
    pair = [make_service(service_images, database=database, args=["--cluster", ray_cluster.address])
            for _ in range(2)]
    for svc in pair:
        svc.env.update(LOOPBACK_ONLY)
    try:
        for svc in pair:
            svc.start()
        yield pair
    finally:
        for svc in pair:
            svc.stop()
        close_agents()
        from blastwall.tiers.container.session import ContainerSession

        for svc in pair:
            ContainerSession.recover(environ=svc.env)  # A dead node's containers: their agent is gone.
            destroy_service(svc)


def _running(container: str) -> bool:
    """Does a host process of this container (runsc, its sandbox, its gofer) still run?"""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if container.encode() in f.read():
                        return True
            except OSError:
                continue
    return False


def _placements() -> set[str]:
    from ray.util.placement_group import placement_group_table

    return {g["name"] for g in placement_group_table().values() if g["state"] != "REMOVED"
            and g["name"].startswith("blastwall-")}


def test_ray_places_sandboxes_over_the_nodes_any_replica_serves_any_and_a_full_cluster_says_so(
        ray_cluster, replicas, database):
    a, b = replicas
    key = a.tenant(max_sessions=20, max_memory=32 << 30)
    capacity = SLOTS_PER_NODE * len(ray_cluster.node_ids())
    created = []
    for i in range(capacity):
        created.append((a if i % 2 else b).create(key))
    nodes = {s["node"] for s in created}
    assert nodes == set(ray_cluster.node_ids()), nodes  # Every node got its share: the slots force it.
    full = a.call("POST", "/v1/sandboxes", key, json={})
    assert full.status_code == 503 and full.json()["error"]["code"] == "cluster_full"
    assert full.headers["retry-after"] == "5"
    assert len(_placements()) == capacity  # The refused one booked nothing.
    # Created through one replica, used through the other: commands, streamed output and files.
    for svc, sandbox in ((a, created[0]), (b, created[1])):
        other = b if svc is a else a
        out, _err, code = other.run(key, sandbox["id"], "echo $((6*7)) > answer && cat answer && hostname")
        assert code == 0 and out.startswith("42\n")
        got = svc.call("GET", f"/v1/sandboxes/{sandbox['id']}/files/answer", key)
        assert got.status_code == 200 and got.content == b"42\n"
    put = a.call("PUT", f"/v1/sandboxes/{created[2]['id']}/files/in.txt", key, data=b"from a")
    assert put.status_code == 200
    assert b.run(key, created[2]["id"], "cat in.txt")[0] == "from a"
    listed = {s["id"] for s in b.call("GET", "/v1/sandboxes", key).json()["sandboxes"]}
    assert listed == {s["id"] for s in created}
    # A replica that dies loses nothing: the other serves every sandbox.
    a.kill()
    for sandbox in created:
        assert b.run(key, sandbox["id"], "echo still")[0] == "still\n"
    # Freed on delete, on any replica: the placement goes back to Ray.
    assert b.call("DELETE", f"/v1/sandboxes/{created[0]['id']}", key).status_code == 204
    deadline = time.time() + 15
    while len(_placements()) != capacity - 1:
        assert time.time() < deadline, _placements()
        time.sleep(0.2)
    assert b.create(key)["node"] == created[0]["node"]  # The only free slot is where it was.


def test_tenants_cannot_reach_each_others_sandboxes_on_any_node_through_any_replica(ray_cluster, replicas):
    a, b = replicas
    alice = a.tenant(max_sessions=5)
    mallory = b.tenant(max_sessions=5)
    secret = a.create(alice)
    a.call("PUT", f"/v1/sandboxes/{secret['id']}/files/secret.txt", alice, data=b"alice's")
    mine = b.create(mallory)
    for svc in (a, b):
        for method, path, body in (("GET", "", None), ("GET", "/files/secret.txt", None),
                                   ("POST", "/commands", {"cmd": "cat secret.txt"}), ("DELETE", "", None),
                                   ("PUT", "/files/x", b"x"), ("GET", "/fs/list", None)):
            kwargs = {"json": body} if isinstance(body, dict) else {"data": body} if body else {}
            r = svc.call(method, f"/v1/sandboxes/{secret['id']}{path}", mallory, **kwargs)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert secret["id"] not in svc.call("GET", "/v1/sandboxes", mallory).text
        for odd in ("sbx_%00", "sbx_" + "0" * 24, "..", secret["id"].upper()):  # Never asked of the database.
            assert svc.call("GET", f"/v1/sandboxes/{odd}", mallory).status_code == 404
        tiny = svc.call("POST", "/v1/sandboxes", mallory, json={"resources": {"cpus": 0.001}})
        assert tiny.status_code == 422 and "0.01" in tiny.text
    # From inside: Mallory's sandbox, wherever it is, has none of Alice's files or processes.
    out, _err, _code = b.run(mallory, mine["id"], "cat /home/user/secret.txt; ls /home/user; ps -e | wc -l; "
                                                  "find / -name secret.txt 2>/dev/null | head -1")
    assert "alice's" not in out and "secret.txt" not in out
    assert a.run(alice, secret["id"], "cat secret.txt")[0] == "alice's"
    # Nor Ray itself: whoever reaches the GCS can call any node agent as any tenant.
    host, port = ray_cluster.address.rsplit(":", 1)
    import socket

    with socket.create_connection((host, int(port)), timeout=5):
        pass  # The control: the GCS listens, here on the host.
    probe = f"(exec 3<>/dev/tcp/{host}/{port}) 2>&1 && echo CONNECTED || echo refused"
    out, err, _code = b.run(mallory, mine["id"], ["bash", "-c", probe])
    assert "CONNECTED" not in out and "refused" in out, out + err


def test_a_tenant_at_its_quota_books_nothing_however_hard_it_asks(ray_cluster, replicas, database):
    a, b = replicas
    greedy = a.tenant(max_sessions=1)
    other = b.tenant(max_sessions=5)
    held = a.create(greedy)["id"]
    most = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            most[0] = max(most[0], len(_placements()))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    answers = []

    def flood(svc):
        for _ in range(5):
            answers.append(svc.call("POST", "/v1/sandboxes", greedy, json={"resources": {"cpus": 2}}).status_code)

    floods = [threading.Thread(target=flood, args=(svc,)) for svc in (a, b) for _ in range(4)]
    for thread in floods:
        thread.start()
    for thread in floods:
        thread.join(timeout=120)
    stop.set()
    sampler.join()
    assert answers and set(answers) == {429}, answers
    assert most[0] == 1, most  # Only the sandbox it holds was ever booked.
    assert [r["id"] for r in sandbox_rows(database)] == [held]
    assert b.create(other)["id"]  # The control: another tenant gets a slot at once.


def test_a_node_that_dies_takes_its_sandboxes_they_are_lost_within_seconds_and_their_quota_is_freed(
        ray_cluster, replicas, database):
    a, b = replicas
    quota = SLOTS_PER_NODE * 2
    key = a.tenant(max_sessions=quota)
    created = [a.create(key) for _ in range(quota)]  # More than one node holds: a node besides the head has some.
    assert a.call("POST", "/v1/sandboxes", key, json={}).status_code == 429  # At the tenant's maximum.
    head = ray_cluster.cluster.head_node.node_id
    victim = next(s["node"] for s in created if s["node"] != head)
    doomed = [s["id"] for s in created if s["node"] == victim]
    kept = [s["id"] for s in created if s["node"] != victim]
    assert doomed and kept
    # A command streaming on the doomed node while it dies.
    stream = {}

    def run_long():
        stream["r"] = b.call("POST", f"/v1/sandboxes/{doomed[0]}/commands", key,
                             json={"cmd": "echo started; sleep 120", "timeout": 300}, stream=True)
        stream["lines"] = [line for line in stream["r"].iter_lines() if line]

    runner = threading.Thread(target=run_long)
    runner.start()
    time.sleep(2)
    containers = [r["container"] for r in sandbox_rows(database) if r["id"] in doomed]
    assert len(containers) == len(doomed) and all(containers)
    assert all(_running(c) for c in containers)  # The control: each runs on the host now.
    ray_cluster.kill_node(victim)
    killed = time.time()
    detected = ray_cluster.wait_dead(victim)
    # Lost within seconds: rows gone (the quota with them), the stream ended with sandbox_lost.
    while any(r["id"] in doomed for r in sandbox_rows(database)):
        assert time.time() - killed < detected + 10, sandbox_rows(database)
        time.sleep(0.2)
    lost_after = time.time() - killed
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert stream["lines"][0] == b'{"stdout": "started\\n"}' and b"sandbox_lost" in stream["lines"][-1], stream
    for svc in (a, b):
        gone = svc.call("GET", f"/v1/sandboxes/{doomed[0]}", key)
        assert gone.status_code in (404, 410), gone.text
    # Audited once, by the replica that removed each row.
    lost_rows = [r for svc in (a, b) for r in svc.audit_rows() if r["command"].startswith("lost")]
    assert sorted(r["session"].split("/")[1] for r in lost_rows) == sorted(doomed)
    # Nothing of them is booked on the nodes left; the others still run.
    assert not any(name.endswith(tuple(doomed)) for name in _placements())
    for sandbox in kept:
        assert a.run(key, sandbox, "echo ok")[0] == "ok\n"
    # On the dead node's machine (here, this one) nothing of them runs on unseen, with no row and no quota:
    # their agent saw its raylet go and destroyed them (or died, and their lifelines ended them).
    deadline = time.time() + 30
    while any(_running(c) for c in containers):
        assert time.time() < deadline, [c for c in containers if _running(c)]
        time.sleep(0.5)
    # The freed quota and slots are usable at once (the tenant was at its maximum).
    again = b.create(key)
    assert again["node"] != victim and b.run(key, again["id"], "echo new")[0] == "new\n"
    print(f"node reported dead after {detected:.1f} s; its sandboxes lost after {lost_after:.1f} s")
