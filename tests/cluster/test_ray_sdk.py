"""A Ray program using blastwall directly: ``blastwall.ray.Sandbox``, ``run_batch``, and the cluster CLI.

No HTTP service: the test process is the Ray driver.  The agents keep their
state in SQLite per node (a program without a database) or, for the audit
check, in PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
import uuid

import pytest

from blastwall.client import CommandExitError, SandboxFileError, SandboxNotFoundError
from blastwall.service import migrations
from tests.cluster.conftest import LOOPBACK_ONLY, SLOTS_PER_NODE, close_agents
from tests.conftest import BASE, blastwall


@pytest.fixture
def program(ray_cluster, service_images, request):
    """A Ray program's blastwall.ray.Cluster, with its own data and state directories."""
    from blastwall.ray import Cluster

    root = BASE / f"ray-{uuid.uuid4().hex[:8]}"
    (root / "state").mkdir(parents=True)
    environ = {**os.environ, "XDG_CACHE_HOME": str(service_images), "XDG_STATE_HOME": str(root / "st"),
               "BLASTWALL_AUDIT_DB": str(root / "audit.sqlite"), **LOOPBACK_ONLY}
    database = getattr(request, "param", "")
    if database == "postgresql":
        from blastwall.service.store import Store

        database = request.getfixturevalue("postgres").new_database()
        Store(database, upgrade=True).close()
    os.makedirs(root / "data", mode=0o700)
    cluster = Cluster(data_dir=str(root / "data"), environ=environ, database=database)
    cluster.root = root
    try:
        yield cluster
    finally:
        close_agents()
        from blastwall.tiers.container.session import ContainerSession

        ContainerSession.recover(environ=environ)
        shutil.rmtree(root, ignore_errors=True)


def _placements() -> set[str]:
    from ray.util.placement_group import placement_group_table

    return {g["name"] for g in placement_group_table().values() if g["state"] != "REMOVED"
            and g["name"].startswith("blastwall-")}


def test_a_ray_program_uses_the_same_sdk_and_its_sandbox_is_held_to_its_policy(program, ray_cluster):
    from blastwall.ray import Sandbox

    with Sandbox.create(cluster=program, policy={"filesystem": {"deny_read": ["secrets.env"]}},
                        resources={"memory": "256M", "cpus": 0.5}) as sbx:
        assert sbx.node in ray_cluster.node_ids()
        assert sbx.commands.run("echo hello from $(id -u)").stdout == "hello from 1000\n"
        streamed = []
        sbx.commands.run("for i in 1 2 3; do echo $i; sleep 0.2; done", on_stdout=streamed.append)
        assert "".join(streamed) == "1\n2\n3\n" and len(streamed) >= 2  # As it came, not at the end.
        with pytest.raises(CommandExitError) as failed:
            sbx.commands.run("echo no >&2; exit 3")
        assert failed.value.exit_code == 3 and failed.value.stderr == "no\n"
        sbx.files.write("data/in.txt", "from the driver")
        assert sbx.commands.run("cat data/in.txt").stdout == "from the driver"
        sbx.commands.run("echo out > out.txt")
        assert sbx.files.read("out.txt") == "out\n"
        with pytest.raises(SandboxFileError):
            sbx.files.read("../../etc/passwd")
        with pytest.raises(SandboxFileError) as hidden:  # The policy's deny_read holds for the file tools too.
            sbx.files.write("secrets.env", "TOKEN=1")
        assert hidden.value.code == "path_refused"
        background = sbx.commands.run("sleep 0.5; echo late", background=True)
        assert background.wait(timeout=30).stdout == "late\n"
        name = sbx.sandbox_id
        assert any(name in p for p in _placements())
    # Killed: the placement goes back to Ray, the sandbox is unknown.
    deadline = time.time() + 15
    while any(name in p for p in _placements()):
        assert time.time() < deadline
        time.sleep(0.2)
    with pytest.raises(SandboxNotFoundError):
        from blastwall.ray import RayBackend

        RayBackend(program, sbx.node, {"id": name}).refresh()


@pytest.mark.slow
def test_run_batch_runs_200_snippets_each_in_its_own_sandbox_with_bounded_concurrency(program, ray_cluster):
    from blastwall.ray import run_batch

    concurrency = SLOTS_PER_NODE * len(ray_cluster.node_ids())
    # Each item proves its sandbox is new: the marker a previous item left would be there otherwise.
    items = [f"test ! -e /home/user/marker && touch /home/user/marker && echo $(( {i} * {i} ))"
             if i % 50 else "exit 7" for i in range(200)]
    most = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            most[0] = max(most[0], len(_placements()))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.time()
    order, results = [], {}
    try:
        for result in run_batch(items, cluster=program, concurrency=concurrency, timeout=60):
            order.append(result.index)
            results[result.index] = result
    finally:
        stop.set()
        sampler.join()
    took = time.time() - start
    assert sorted(order) == list(range(200))
    assert order != list(range(200)) or concurrency == 1  # As they finish, not in order.
    errors = [r for r in results.values() if r.error is not None]
    assert not errors, errors[:3]
    for i, result in results.items():
        if i % 50:
            assert result.exit_code == 0 and result.stdout == f"{i * i}\n", result
        else:
            assert result.exit_code == 7 and not result.ok
    assert len({r.node for r in results.values()}) == len(ray_cluster.node_ids())
    assert 0 < most[0] <= concurrency
    assert not _placements()  # Every sandbox destroyed.
    print(f"200 snippets in {took:.1f} s ({200 / took * 60:.0f} sandboxes per minute), at most {most[0]} at once")


@pytest.mark.parametrize("program", ["postgresql"], indirect=True)
def test_audit_verify_cluster_checks_every_nodes_chain_and_finds_a_tampered_one(program, ray_cluster, home,
                                                                                workspace):
    from blastwall.ray import Sandbox, agent

    sandboxes = [Sandbox.create(cluster=program) for _ in range(len(ray_cluster.node_ids()))]
    for sbx in sandboxes:
        sbx.commands.run("echo audited")
    nodes = {sbx.node for sbx in sandboxes}
    env = {"BLASTWALL_DATABASE": program.settings["database"], **LOOPBACK_ONLY}
    args = ["audit", "verify", "--cluster", ray_cluster.address]
    # The heads are recorded every few seconds: wait for one of each node.
    deadline = time.time() + agent.HEAD_INTERVAL * 4
    from blastwall.service.store import Store

    while True:
        store = Store(program.settings["database"])
        recorded = {h["node"] for h in store.audit_heads()}
        store.close()
        if nodes <= recorded:
            break
        assert time.time() < deadline, recorded
        time.sleep(0.5)
    good = blastwall(args, home=home, cwd=workspace, env=env, timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.count(": OK:") == len(nodes)
    for sbx in sandboxes:
        sbx.kill()
    # A row of one node's log changed on its disk: that node, and only it, is BROKEN.
    victim = sorted(nodes)[0]
    log_path = os.path.join(program.root, "data", "nodes", victim, "audit.sqlite")
    db = sqlite3.connect(log_path)
    db.execute("UPDATE events SET command = 'nothing to see' WHERE seq = 2")
    db.commit()
    db.close()
    bad = blastwall(args, home=home, cwd=workspace, env=env, timeout=120)
    assert bad.returncode == 1 and bad.stdout.count("BROKEN") == 1 and f"node {victim[:12]}" in \
        [line for line in bad.stdout.splitlines() if "BROKEN" in line][0], bad.stdout
    # Rewritten whole, hashes and anchor recomputed: only the heads in the database give it away.
    from blastwall.audit.log import FIELDS, GENESIS, row_hash

    db = sqlite3.connect(log_path)
    prev = GENESIS
    rows = db.execute("SELECT seq, " + ", ".join(FIELDS) + " FROM events ORDER BY seq").fetchall()
    for row in rows:
        digest = row_hash(prev, row[0], dict(zip(FIELDS, row[1:])))
        db.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, row[0]))
        prev = digest
    db.commit()
    db.close()
    with open(log_path + ".anchor", "w") as f:
        f.write(f"{len(rows)} {prev}\n")
    rewritten = blastwall(args, home=home, cwd=workspace, env=env, timeout=120)
    assert rewritten.returncode == 1 and "the log was rewritten" in rewritten.stdout, rewritten.stdout
    status = blastwall(["cluster", "status", "--cluster", ray_cluster.address], home=home, cwd=workspace,
                       env=env, timeout=120)
    assert status.returncode == 0 and status.stdout.count("node ") == len(ray_cluster.node_ids()), status.stdout
    assert f"of {SLOTS_PER_NODE}," in status.stdout
    doctor = blastwall(["doctor", "--cluster", ray_cluster.address], home=home, cwd=workspace, env=env, timeout=300)
    assert "ok      blastwall slots" in doctor.stdout and f"schema version {migrations.LATEST}" in doctor.stdout, doctor.stdout
    assert f"{len(ray_cluster.node_ids())} nodes alive" in doctor.stdout
