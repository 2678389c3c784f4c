"""A real `blastwall serve` (uvicorn, real HTTP on a free loopback port) over real gVisor sandboxes.

``service`` starts one per test module, in its own state, data and audit
directories so that what it leaves on the host can be checked: container state
directories, workspaces, network namespaces, cgroups, runsc processes.
Tenants are added straight into the service's database (the CLI path has its
own test).
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

from tests.conftest import BASE, bw_env

RUNSC = shutil.which("runsc", path="/usr/bin:/usr/local/bin:/usr/sbin")

try:
    import fastapi  # noqa: F401
    import requests
    import uvicorn  # noqa: F401
    HAVE_SERVICE_DEPS = True
except ImportError:
    HAVE_SERVICE_DEPS = False

needs_service_deps = pytest.mark.skipif(not HAVE_SERVICE_DEPS,
                                        reason="fastapi/uvicorn/requests are not installed (pip install .[service])")
needs_gvisor = [
    needs_service_deps,
    pytest.mark.skipif(RUNSC is None, reason="gVisor's runsc is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the container tier needs root on this machine"),
]


@pytest.fixture(scope="session")
def service_images(request):
    """An image cache with the default image: the suite's shared one if there is one, else our own build."""
    try:
        return request.getfixturevalue("image_cache")
    except pytest.FixtureLookupError:
        pass
    if shutil.which("mmdebstrap") is None:
        pytest.skip(reason="mmdebstrap is not installed (needed to build the container image)")
    cache = BASE / f"service-images-{os.getpid()}"
    cache.mkdir(parents=True, exist_ok=True)
    home = BASE / f"service-image-home-{os.getpid()}"
    home.mkdir(exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "blastwall", "image", "build"],
                       env=bw_env(home, {"XDG_CACHE_HOME": str(cache)}), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    request.addfinalizer(lambda: (shutil.rmtree(cache, ignore_errors=True), shutil.rmtree(home, ignore_errors=True)))
    return cache


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """One `blastwall serve` process and everything it owns on the host."""

    def __init__(self, root: Path, images: Path, *, args=(), database: str | None = None) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.data = root / "data"
        self.db = self.data / "service.sqlite"
        # A shared database (PostgreSQL) goes to serve through the environment: no password in argv.
        self.database = database or str(self.db)
        self.audit_db = root / "audit.sqlite"
        self.state = root / "st"  # Short: the gateway's unix socket paths live under it.
        # BLASTWALL_DEBUG: `kill -USR1` dumps the service's threads into its log (see wait_clean).
        self.env = bw_env(self.home, {"XDG_CACHE_HOME": str(images), "XDG_STATE_HOME": str(self.state),
                                      "BLASTWALL_AUDIT_DB": str(self.audit_db), "BLASTWALL_DEBUG": "1"})
        if database is not None:
            self.env["BLASTWALL_DATABASE"] = database
        self.args = list(args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = root / "service.log"

    # -- process ------------------------------------------------------------------------------
    def start(self, *, extra=()) -> None:
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "blastwall", "serve", "--listen", f"127.0.0.1:{self.port}",
             "--data-dir", str(self.data), *self.args, *extra],
            env=self.env, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the service exited {self.proc.returncode}:\n{self.read_log()}")
            try:
                if requests.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the service did not answer in 30 s:\n{self.read_log()}")

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: nothing gets to clean up."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def read_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    # -- tenants ------------------------------------------------------------------------------
    def tenant(self, name: str | None = None, *, expires: float | None = None, **ceiling) -> str:
        """A new tenant; its API key."""
        from blastwall.service.ceiling import Ceiling
        from blastwall.service.store import Store

        store = Store(self.database)
        try:
            _key_id, key = store.add_tenant(name or f"t{uuid.uuid4().hex[:8]}", Ceiling.from_dict(ceiling),
                                            expires=expires)
        finally:
            store.close()
        return key

    def revoke(self, target: str) -> None:
        from blastwall.service.store import Store

        store = Store(self.database)
        try:
            store.revoke(target)
        finally:
            store.close()

    # -- HTTP ---------------------------------------------------------------------------------
    def call(self, method: str, path: str, key: str | None = None, **kwargs):
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        kwargs.setdefault("timeout", 120)
        return requests.request(method, self.url + path, headers=headers, **kwargs)

    def create(self, key: str, **body) -> dict:
        r = self.call("POST", "/v1/sandboxes", key, json=body)
        assert r.status_code == 201, (r.status_code, r.text, self.read_log())
        return r.json()

    def run(self, key: str, sandbox_id: str, cmd, **body) -> tuple[str, str, int]:
        """Run a streamed command: (stdout, stderr, exit code)."""
        import json

        r = self.call("POST", f"/v1/sandboxes/{sandbox_id}/commands", key, json={"cmd": cmd, **body}, stream=True)
        assert r.status_code == 200, (r.status_code, r.text)
        out, err, code = [], [], None
        for line in r.iter_lines():
            event = json.loads(line)
            out.append(event.get("stdout", ""))
            err.append(event.get("stderr", ""))
            if "exit_code" in event:
                code = event["exit_code"]
        return "".join(out), "".join(err), code

    # -- what is on the host ---------------------------------------------------------------------
    def workspace(self, sandbox_id: str) -> Path:
        return self.data / "sandboxes" / sandbox_id

    def containers(self) -> list[str]:
        try:
            return sorted(os.listdir(self.state / "blastwall" / "containers"))
        except FileNotFoundError:
            return []

    def processes(self, program: bytes) -> dict[int, str]:
        """{pid: command line} of this service's processes whose command line names ``program``."""
        out = {}
        needle = str(self.state).encode()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if needle in cmdline and program in cmdline:
                out[int(pid)] = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
        return out

    def runsc_processes(self) -> list[str]:
        return list(self.processes(b"runsc").values())

    def leftovers(self, containers=(), sandboxes=None) -> dict:
        """What is still on the host of these containers and sandboxes (all of this service's when None/empty)."""
        found = {}
        workspaces = sorted(os.listdir(self.data / "sandboxes")) if (self.data / "sandboxes").exists() else []
        if sandboxes is not None:
            workspaces = [w for w in workspaces if w in sandboxes]
        if workspaces:
            found["workspaces"] = workspaces
        states = [c for c in self.containers() if not containers or c in containers]
        if states:
            found["container state"] = states
        processes = [p for p in self.runsc_processes() if not containers or any(c in p for c in containers)]
        if processes:
            found["runsc processes"] = processes
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        cgroups = []
        for cid in containers:
            if cid in netns:
                found.setdefault("network namespaces", []).append(cid)
            for base in [*Path("/sys/fs/cgroup").glob("blastwall"), *Path("/sys/fs/cgroup").glob("*/blastwall")]:
                if (base / cid).exists():
                    cgroups.append(str(base / cid))
        if cgroups:
            found["cgroups"] = cgroups
        return found

    def wait_clean(self, containers=(), sandboxes=None, timeout: float = 15) -> dict:
        deadline = time.time() + timeout
        while True:
            found = self.leftovers(containers, sandboxes)
            if not found:
                return found
            if time.time() > deadline:
                if self.proc is not None and self.proc.poll() is None:
                    self.proc.send_signal(signal.SIGUSR1)  # Where is it stuck?  (In the log.)
                    time.sleep(0.5)
                return found
            time.sleep(0.2)

    def audit_rows(self) -> list[dict]:
        from blastwall.audit.log import AuditLog

        log = AuditLog(str(self.audit_db))
        try:
            return log.rows()
        finally:
            log.close()


def make_service(images: Path, *, args=(), database: str | None = None) -> Service:
    BASE.mkdir(parents=True, exist_ok=True)
    root = BASE / f"s-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    return Service(root, images, args=args, database=database)


def destroy_service(svc: Service) -> None:
    svc.stop()
    shutil.rmtree(svc.root, ignore_errors=True)


@pytest.fixture(scope="module")
def service(service_images, request):
    """One service for the module; a module's ``SERVICE_ARGS`` are added to `blastwall serve`."""
    svc = make_service(service_images, args=getattr(request.module, "SERVICE_ARGS", ()))
    svc.start()
    yield svc
    destroy_service(svc)


def container_ids(svc: Service, before=()) -> list[str]:
    return [c for c in svc.containers() if c not in before]


def requires_gvisor(test):
    """``needs_gvisor`` as a decorator, for modules where only some tests need the container tier."""
    for mark in needs_gvisor:
        test = mark(test)
    return test
