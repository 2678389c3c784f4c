"""Where the service keeps its state: an SQLite file (the embedded default) or PostgreSQL.

``open_database(target)`` takes a path or ``sqlite:///PATH`` (one machine; the
file is made 0600 in a 0700 directory) or ``postgresql://…`` (several ``serve``
replicas share it; psycopg 3 over libpq, so ``~/.pgpass``, ``PGPASSWORD`` and
``sslmode=`` work as they do for psql).

Both speak one small interface: ``query`` (a read) and ``transaction`` (a
function run on a ``Tx`` inside one transaction, committed if it returns).
SQL is written once, with ``?`` placeholders and types both databases know
(TEXT, BIGINT, DOUBLE PRECISION).  ``Tx.lock_tenant`` serialises writers of one
tenant: a row lock in PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already holds
the whole file.

A database that cannot be reached, or is locked for longer than its timeout,
raises ``DatabaseUnavailable`` (the API answers 503 with ``Retry-After``).  A
transaction is retried once on a fresh connection only when its ``BEGIN``
failed: nothing of it can have happened.  After that, an error means the
caller is told, never that the write is assumed done.

The schema is versioned (``migrations.py``): an SQLite file is brought up to
date when it is opened; a PostgreSQL database only by ``blastwall db upgrade``
(replicas of two versions may share it during a rolling upgrade), and a
replica refuses a database that is behind or ahead of it.
"""

from __future__ import annotations

import os
import threading
import urllib.parse

from blastwall.errors import ContainmentError

__all__ = ["Database", "DatabaseUnavailable", "Tx", "database_message", "describe_target", "open_database"]

RETRY_AFTER = 2          # seconds a client is told to wait when the database is away
_CONNECT_TIMEOUT = 5     # seconds


class DatabaseUnavailable(ContainmentError):
    """The database cannot be reached now; nothing of the operation was done (or it is unknown: ``unknown``)."""

    def __init__(self, message: str, *, unknown: bool = False) -> None:
        super().__init__(message, fix="check that the database runs and that its URL, user and password are "
                                      "right; the service answers 503 until it is back")
        self.unknown = unknown


def database_message(exc: DatabaseUnavailable) -> str:
    """What a client is told: no driver text (it may name hosts and users)."""
    if exc.unknown:
        return ("the service's database went away while saving; the change may not have been kept: "
                "look before trying again")
    return "the service's database is unavailable; nothing was done: try again shortly"


def describe_target(target: str) -> str:
    """``target`` with any password taken out, for logs and messages."""
    if "://" not in target or target.startswith("sqlite:"):
        return target
    parts = urllib.parse.urlsplit(target)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}@{host}"
    query = "&".join(p for p in parts.query.split("&") if p and not p.lower().startswith("password="))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def open_database(target: str, *, upgrade: bool | None = None, check: bool = True) -> "Database":
    """The database at ``target`` with its schema checked.

    ``upgrade``: True brings it up to date, False only checks, None does what
    its kind does by default (SQLite: upgrade; PostgreSQL: check).  ``check``
    False: neither (``blastwall db`` looks for itself).
    """
    if not isinstance(target, str) or not target or "\x00" in target:
        raise ContainmentError("The service's database is not named", fix="give --database PATH or URL")
    scheme = target.partition("://")[0].lower() if "://" in target else ""
    if scheme in ("postgresql", "postgres"):
        database: Database = _Postgres(target)
    elif scheme == "sqlite":
        path = target[len("sqlite://"):]
        if not path.startswith("/"):
            raise ContainmentError(f"{target!r} is not an SQLite URL with an absolute path",
                                   fix="write sqlite:///absolute/path/service.sqlite, or give the path itself")
        database = _Sqlite(path)
    elif scheme:
        raise ContainmentError(f"The service cannot keep its state in a {scheme!r} database",
                               fix="give a file path (SQLite) or a postgresql:// URL")
    else:
        database = _Sqlite(os.path.abspath(target))
    if not check:
        return database
    try:
        from blastwall.service import migrations

        if upgrade if upgrade is not None else database.kind == "sqlite":
            migrations.upgrade(database)
        else:
            migrations.check_current(database)
    except BaseException:
        database.close()
        raise
    return database


class Tx:
    """One transaction's statements; ``rowcount`` is the last statement's."""

    def __init__(self, database: "Database", cursor) -> None:
        self._database = database
        self._cursor = cursor
        self.statements = 0
        self.rowcount = 0

    def execute(self, sql: str, args=()) -> list[tuple]:
        self._cursor.execute(self._database._sql(sql), tuple(args))
        self.statements += 1
        self.rowcount = self._cursor.rowcount
        return self._cursor.fetchall() if self._cursor.description is not None else []

    def lock_tenant(self, name: str) -> bool:
        """Hold tenant ``name`` until the transaction ends; False if there is no such tenant."""
        return bool(self.execute(self._database._lock_tenant_sql, (name,)))


class Database:
    """One connection, shared by the threads of a process under one lock."""

    kind = ""
    _lock_tenant_sql = "SELECT 1 FROM tenants WHERE name = ?"

    def __init__(self, target: str) -> None:
        self.target = target
        self.description = describe_target(target)
        self._lock = threading.Lock()
        self._conn = None

    # -- what the store calls ------------------------------------------------------------------
    def query(self, sql: str, args=()) -> list[tuple]:
        return self.transaction(lambda tx: tx.execute(sql, args), read_only=True)

    def transaction(self, work, *, read_only: bool = False):
        """``work(tx)`` inside one transaction, committed if it returns; its result."""
        with self._lock:
            for attempt in (0, 1):
                tx = None
                committing = False
                try:
                    conn = self._connection()
                    cursor = conn.cursor()
                    try:
                        self._begin(cursor, read_only)
                        tx = Tx(self, cursor)
                        try:
                            result = work(tx)
                        except BaseException:
                            self._rollback(cursor)
                            raise
                        committing = True
                        self._commit(cursor)
                        return result
                    finally:
                        cursor.close()
                except Exception as exc:
                    if not self._unavailable(exc):
                        raise
                    self._drop_connection()
                    if tx is None and attempt == 0:
                        continue  # BEGIN failed: nothing happened; once more on a new connection.
                    raise DatabaseUnavailable(f"Can't reach the service's database {self.description}: "
                                              f"{_first_line(exc)}", unknown=committing) from None
            raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            self._drop_connection()

    # -- per kind --------------------------------------------------------------------------------
    def _unavailable(self, exc: Exception) -> bool:
        """Is ``exc`` the database being away (as opposed to a bug in a statement)?"""
        raise NotImplementedError

    def is_conflict(self, exc: Exception) -> bool:
        """Is ``exc`` a unique key that someone else wrote first?"""
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql

    def _connection(self):
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may not even close
                pass

    def _connect(self):
        raise NotImplementedError

    def _begin(self, cursor, read_only: bool) -> None:
        cursor.execute("BEGIN")

    def _commit(self, cursor) -> None:
        cursor.execute("COMMIT")

    def _rollback(self, cursor) -> None:
        try:
            cursor.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - the connection is gone: its transaction with it
            self._drop_connection()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


class _Sqlite(Database):
    kind = "sqlite"

    def __init__(self, path: str) -> None:
        import sqlite3

        super().__init__(path)
        self._sqlite3 = sqlite3
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # The file holds key digests: nobody else reads it.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        os.close(fd)

    def _unavailable(self, exc: Exception) -> bool:
        # OperationalError is also "no such table": only a busy or unreadable file is "away".
        text = str(exc).lower()
        return isinstance(exc, self._sqlite3.OperationalError) and any(
            word in text for word in ("locked", "busy", "unable to open", "disk i/o"))

    def is_conflict(self, exc: Exception) -> bool:
        return isinstance(exc, self._sqlite3.IntegrityError)

    def _connect(self):
        import sqlite3

        conn = sqlite3.connect(self.target, isolation_level=None, check_same_thread=False, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _begin(self, cursor, read_only: bool) -> None:
        # IMMEDIATE: the write lock at once, so a read-then-write (a quota) is never raced.
        cursor.execute("BEGIN" if read_only else "BEGIN IMMEDIATE")


class _Postgres(Database):
    kind = "postgresql"
    _lock_tenant_sql = "SELECT 1 FROM tenants WHERE name = ? FOR UPDATE"

    def __init__(self, target: str) -> None:
        super().__init__(target)
        try:
            import psycopg
        except ImportError:
            raise ContainmentError("The service cannot use PostgreSQL: psycopg is not installed",
                                   fix="pip install 'blastwall[postgres]' (psycopg 3)") from None
        self._psycopg = psycopg

    def _unavailable(self, exc: Exception) -> bool:
        # Connection lost or refused, the server shutting down, a deadlock: try again later.
        return isinstance(exc, (self._psycopg.OperationalError, self._psycopg.InterfaceError))

    def is_conflict(self, exc: Exception) -> bool:
        return isinstance(exc, self._psycopg.errors.UniqueViolation)

    def _sql(self, sql: str) -> str:
        if "%" in sql:
            raise ValueError("SQL for the store must not contain '%'")
        return sql.replace("?", "%s")

    def _connect(self):
        return self._psycopg.connect(self.target, autocommit=True, connect_timeout=_CONNECT_TIMEOUT,
                                     application_name="blastwall")

    def _begin(self, cursor, read_only: bool) -> None:
        cursor.execute("BEGIN READ ONLY" if read_only else "BEGIN")
