"""The service database's schema, one numbered step at a time.

A step is applied once, in its own transaction, and recorded in
``schema_version``; steps are never edited after they ship, only added.  A
database written before versioning (an SQLite file with the tables of step 1
and no ``schema_version``) takes step 1 as a no-op: every statement of it is
``IF NOT EXISTS``.  In PostgreSQL an advisory lock makes two ``db upgrade``
runs at once take turns.
"""

from __future__ import annotations

import time

from blastwall.errors import ContainmentError

__all__ = ["LATEST", "MIGRATIONS", "check_current", "upgrade", "version"]

# (version, what it does, its statements): written once for both databases.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "tenants, their keys, the sandboxes alive now", (
        """CREATE TABLE IF NOT EXISTS tenants (
            name TEXT PRIMARY KEY,
            created DOUBLE PRECISION NOT NULL,
            revoked DOUBLE PRECISION,
            ceiling TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS keys (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL REFERENCES tenants(name),
            digest TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            expires DOUBLE PRECISION,
            revoked DOUBLE PRECISION)""",
        """CREATE TABLE IF NOT EXISTS sandboxes (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            container TEXT NOT NULL,
            workspace TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            expires DOUBLE PRECISION NOT NULL,
            owner INTEGER NOT NULL)""",
    )),
    (2, "quotas held in the database: each sandbox's memory and the replica that runs it", (
        "ALTER TABLE sandboxes ADD COLUMN memory BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE sandboxes ADD COLUMN replica TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX IF NOT EXISTS sandboxes_by_tenant ON sandboxes (tenant)",
        "CREATE INDEX IF NOT EXISTS sandboxes_by_replica ON sandboxes (replica)",
        "CREATE INDEX IF NOT EXISTS keys_by_tenant ON keys (tenant)",
    )),
    (3, "a cluster: the Ray node of each sandbox, and each node's audit chain heads", (
        "ALTER TABLE sandboxes ADD COLUMN node TEXT NOT NULL DEFAULT ''",
        """CREATE TABLE audit_heads (
            replica TEXT NOT NULL,
            node TEXT NOT NULL,
            seq BIGINT NOT NULL,
            hash TEXT NOT NULL,
            recorded DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (replica, seq))""",
    )),
)
LATEST = MIGRATIONS[-1][0]

_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied DOUBLE PRECISION NOT NULL,
    description TEXT NOT NULL)"""
_ADVISORY_KEY = 0x626C617374  # "blast": the migration lock's number in PostgreSQL


def version(database) -> int:
    """The newest step applied to ``database`` (0: none; no version table yet)."""
    def read(tx):
        if database.kind == "postgresql":
            exists = tx.execute("SELECT to_regclass('schema_version') IS NOT NULL")[0][0]
        else:
            exists = bool(tx.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"))
        if not exists:
            return 0
        return tx.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")[0][0]

    return int(database.transaction(read, read_only=True))


def check_current(database) -> int:
    """The schema's version, if it is exactly this blastwall's; a clear refusal otherwise."""
    found = version(database)
    if found > LATEST:
        raise ContainmentError(f"The database {database.description} has schema version {found}, newer than this "
                               f"blastwall knows ({LATEST})", fix="upgrade blastwall on this machine")
    if found < LATEST:
        raise ContainmentError(f"The database {database.description} has schema version {found}; this blastwall "
                               f"needs {LATEST}", fix="run `blastwall db upgrade --database URL` once (from one "
                                                      "machine), then start the service")
    return found


def upgrade(database) -> list[int]:
    """Apply every step not yet applied, each in its own transaction; the versions applied."""
    applied: list[int] = []
    for number, description, statements in MIGRATIONS:
        def step(tx, number=number, description=description, statements=statements):
            if database.kind == "postgresql":
                tx.execute(f"SELECT pg_advisory_xact_lock({_ADVISORY_KEY})")
            tx.execute(_VERSION_TABLE)
            current = tx.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")[0][0]
            if current > LATEST:
                raise ContainmentError(f"The database {database.description} has schema version {current}, newer "
                                       f"than this blastwall knows ({LATEST})", fix="upgrade blastwall first")
            if current >= number:
                return False
            for statement in statements:
                tx.execute(statement)
            tx.execute("INSERT INTO schema_version (version, applied, description) VALUES (?, ?, ?)",
                       (number, time.time(), description))
            return True

        if database.transaction(step):
            applied.append(number)
    return applied

