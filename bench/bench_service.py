"""Warm-pool latency through a real `blastwall serve` (used by bench/container.py).

Starts the service on a free loopback port with its own data directory and a
warm pool, adds a tenant with the CLI, then measures POST /v1/sandboxes (served
from the pool) -> POST .../commands {"cmd": "true"} -> the final NDJSON line,
over HTTP with `requests`.  The DELETE after each round is not counted; the
pool refills between rounds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARM = 2


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("blastwall")
    return [str(script)] if script.exists() else [sys.executable, "-m", "blastwall"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(runs: int) -> tuple[list[float], str]:
    import requests

    data = tempfile.mkdtemp(prefix="bw-bench-service-")
    db = os.path.join(data, "service.db")
    env = dict(os.environ, XDG_STATE_HOME=os.path.join(data, "state"))
    added = subprocess.run([*_cli(), "tenant", "add", "bench", "--db", db, "--max-sessions", "20"],
                           capture_output=True, text=True, env=env, timeout=60)
    if added.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        return [], f"tenant add failed: {added.stderr.strip()[:200]}"
    key = added.stdout.strip().splitlines()[-1]
    port = _free_port()
    server = subprocess.Popen([*_cli(), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data, "--db", db,
                               "--warm", str(WARM), "--log-level", "warning"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    headers = {"Authorization": f"Bearer {key}"}
    http = requests.Session()
    samples: list[float] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if http.get(f"{base}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                return [], "the service did not start"
            time.sleep(0.1)
        for _ in range(runs + 1):
            _wait_pool(http, base, headers)
            start = time.perf_counter()
            created = http.post(f"{base}/sandboxes", json={}, headers=headers, timeout=60)
            created.raise_for_status()
            sandbox = created.json()["id"]
            result = http.post(f"{base}/sandboxes/{sandbox}/commands", json={"cmd": "true"}, headers=headers,
                               timeout=60, stream=True)
            last = None
            for line in result.iter_lines():
                if line:
                    last = json.loads(line)
            elapsed = time.perf_counter() - start
            if not last or last.get("exit_code") != 0:
                return [], f"the command failed: {last}"
            samples.append(elapsed)
            http.delete(f"{base}/sandboxes/{sandbox}", headers=headers, timeout=60)
        return samples[1:], ""  # The first round warms the HTTP connection.
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        shutil.rmtree(data, ignore_errors=True)


def _wait_pool(http, base: str, headers: dict) -> None:
    """Give the pool time to refill (the service says how many are warm when it can)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        health = http.get(f"{base}/health", headers=headers, timeout=5).json()
        if health.get("warm", WARM) >= 1:
            time.sleep(0.2)
            return
        time.sleep(0.1)
