"""An append-only SQLite log in which each row carries the hash of the one before.

``verify`` recomputes the chain and names the first row that does not fit:
an edited row changes its hash, a deleted row breaks the next row's link, and
a truncated tail no longer matches the anchor file written beside the
database after every append.  This makes tampering *evident*, not impossible:
someone who can rewrite the database and the anchor can forge both.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time

__all__ = ["FIELDS", "AuditLog", "default_path"]

FIELDS = ("time", "kind", "session", "command", "host", "port", "decision", "rule", "reason")
GENESIS = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    session TEXT NOT NULL,
    command TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    decision TEXT NOT NULL,
    rule TEXT NOT NULL,
    reason TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
)
"""


def default_path(environ=os.environ) -> str:
    from blastwall.policy.load import state_dir

    return os.path.join(state_dir(environ), "audit.sqlite")


def row_hash(prev_hash: str, seq: int, values: dict) -> str:
    body = json.dumps([seq, *[values[f] for f in FIELDS]], separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


class AuditLog:
    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._repair_anchor()

    def _repair_anchor(self) -> None:
        """After a crash between a commit and its anchor update, catch the anchor up.

        Only the case a crash can cause is repaired: the database exactly one
        row *ahead* of an anchor that matches the row before it.  A database
        *behind* its anchor means rows were removed, and is left for verify().
        """
        last_two = self._db.execute("SELECT seq, prev_hash, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        if last_two is None:
            return
        seq, prev_hash, digest = last_two
        try:
            with open(self.anchor_path) as f:
                anchor_seq, anchor_hash = f.read().split()
        except FileNotFoundError:
            if seq == 1:
                self._write_anchor(seq, digest)
            return
        except ValueError:
            return
        if int(anchor_seq) == seq - 1 and anchor_hash == prev_hash:
            self._write_anchor(seq, digest)

    @property
    def anchor_path(self) -> str:
        return self.path + ".anchor"

    @staticmethod
    def _values(fields: dict) -> dict:
        values = {"time": time.time(), "kind": "egress", "session": "", "command": "", "host": "", "port": 0,
                  "decision": "", "rule": "", "reason": ""}
        unknown = set(fields) - set(values)
        if unknown:
            raise ValueError(f"unknown audit fields: {sorted(unknown)}")
        values.update(fields)
        values["port"] = int(values["port"])
        for name in FIELDS:
            if name not in ("time", "port"):
                values[name] = str(values[name])[:2048]
        return values

    def append(self, **fields) -> int:
        return self.append_many([fields])

    def append_many(self, batch: list[dict]) -> int:
        """Append rows in one transaction; return the last sequence number."""
        rows = [self._values(fields) for fields in batch]
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            last = db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (last[0], last[1]) if last else (0, GENESIS)
            for values in rows:
                seq += 1
                digest = row_hash(prev, seq, values)
                db.execute(
                    "INSERT INTO events (seq, time, kind, session, command, host, port, decision, rule, reason,"
                    " prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (seq, *[values[f] for f in FIELDS], prev, digest),
                )
                prev = digest
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._write_anchor(seq, prev)
        return seq

    def _write_anchor(self, seq: int, digest: str) -> None:
        tmp = f"{self.anchor_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{seq} {digest}\n")
        os.replace(tmp, self.anchor_path)

    def rows(self, *, last: int | None = None) -> list[dict]:
        query = "SELECT seq, " + ", ".join(FIELDS) + ", prev_hash, hash FROM events ORDER BY seq"
        rows = [dict(zip(("seq", *FIELDS, "prev_hash", "hash"), r)) for r in self._db.execute(query)]
        return rows[-last:] if last else rows

    def head(self) -> tuple[int, str] | None:
        """(seq, hash) of the newest row; None for an empty log."""
        row = self._db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else None

    def verify(self) -> tuple[bool, str]:
        """(True, summary) or (False, what is wrong and the first broken row)."""
        prev = GENESIS
        expected_seq = 1
        count = 0
        for row in self._db.execute("SELECT seq, " + ", ".join(FIELDS) + ", prev_hash, hash FROM events ORDER BY seq"):
            seq = row[0]
            values = dict(zip(FIELDS, row[1:1 + len(FIELDS)]))
            prev_hash, digest = row[-2], row[-1]
            if seq != expected_seq:
                return False, f"row {expected_seq} is missing (next row is {seq}): rows were deleted"
            if prev_hash != prev:
                return False, f"row {seq} does not link to row {seq - 1}: an earlier row was changed or deleted"
            if row_hash(prev_hash, seq, values) != digest:
                return False, f"row {seq} was modified: its content does not match its hash"
            prev = digest
            expected_seq += 1
            count += 1
        try:
            with open(self.anchor_path) as f:
                anchor_seq, anchor_hash = f.read().split()
        except FileNotFoundError:
            if count:
                return False, "the anchor file is missing: the log cannot be checked for truncation"
            return True, "empty log"
        except ValueError:
            return False, "the anchor file is unreadable"
        if int(anchor_seq) != count or anchor_hash != prev:
            return False, (f"the log ends at row {count} but the anchor records row {anchor_seq}: "
                           "rows were removed from the end (or the anchor was replaced)")
        return True, f"{count} rows, chain intact"

    def close(self) -> None:
        self._db.close()


class BackgroundAppender:
    """Appends from a worker thread, in batches, so decisions never wait on disk.

    ``append`` only queues.  ``close`` flushes what is queued; a crash loses at
    most the rows still queued (milliseconds' worth), never the chain.
    """

    def __init__(self, log: AuditLog) -> None:
        import queue
        import threading

        self.log = log
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="blastwall-audit", daemon=True)
        self._thread.start()

    def append(self, **fields) -> None:
        self._queue.put(fields)

    def _run(self) -> None:
        import logging
        import queue

        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < 500:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batch.append(more)
            try:
                self.log.append_many(batch)
            except Exception as exc:  # noqa: BLE001 - keep the gateway deciding; say so loudly
                logging.getLogger("blastwall.audit").error("audit append failed: %r", exc)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self.log.close()
