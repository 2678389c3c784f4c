"""The service's store: tenants, their API keys, and the sandboxes alive now.

It keeps them in a ``Database`` (``database.py``): an SQLite file on one
machine, PostgreSQL for several ``serve`` replicas that share one truth.

An API key is ``bwk_<id>_<secret>``: the id (12 hex digits) is public and names
the key in listings, audit rows and ``tenant revoke``; the secret (32 random
bytes) is shown once, when the key is made, and only its SHA-256 is stored.
A high-entropy random secret needs no slow hash: nobody can guess a 256-bit
preimage, and a stolen database does not give the keys.  The digest is
compared in constant time, and an unknown id costs the same comparison.

The ``sandboxes`` table records every sandbox a replica created and has not
yet destroyed, with the replica that runs it, so that its next process can
reap what a crashed one left (``sandbox_rows(replica=...)``).  A tenant's quota
(sandboxes, memory) is checked against these rows and a new row written in
one transaction that holds the tenant's row: two replicas racing for a
tenant's last slot cannot both win.  The CLI (``blastwall tenant ...``) and
running replicas share the database; revocations take effect at each
replica's next request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time

from blastwall.service.ceiling import Ceiling

__all__ = ["KEY_PREFIX", "AuthFailure", "QuotaFull", "Store", "Tenant", "check_tenant_name", "default_db_path"]

KEY_PREFIX = "bwk_"
_KEY_ID_LEN = 12
_DUMMY_DIGEST = hashlib.sha256(b"blastwall: no such key").hexdigest()



def default_db_path(environ=os.environ) -> str:
    return os.path.join(data_dir(environ), "service.sqlite")


def data_dir(environ=os.environ) -> str:
    """Where the service keeps its database and the sandboxes' workspaces.

    Not under blastwall's state, config or cache directories: those are
    protected paths, and a workspace inside one would be made read-only.
    """
    from blastwall.policy.load import _home

    base = environ.get("XDG_DATA_HOME") or os.path.join(_home(environ), ".local", "share")
    return os.path.join(base, "blastwall", "service")


def check_tenant_name(name: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not name.isascii() or \
            not (name[0].isalnum() and all(c.isalnum() or c in "-_." for c in name)) or name.startswith(KEY_PREFIX):
        raise ValueError(f"{name!r} is not a tenant name (letters, digits, '-', '_', '.'; at most 64)")
    return name


class AuthFailure(Exception):
    """The key is missing, malformed, unknown, revoked or expired.  ``reason`` is for the audit log only."""

    def __init__(self, reason: str, key_id: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.key_id = key_id


class Tenant:
    __slots__ = ("name", "ceiling", "key_id")

    def __init__(self, name: str, ceiling: Ceiling, key_id: str) -> None:
        self.name, self.ceiling, self.key_id = name, ceiling, key_id

    def __repr__(self) -> str:
        return f"Tenant({self.name!r}, key {self.key_id})"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(key: str) -> tuple[str, str]:
    """(key id, secret) of a well-formed key; AuthFailure otherwise."""
    if not isinstance(key, str) or not key.startswith(KEY_PREFIX) or len(key) > 200:
        raise AuthFailure("malformed key")
    key_id, sep, secret = key[len(KEY_PREFIX):].partition("_")
    if not sep or len(key_id) != _KEY_ID_LEN or not all(c in "0123456789abcdef" for c in key_id) \
            or len(secret) < 32 or not secret.isascii():
        raise AuthFailure("malformed key")
    return key_id, secret


class QuotaFull(Exception):
    """A tenant's quota has no room for one more sandbox of that size: what it holds now."""

    def __init__(self, sandboxes: int, memory: int) -> None:
        super().__init__(f"{sandboxes} sandboxes, {memory} bytes")
        self.sandboxes, self.memory = sandboxes, memory


class Store:
    """The service's state in one database; safe to share between threads of one process."""

    def __init__(self, database, **options) -> None:
        """``database``: a ``Database``, or a path or URL to open with ``options`` (see ``open_database``)."""
        from blastwall.service.database import open_database

        self.db = open_database(database, **options) if isinstance(database, str) else database
        self.path = self.db.target

    def close(self) -> None:
        self.db.close()

    def _query(self, sql: str, args=()) -> list[tuple]:
        return self.db.query(sql, args)

    def _write(self, statements: list[tuple[str, tuple]]) -> int:
        """Run statements in one transaction; the row count of the last."""
        def run(tx):
            for sql, args in statements:
                tx.execute(sql, args)
            return tx.rowcount

        return self.db.transaction(run)

    # -- tenants and keys -----------------------------------------------------------------
    def add_tenant(self, name: str, ceiling: Ceiling, *, expires: float | None = None,
                   key: bool = True) -> tuple[str, str]:
        """Create tenant ``name`` with its first key; (key id, the key itself — shown once).

        ``key`` False: no key at all (a Ray program's tenant, never reached over HTTP); ("", "").
        """
        check_tenant_name(name)
        if self._query("SELECT 1 FROM tenants WHERE name = ?", (name,)):
            raise ValueError(f"tenant {name!r} exists (issue another key with `blastwall tenant key {name}`)")
        with_key = key
        key_id, key, digest = self._new_key() if with_key else ("", "", "")
        now = time.time()
        statements = [("INSERT INTO tenants (name, created, revoked, ceiling) VALUES (?, ?, NULL, ?)",
                       (name, now, json.dumps(ceiling.as_dict())))]
        if with_key:
            statements.append(("INSERT INTO keys (id, tenant, digest, created, expires, revoked) "
                               "VALUES (?, ?, ?, ?, ?, NULL)", (key_id, name, digest, now, expires)))
        try:
            self._write(statements)
        except Exception as exc:
            if self.db.is_conflict(exc):  # Added by someone else since the check above.
                raise ValueError(f"tenant {name!r} exists") from None
            raise
        return key_id, key

    def add_key(self, name: str, *, expires: float | None = None) -> tuple[str, str]:
        """Another key for an existing, unrevoked tenant."""
        rows = self._query("SELECT revoked FROM tenants WHERE name = ?", (name,))
        if not rows:
            raise ValueError(f"no tenant {name!r}")
        if rows[0][0] is not None:
            raise ValueError(f"tenant {name!r} is revoked")
        key_id, key, digest = self._new_key()
        self._write([("INSERT INTO keys (id, tenant, digest, created, expires, revoked) VALUES (?, ?, ?, ?, ?, NULL)",
                      (key_id, name, digest, time.time(), expires))])
        return key_id, key

    @staticmethod
    def _new_key() -> tuple[str, str, str]:
        key_id = secrets.token_hex(_KEY_ID_LEN // 2)
        secret = secrets.token_urlsafe(32)
        return key_id, f"{KEY_PREFIX}{key_id}_{secret}", _digest(secret)

    def revoke(self, target: str) -> str:
        """Revoke a key (``bwk_<id>``, the whole key, or a bare id) or a whole tenant (its name).

        Returns a description of what was revoked.  A name is looked up as a
        tenant first, so a tenant whose name looks like a key id is never
        mistaken for a key; ``bwk_...`` is only ever a key.
        """
        now = time.time()
        is_key = target.startswith(KEY_PREFIX)
        if not is_key and self._query("SELECT 1 FROM tenants WHERE name = ?", (target,)):
            self._write([
                ("UPDATE keys SET revoked = ? WHERE tenant = ? AND revoked IS NULL", (now, target)),
                ("UPDATE tenants SET revoked = ? WHERE name = ? AND revoked IS NULL", (now, target)),
            ])
            return f"tenant {target} and all its keys"
        key_id = target[len(KEY_PREFIX):].partition("_")[0] if is_key else target
        if self._query("SELECT 1 FROM keys WHERE id = ?", (key_id,)):
            self._write([("UPDATE keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (now, key_id))])
            return f"key {KEY_PREFIX}{key_id}"
        raise ValueError(f"no tenant or key {target!r}")

    def tenants(self) -> list[dict]:
        out = []
        for name, created, revoked, ceiling in self._query(
                "SELECT name, created, revoked, ceiling FROM tenants ORDER BY name"):
            keys = [{"id": k, "created": c, "expires": e, "revoked": r} for k, c, e, r in self._query(
                "SELECT id, created, expires, revoked FROM keys WHERE tenant = ? ORDER BY created", (name,))]
            out.append({"name": name, "created": created, "revoked": revoked, "ceiling": json.loads(ceiling),
                        "keys": keys})
        return out

    def revoked_tenants(self) -> set[str]:
        return {row[0] for row in self._query("SELECT name FROM tenants WHERE revoked IS NOT NULL")}

    def authenticate(self, key: str, *, now: float | None = None) -> Tenant:
        """The tenant of a valid key; ``AuthFailure`` for anything else."""
        key_id, secret = split_key(key)
        rows = self._query(
            "SELECT k.digest, k.expires, k.revoked, t.name, t.revoked, t.ceiling FROM keys k "
            "JOIN tenants t ON t.name = k.tenant WHERE k.id = ?", (key_id,))
        stored = rows[0][0] if rows else _DUMMY_DIGEST
        matches = hmac.compare_digest(stored, _digest(secret))
        if not rows or not matches:
            raise AuthFailure("unknown key", key_id)
        _digest_, expires, revoked, name, tenant_revoked, ceiling = rows[0]
        if revoked is not None or tenant_revoked is not None:
            raise AuthFailure("revoked key", key_id)
        if expires is not None and (now or time.time()) >= expires:
            raise AuthFailure("expired key", key_id)
        return Tenant(name, Ceiling.from_dict(json.loads(ceiling)), key_id)

    # -- sandboxes ---------------------------------------------------------------------------
    _SANDBOX_FIELDS = ("id", "tenant", "container", "workspace", "created", "expires", "owner", "memory", "replica",
                       "node")

    def add_sandbox(self, sandbox_id: str, *, tenant: str, container: str, workspace: str, expires: float,
                    memory: int = 0, replica: str = "", node: str = "") -> None:
        """A row for a sandbox nobody's quota pays for yet (a warm spare: ``tenant`` is "")."""
        self._write([self._insert(sandbox_id, tenant, container, workspace, expires, memory, replica, node)])

    def reserve_sandbox(self, sandbox_id: str, *, tenant: str, workspace: str, expires: float, memory: int,
                        replica: str, max_sessions: int, max_memory: int, claim: bool = False,
                        node: str = "") -> None:
        """The tenant's quota checked and the sandbox's row written, in one transaction.

        ``claim``: the row exists (a warm spare, tenant ""): it becomes the
        tenant's.  ``QuotaFull`` if the tenant has no room; ``ValueError`` if
        the tenant is gone, or the spare was claimed by someone else.
        """
        def reserve(tx):
            if not tx.lock_tenant(tenant):
                raise ValueError(f"no tenant {tenant!r}")
            count, used = tx.execute("SELECT COUNT(*), COALESCE(SUM(memory), 0) FROM sandboxes WHERE tenant = ?",
                                     (tenant,))[0]
            if count >= max_sessions or used + memory > max_memory:
                raise QuotaFull(int(count), int(used))
            if claim:
                tx.execute("UPDATE sandboxes SET tenant = ?, expires = ?, memory = ? WHERE id = ? AND tenant = ''",
                           (tenant, expires, memory, sandbox_id))
                if tx.rowcount != 1:
                    raise ValueError(f"sandbox {sandbox_id} is not a free spare")
            else:
                tx.execute(*self._insert(sandbox_id, tenant, "", workspace, expires, memory, replica, node))

        self.db.transaction(reserve)

    def adopt_sandbox(self, sandbox_id: str, *, replica: str, node: str, workspace: str, expires: float) -> None:
        """A row a cluster's replica reserved (quota paid, no node yet) becomes the node agent's sandbox's."""
        count = self._write([("UPDATE sandboxes SET replica = ?, node = ?, workspace = ?, expires = ?, owner = ? "
                              "WHERE id = ? AND node = ''", (replica, node, workspace, expires, os.getpid(),
                                                             sandbox_id))])
        if count != 1:
            raise ValueError(f"sandbox {sandbox_id} has no reservation to take")

    def remove_stale_reservations(self, older_than: float) -> list[str]:
        """Reservations (rows without a node) made before ``older_than``: their replica died mid-create."""
        def sweep(tx):
            stale = [row[0] for row in tx.execute(
                "SELECT id FROM sandboxes WHERE node = '' AND tenant <> '' AND created < ?", (older_than,))]
            for sandbox_id in stale:
                tx.execute("DELETE FROM sandboxes WHERE id = ? AND node = ''", (sandbox_id,))
            return stale

        return self.db.transaction(sweep)

    @staticmethod
    def _insert(sandbox_id, tenant, container, workspace, expires, memory, replica, node) -> tuple[str, tuple]:
        return ("INSERT INTO sandboxes (id, tenant, container, workspace, created, expires, owner, memory, replica, "
                "node) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sandbox_id, tenant, container, workspace, time.time(), expires, os.getpid(), memory, replica, node))

    def update_sandbox(self, sandbox_id: str, **fields) -> None:
        allowed = {"tenant", "expires", "container"}
        if set(fields) - allowed:
            raise ValueError(f"cannot update {sorted(set(fields) - allowed)}")
        assignments = ", ".join(f"{name} = ?" for name in sorted(fields))
        self._write([(f"UPDATE sandboxes SET {assignments} WHERE id = ?",
                      (*[fields[name] for name in sorted(fields)], sandbox_id))])

    def remove_sandbox(self, sandbox_id: str) -> bool:
        """The row gone; False if it was already (another replica took it first)."""
        return self._write([("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))]) == 1

    def sandbox_row(self, sandbox_id: str) -> dict | None:
        rows = self._query("SELECT " + ", ".join(self._SANDBOX_FIELDS) + " FROM sandboxes WHERE id = ?", (sandbox_id,))
        return dict(zip(self._SANDBOX_FIELDS, rows[0])) if rows else None

    # -- audit chain heads -----------------------------------------------------------------------
    def record_audit_head(self, *, replica: str, node: str, seq: int, digest: str) -> None:
        """One audit log's head as it is now: later, a log that no longer has it was rewritten."""
        self._write([("INSERT INTO audit_heads (replica, node, seq, hash, recorded) VALUES (?, ?, ?, ?, ?) "
                      "ON CONFLICT (replica, seq) DO NOTHING", (replica, node, seq, digest, time.time()))])

    def audit_heads(self) -> list[dict]:
        names = ("replica", "node", "seq", "hash", "recorded")
        return [dict(zip(names, row)) for row in
                self._query("SELECT replica, node, seq, hash, recorded FROM audit_heads ORDER BY replica, seq")]

    def sandbox_rows(self, *, replica: str | None = None, node: str | None = None,
                     tenant: str | None = None) -> list[dict]:
        """Every sandbox's row, or those of one replica, one node or one tenant."""
        sql = "SELECT " + ", ".join(self._SANDBOX_FIELDS) + " FROM sandboxes"
        where = [(name, value) for name, value in (("replica", replica), ("node", node), ("tenant", tenant))
                 if value is not None]
        if where:
            sql += " WHERE " + " AND ".join(f"{name} = ?" for name, _ in where)
        rows = self._query(sql, tuple(value for _, value in where))
        return [dict(zip(self._SANDBOX_FIELDS, row)) for row in rows]
