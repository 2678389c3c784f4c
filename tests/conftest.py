"""Shared fixtures: a fake home with planted secrets, a workspace, and a runner.

Every fixture directory lives under ``~/.cache/blastwall-tests`` (or
``$BLASTWALL_TEST_TMP``), never under /tmp: the sandbox has a private /tmp, so
a secret planted there would be invisible for the wrong reason and a test
reading it could not fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

BASE = Path(os.environ.get("BLASTWALL_TEST_TMP") or Path.home() / ".cache" / "blastwall-tests").resolve()
if any(BASE == Path(p) or Path(p) in BASE.parents for p in ("/tmp", "/var/tmp", "/dev/shm", "/run")):
    raise SystemExit(f"tests: {BASE} is on a path the sandbox replaces with a private tmpfs; "
                     "set BLASTWALL_TEST_TMP to a directory elsewhere")

SECRET = "AKIA-BLASTWALL-TEST-SECRET-0123456789"


def _machine_has_bwrap() -> str | None:
    for path in ("/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap"):
        if os.access(path, os.X_OK):
            return path
    return None


BWRAP = _machine_has_bwrap()
needs_bwrap = pytest.mark.skipif(BWRAP is None, reason="bubblewrap is not installed on this machine")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to set up the attack scenario")


@pytest.fixture
def scratch():
    BASE.mkdir(parents=True, exist_ok=True)
    path = BASE / uuid.uuid4().hex[:12]
    path.mkdir()
    os.chmod(path, 0o755)
    yield path
    subprocess.run(["chmod", "-R", "u+rwX", str(path)], check=False)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def home(scratch):
    """A fake home directory with credentials planted the way a real one has them."""
    h = scratch / "home"
    (h / ".aws").mkdir(parents=True)
    (h / ".aws" / "credentials").write_text(f"[default]\naws_secret_access_key = {SECRET}\n")
    (h / ".ssh").mkdir()
    (h / ".ssh" / "id_ed25519").write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{SECRET}\n")
    (h / ".netrc").write_text(f"machine example.com login me password {SECRET}\n")
    (h / ".bashrc").write_text("# the user's real bashrc\n")
    (h / "notes.txt").write_text("an ordinary readable file\n")
    return h


@pytest.fixture
def workspace(scratch):
    w = scratch / "ws"
    w.mkdir()
    (w / "README.md").write_text("project\n")
    return w


def bw_env(home: Path, extra: dict | None = None) -> dict:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "XDG_CACHE_HOME": str(home / ".cache"),
    }
    if extra:
        env.update(extra)
    return env


def blastwall(args, *, home: Path, cwd: Path, env: dict | None = None, input: str | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real ``blastwall`` command line (``python -m blastwall``)."""
    return subprocess.run(
        [sys.executable, "-m", "blastwall", *args],
        cwd=cwd, env=bw_env(home, env), input=input, capture_output=True, text=True, timeout=timeout,
    )


def in_sandbox(script: str, *, home: Path, cwd: Path, args=(), env=None, timeout: float = 60):
    """Run a Python ``script`` inside ``blastwall run``."""
    return blastwall(["run", *args, "--", sys.executable, "-c", script], home=home, cwd=cwd, env=env,
                     timeout=timeout)


def assert_no_traceback(result) -> None:
    assert "Traceback" not in result.stderr, result.stderr


# --- the egress gateway, for tests that grant network access -----------------------------------

@pytest.fixture(scope="module")
def gw_state():
    """One gateway for the module: its state directory, killed at the end."""
    BASE.mkdir(parents=True, exist_ok=True)
    state = BASE / f"gateway-{os.getpid()}"
    state.mkdir(exist_ok=True)
    yield state
    kill_gateway(state)
    shutil.rmtree(state, ignore_errors=True)


def gateway_pid(state) -> int | None:
    from blastwall.egress.client import call

    path = state / "blastwall" / "gateway" / "control.sock"
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            return int(call(s, "ping", [])["pid"][0])
    except OSError:
        return None


def kill_gateway(state) -> None:
    pid = gateway_pid(state)
    if pid:
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL server for the session (Debian's binaries, run by the tests themselves)."""
    from tests.postgres import Postgres, postgres_binaries

    if postgres_binaries() is None:
        pytest.skip(reason="PostgreSQL's server is not installed (Debian package postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip(reason="psycopg is not installed (pip install .[postgres])")
    server = Postgres()
    yield server
    server.close()


@pytest.fixture
def database(postgres):
    """A fresh PostgreSQL database with the service's schema: its URL."""
    from blastwall.service.store import Store

    url = postgres.new_database()
    Store(url, upgrade=True).close()
    return url


@pytest.fixture(scope="session")
def image_cache():
    """The default container image, built once per test session with `blastwall image build`; its cache dir."""
    cache = BASE / f"images-{os.getpid()}"
    cache.mkdir(parents=True, exist_ok=True)
    env = {"XDG_CACHE_HOME": str(cache)}
    home = BASE / f"image-home-{os.getpid()}"
    home.mkdir(exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "blastwall", "image", "build"], env=bw_env(home, env),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "built default" in r.stdout
    yield cache
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)


def tier_missing(tier: str) -> str | None:
    """Why this machine cannot run ``tier`` (None: it can)."""
    if BWRAP is None:
        return "bubblewrap is not installed"
    if tier == "process":
        return None
    if os.geteuid() != 0:
        return f"the {tier} tier needs root on this machine"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (it builds the image)"
    if tier == "container":
        return None if shutil.which("runsc", path="/usr/bin:/usr/local/bin:/usr/sbin") else "gVisor's runsc is not installed"
    if not any(os.access(p, os.X_OK) for p in ("/usr/bin/qemu-system-x86_64", "/usr/local/bin/qemu-system-x86_64")):
        return "QEMU is not installed (apt-get install qemu-system-x86)"
    if not any(n.startswith("vmlinuz-") for n in (os.listdir("/boot") if os.path.isdir("/boot") else [])):
        return "no packaged guest kernel in /boot (apt-get install linux-image-amd64)"
    if not any(os.access(p, os.X_OK) for p in ("/bin/busybox", "/usr/bin/busybox")):
        return "busybox is not installed (apt-get install busybox-static)"
    if shutil.which("mkfs.erofs", path="/usr/bin:/usr/sbin:/sbin") is None:
        return "mkfs.erofs is not installed (apt-get install erofs-utils)"
    return None
