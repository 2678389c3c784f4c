"""The service's state in a real database: versioned schema, quotas across replicas, the database going away.

PostgreSQL is Debian's server, started by the tests (``tests/postgres.py``);
"replicas" are separate processes with their own connections, as two
``blastwall serve`` behind a load balancer would be.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import time

import pytest

from blastwall.service import migrations
from blastwall.service.ceiling import Ceiling
from blastwall.service.store import Store
from tests.conftest import blastwall


def _version_rows(url_or_path: str) -> list[int]:
    store = Store(url_or_path, check=False)
    try:
        return [row[0] for row in store.db.query("SELECT version FROM schema_version ORDER BY version")]
    finally:
        store.close()


# --- the schema ------------------------------------------------------------------------------------

def test_a_new_postgres_database_is_refused_until_db_upgrade_and_no_password_is_printed(postgres, home, workspace):
    url = postgres.new_database()
    with pytest.raises(Exception) as refused:
        Store(url)
    assert "schema version 0" in str(refused.value) and "db upgrade" in str(refused.value)
    assert postgres.password not in str(refused.value)
    env = {"BLASTWALL_DATABASE": url}  # The password stays out of argv (ps would show it).
    doctor = blastwall(["doctor"], home=home, cwd=workspace, env=env, timeout=300)
    assert doctor.returncode == 1 and "schema version 0" in doctor.stdout and "db upgrade" in doctor.stdout
    assert postgres.password not in doctor.stdout + doctor.stderr
    status = blastwall(["db", "status"], home=home, cwd=workspace, env=env)
    assert status.returncode == 1 and "schema version 0" in status.stdout and "pending: 2" in status.stdout
    served = blastwall(["tenant", "list"], home=home, cwd=workspace, env=env)
    assert served.returncode == 125 and "db upgrade" in served.stderr and "Traceback" not in served.stderr
    up = blastwall(["db", "upgrade"], home=home, cwd=workspace, env=env)
    assert up.returncode == 0 and f"schema version 0 -> {migrations.LATEST}" in up.stdout, up.stderr
    again = blastwall(["db", "upgrade", "--database", url], home=home, cwd=workspace)
    assert again.returncode == 0 and "up to date" in again.stdout
    assert blastwall(["db", "status"], home=home, cwd=workspace, env=env).returncode == 0
    assert _version_rows(url) == [number for number, _, _ in migrations.MIGRATIONS]
    for result in (status, served, up, again):
        assert postgres.password not in result.stdout + result.stderr
    added = blastwall(["tenant", "add", "acme"], home=home, cwd=workspace, env=env)
    assert added.returncode == 0, added.stderr
    assert "acme  active" in blastwall(["tenant", "list"], home=home, cwd=workspace, env=env).stdout


def test_an_sqlite_file_from_before_schema_versions_is_upgraded_keeping_its_tenants(scratch):
    """A file written by the unversioned store (tables only) opens, with its key still valid."""
    path = str(scratch / "old" / "service.sqlite")
    (scratch / "old").mkdir(mode=0o700)
    secret = "s" * 43
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE tenants (name TEXT PRIMARY KEY, created REAL NOT NULL, revoked REAL, ceiling TEXT NOT NULL);
        CREATE TABLE keys (id TEXT PRIMARY KEY, tenant TEXT NOT NULL REFERENCES tenants(name), digest TEXT NOT NULL,
                           created REAL NOT NULL, expires REAL, revoked REAL);
        CREATE TABLE sandboxes (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, container TEXT NOT NULL,
                                workspace TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL,
                                owner INTEGER NOT NULL);
    """)
    old.execute("INSERT INTO tenants VALUES ('acme', 1, NULL, ?)", (json.dumps(Ceiling.from_dict({}).as_dict()),))
    old.execute("INSERT INTO keys VALUES ('0123456789ab', 'acme', ?, 1, NULL, NULL)",
                (hashlib.sha256(secret.encode()).hexdigest(),))
    old.execute("INSERT INTO sandboxes VALUES ('sbx_old', 'acme', 'c1', '/nowhere/sbx_old', 1, 2, 42)")
    old.commit()
    old.close()
    store = Store(path)
    try:
        assert store.authenticate(f"bwk_0123456789ab_{secret}").name == "acme"
        [row] = store.sandbox_rows()
        assert row["id"] == "sbx_old" and row["memory"] == 0 and row["replica"] == ""
        assert migrations.version(store.db) == migrations.LATEST
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_database_from_a_newer_blastwall_is_refused_and_left_alone(kind, postgres, scratch, home, workspace):
    target = str(scratch / "new.sqlite") if kind == "sqlite" else postgres.new_database()
    store = Store(target, upgrade=True)
    store.add_tenant("acme", Ceiling.from_dict({}))
    store.db.transaction(lambda tx: tx.execute("INSERT INTO schema_version (version, applied, description) "
                                               "VALUES (?, 0, 'from the future')", (migrations.LATEST + 1,)))
    store.close()
    for options in ({}, {"upgrade": True}):
        with pytest.raises(Exception) as refused:
            Store(target, **options)
        assert "newer than this blastwall" in str(refused.value)
    up = blastwall(["db", "upgrade"], home=home, cwd=workspace, env={"BLASTWALL_DATABASE": target})
    assert up.returncode == 125 and "newer than this blastwall" in up.stderr and "Traceback" not in up.stderr
    assert _version_rows(target)[-1] == migrations.LATEST + 1
    check = Store(target, check=False)
    try:
        assert [row[0] for row in check.db.query("SELECT name FROM tenants")] == ["acme"]
    finally:
        check.close()


def test_two_upgrades_at_once_apply_each_step_once(postgres, home, workspace):
    url = postgres.new_database()
    from tests.conftest import bw_env

    runs = [subprocess.Popen([sys.executable, "-m", "blastwall", "db", "upgrade"], cwd=workspace,
                             env=bw_env(home, {"BLASTWALL_DATABASE": url}), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    assert sum("->" in out for out, _ in outputs) >= 1  # Someone applied them; the others found them done.
    assert _version_rows(url) == [number for number, _, _ in migrations.MIGRATIONS]


# --- quotas across replicas --------------------------------------------------------------------------

_RACER = r"""
import sys, threading, time
from blastwall.service.store import QuotaFull, Store
target, tenant, who, memory, max_sessions, max_memory, start_at = sys.argv[1:]
results = []
def claim(i):
    store = Store(target)  # A connection each: as many replicas as threads.
    time.sleep(max(0, float(start_at) - time.time()))  # All processes at once.
    try:
        store.reserve_sandbox(f"sbx_{who}_{i}", tenant=tenant, workspace="/w", expires=9e9, memory=int(memory),
                              replica=who, max_sessions=int(max_sessions), max_memory=int(max_memory))
        results.append("won")
    except QuotaFull:
        results.append("full")
    finally:
        store.close()
threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(" ".join(results))
"""


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_replicas_racing_for_a_tenants_last_slots_never_overshoot_its_quota(kind, postgres, scratch):
    """Three processes of eight connections each (24 replicas), one request each, all at the same moment."""
    target = str(scratch / "race.sqlite") if kind == "sqlite" else postgres.new_database()
    store = Store(target, upgrade=True)
    try:
        store.add_tenant("acme", Ceiling.from_dict({}))
        store.add_tenant("other", Ceiling.from_dict({}))

        def race(tenant: str, memory: int, max_sessions: int, max_memory: int) -> list[str]:
            start_at = str(time.time() + 3)
            racers = [subprocess.Popen([sys.executable, "-c", _RACER, target, tenant, f"r{n}", str(memory),
                                        str(max_sessions), str(max_memory), start_at], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True) for n in range(3)]
            outcomes = []
            for racer in racers:
                out, err = racer.communicate(timeout=120)
                assert racer.returncode == 0, err[-2000:]
                outcomes += out.split()
            return outcomes

        # Sessions: at most 5 of 24 requests.
        outcomes = race("acme", 1 << 20, 5, 1 << 40)
        assert outcomes.count("won") == 5 and outcomes.count("full") == 19
        rows = [r for r in store.sandbox_rows() if r["tenant"] == "acme"]
        assert len(rows) == 5
        # Memory: 1 GiB in slots of 300 MiB is three, whatever the sessions allow.
        outcomes = race("other", 300 << 20, 100, 1 << 30)
        assert outcomes.count("won") == 3
        assert sum(r["memory"] for r in store.sandbox_rows() if r["tenant"] == "other") == 900 << 20
        # Freed by a removal on any replica: exactly one slot comes back.
        store.remove_sandbox(rows[0]["id"])
        assert race("acme", 1 << 20, 5, 1 << 40).count("won") == 1
    finally:
        store.close()


# --- the database going away -------------------------------------------------------------------------

def test_a_stopped_database_is_a_clear_error_that_writes_nothing_and_a_restart_needs_no_action(
        postgres, home, workspace):
    url = postgres.new_database()
    Store(url, upgrade=True).close()
    env = {"BLASTWALL_DATABASE": url}
    assert blastwall(["tenant", "add", "first"], home=home, cwd=workspace, env=env).returncode == 0
    store = Store(url)  # A long-lived connection, as a service holds: it must survive the restart.
    try:
        postgres.stop()
        try:
            added = blastwall(["tenant", "add", "second"], home=home, cwd=workspace, env=env)
            assert added.returncode == 125 and "Can't reach the service's database" in added.stderr
            assert "Traceback" not in added.stderr and postgres.password not in added.stderr
            assert "bwk_" not in added.stdout  # No key was shown for a tenant that was not written.
            from blastwall.service.database import DatabaseUnavailable

            with pytest.raises(DatabaseUnavailable) as away:
                store.add_tenant("third", Ceiling.from_dict({}))
            assert not away.value.unknown and postgres.password not in str(away.value)
        finally:
            postgres.start()
        assert [t["name"] for t in store.tenants()] == ["first"]  # Reconnected by itself; nothing half-written.
        store.add_tenant("second", Ceiling.from_dict({}))
        assert [t["name"] for t in store.tenants()] == ["first", "second"]
    finally:
        store.close()
