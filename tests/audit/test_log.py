"""The hash-chained audit log: tampering of each kind is detected and named."""

from __future__ import annotations

import sqlite3

import pytest

from blastwall.audit.log import AuditLog


@pytest.fixture
def log(tmp_path):
    audit = AuditLog(str(tmp_path / "audit.sqlite"))
    for i in range(5):
        audit.append(session="s1", command="curl", host=f"h{i}.example.com", port=443,
                     decision="deny" if i % 2 else "allow", rule="network.allow", reason="test")
    yield audit
    audit.close()


def raw(log):
    return sqlite3.connect(log.path, isolation_level=None)


def test_intact(log):
    ok, message = log.verify()
    assert ok, message
    assert [r["seq"] for r in log.rows()] == [1, 2, 3, 4, 5]


def test_edited_row(log):
    raw(log).execute("UPDATE events SET decision='allow' WHERE seq=2")
    ok, message = log.verify()
    assert not ok and "row 2 was modified" in message


def test_edited_row_with_recomputed_hash_breaks_the_next_link(log):
    from blastwall.audit.log import FIELDS, row_hash

    db = raw(log)
    db.execute("UPDATE events SET decision='allow' WHERE seq=2")
    row = db.execute("SELECT seq, " + ", ".join(FIELDS) + ", prev_hash FROM events WHERE seq=2").fetchone()
    db.execute("UPDATE events SET hash=? WHERE seq=2", (row_hash(row[-1], 2, dict(zip(FIELDS, row[1:-1]))),))
    ok, message = log.verify()
    assert not ok and "row 3 does not link" in message


def test_deleted_row(log):
    raw(log).execute("DELETE FROM events WHERE seq=3")
    ok, message = log.verify()
    assert not ok and "row 3 is missing" in message


def test_truncated_tail(log):
    raw(log).execute("DELETE FROM events WHERE seq>=4")
    ok, message = log.verify()
    assert not ok and "removed from the end" in message


def test_survives_a_writer_killed_mid_write(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "audit.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys; from blastwall.audit.log import AuditLog\n"
        f"log = AuditLog({str(path)!r})\n"
        "i = 0\nwhile True:\n    log.append(host=f'h{i}', port=1, decision='allow'); i += 1\n")])
    try:
        time.sleep(1.0)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    audit = AuditLog(str(path))  # Reopening repairs an anchor the crash left one row behind.
    ok, message = audit.verify()
    assert ok, message
    assert len(audit.rows()) > 10
    audit.append(host="after-crash", port=1, decision="allow")
    assert audit.verify()[0]
