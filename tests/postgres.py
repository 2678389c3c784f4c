"""A real PostgreSQL server for the tests: Debian's binaries, our own cluster in a temporary directory.

It runs as ``nobody`` (PostgreSQL refuses root), listens on a unix socket in
its own directory only (no TCP port), and asks for a password (scram), so
that a URL with a password in it is what the service really gets.  Each test
takes a fresh database of its own (``Postgres.new_database``).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid

__all__ = ["Postgres", "postgres_binaries", "sandbox_rows"]


def sandbox_rows(target: str) -> list[dict]:
    """The service's sandbox rows in the database at ``target``, read by a connection of its own."""
    from blastwall.service.store import Store

    store = Store(target)
    try:
        return store.sandbox_rows()
    finally:
        store.close()


def postgres_binaries() -> str | None:
    """The directory of the newest installed PostgreSQL's initdb/pg_ctl (Debian: postgresql-NN), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(found[-1]) if found else None


class Postgres:
    USER = "blastwall"

    def __init__(self) -> None:
        self.bin = postgres_binaries()
        assert self.bin is not None
        self.owner = pwd.getpwnam("nobody")
        # Under /tmp itself: pytest's own temporary directories are root's alone (0700).
        self.root = tempfile.mkdtemp(prefix="blastwall-pg-", dir="/tmp")
        os.chown(self.root, self.owner.pw_uid, self.owner.pw_gid)
        self.data = os.path.join(self.root, "data")
        self.socket_dir = os.path.join(self.root, "sock")
        self.log = os.path.join(self.root, "server.log")
        self.password = secrets.token_urlsafe(18)
        os.mkdir(self.socket_dir, 0o700)
        os.chown(self.socket_dir, self.owner.pw_uid, self.owner.pw_gid)
        pwfile = os.path.join(self.root, "pw")
        with open(os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(self.password + "\n")
        os.chown(pwfile, self.owner.pw_uid, self.owner.pw_gid)
        self._as_owner([f"{self.bin}/initdb", "-D", self.data, "-U", self.USER, "--auth=scram-sha-256",
                        f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"], timeout=120)
        os.unlink(pwfile)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"listen_addresses = ''\nunix_socket_directories = '{self.socket_dir}'\n"
                    "fsync = off\nmax_connections = 60\nshared_buffers = 32MB\n")
        self.start()

    def _as_owner(self, argv: list[str], *, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["runuser", "-u", self.owner.pw_name, "--", *argv], capture_output=True, text=True,
                           timeout=timeout, cwd="/")
        if check:
            assert r.returncode == 0, (argv, r.stdout[-2000:], r.stderr[-2000:])
        return r

    def start(self) -> None:
        self._as_owner([f"{self.bin}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start"], timeout=90)

    def stop(self) -> None:
        self._as_owner([f"{self.bin}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop"], timeout=90,
                       check=False)

    def running(self) -> bool:
        return self._as_owner([f"{self.bin}/pg_ctl", "-D", self.data, "status"], timeout=30, check=False).returncode == 0

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql://{self.USER}:{secret}@/{database}?host={self.socket_dir}"

    def new_database(self) -> str:
        """A fresh, empty database: its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def wait_running(self, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while not self.running():
            assert time.time() < deadline, open(self.log).read()[-2000:]
            time.sleep(0.2)
