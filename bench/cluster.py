"""The service on a Ray cluster, side by side with the service on one machine (issue 15).

    .venv/bin/python bench/cluster.py [--runs 10] [--seconds 30]

Needs root, runsc, the default image (`blastwall image build`), Ray and
PostgreSQL's server (Debian's `postgresql`).  Everything runs on this machine,
on loopback: a PostgreSQL started here, Ray clusters of this machine's
processes (three nodes of two `blastwall_slot` each, then one node of six).
Prints:
* latency (medians, p90, interleaved rounds): create -> first command
  (`true`) -> destroy through real HTTP, the local service (SQLite, sandboxes
  in its process) vs `serve --cluster` (PostgreSQL, sandboxes on the nodes'
  agents); a command in a running sandbox, both ways;
* sustained sandboxes per minute (`blastwall.ray.run_batch` of `true`, six at
  once): one node vs three nodes;
* the node agents' memory (PSS), idle and with sandboxes;
* Ray's own `ray.experimental.sandbox` on the same work, or why it cannot run.
Goals: the cluster path adds at most 20% to a create and at most 5 ms to a
warm command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray on loopback only (read when it is imported).


def median_p90(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Service:
    """One `blastwall serve`, its tenant key and an HTTP session."""

    def __init__(self, root: str, env: dict, args: list[str], database: str) -> None:
        import requests

        self.env = dict(env, BLASTWALL_DATABASE=database)
        self.data = os.path.join(root, "data")
        added = subprocess.run([sys.executable, "-m", "blastwall", "tenant", "add", f"bench{_free_port()}",
                                "--max-sessions", "50", "--max-memory", "64G"], env=self.env, capture_output=True,
                               text=True, timeout=60)
        assert added.returncode == 0, added.stderr
        self.key = added.stdout.strip()
        self.port = _free_port()
        self.log = open(os.path.join(root, "serve.log"), "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "blastwall", "serve", "--listen", f"127.0.0.1:{self.port}",
                                      "--data-dir", self.data, "--log-level", "warning", *args], env=self.env,
                                     stdout=self.log, stderr=self.log, start_new_session=True)
        self.base = f"http://127.0.0.1:{self.port}/v1"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {self.key}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.http.get(f"{self.base}/health", timeout=2).ok:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the service did not start; see {self.log.name}")
            time.sleep(0.2)

    def create(self) -> str:
        r = self.http.post(f"{self.base}/sandboxes", json={}, timeout=300)
        r.raise_for_status()
        return r.json()["id"]

    def command(self, sandbox: str) -> None:
        r = self.http.post(f"{self.base}/sandboxes/{sandbox}/commands", json={"cmd": "true"}, timeout=60, stream=True)
        last = None
        for line in r.iter_lines():
            if line:
                last = json.loads(line)
        assert last and last.get("exit_code") == 0, last

    def delete(self, sandbox: str) -> None:
        self.http.delete(f"{self.base}/sandboxes/{sandbox}", timeout=120).raise_for_status()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def ray_cluster(nodes: int, slots: int):
    from ray.cluster_utils import Cluster

    spec = {"num_cpus": 2, "resources": {"blastwall_slot": slots}, "memory": 8 << 30}
    cluster = Cluster(initialize_head=True, head_node_args={**spec, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(**spec)
    cluster.wait_for_nodes()
    return cluster


def sustained(program, seconds: float, concurrency: int) -> float:
    """Sandboxes per minute: create, `true`, destroy, `concurrency` at once, for ``seconds``."""
    from blastwall.ray import run_batch

    done = 0
    start = time.monotonic()
    results = run_batch(["true"] * 100_000, cluster=program, concurrency=concurrency, timeout=60)
    for result in results:
        if result.error is None and result.exit_code == 0:
            done += 1
        if time.monotonic() - start >= seconds:
            break
    results.close()
    return done / (time.monotonic() - start) * 60


def agents_memory() -> list[int]:
    import ray

    from blastwall.ray import cluster

    return [_pss(ray.get(agent.status.remote(), timeout=60)["pid"]) for agent in cluster.agents().values()]


def kill_agents() -> None:
    import ray

    from blastwall.ray import cluster

    for agent in cluster.agents().values():
        try:
            ray.get(agent.close.remote(), timeout=120)
        except Exception:  # noqa: BLE001
            pass
        ray.kill(agent)
    with cluster._lock:
        cluster._agents.clear()


def placement_rate(count: int = 100, workers: int = 8) -> float:
    """Placement groups of one sandbox's bundle booked and released per second (Ray's GCS), ``workers`` at once."""
    import concurrent.futures

    from blastwall.ray import cluster

    def one(i: int) -> None:
        booked = cluster.place(f"bench{i}", cpus=0.01, memory=1 << 20, timeout=30)
        assert booked is not None
        cluster.release(f"bench{i}")

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(count)))
    return count / (time.perf_counter() - start)


def quota_rate(url: str, tenants: int, seconds: float = 5.0, workers: int = 8) -> float:
    """Quota transactions (reserve a sandbox's row under the tenant's lock, then remove it) per second."""
    import threading

    from blastwall.service.ceiling import Ceiling
    from blastwall.service.store import Store

    setup = Store(url)
    names = [f"q{tenants}_{i}" for i in range(tenants)]
    for name in names:
        setup.add_tenant(name, Ceiling.from_dict({"max_sessions": 10_000}), key=False)
    setup.close()
    done = [0] * workers
    deadline = time.monotonic() + seconds

    def work(n: int) -> None:
        store = Store(url)
        i = 0
        while time.monotonic() < deadline:
            sandbox = f"sbx_q{tenants}_{n}_{i}"
            store.reserve_sandbox(sandbox, tenant=names[(n + i) % tenants], workspace="/w", expires=9e9,
                                  memory=1, replica="bench", max_sessions=10_000, max_memory=1 << 40)
            store.remove_sandbox(sandbox)
            i += 1
        done[n] = i
        store.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / seconds


def try_ray_sandbox(runs: int, image_rootfs: str, root: str) -> tuple[list[float], str]:
    """Ray's ray.experimental.sandbox on the same work (create -> `true` -> destroy), or why it cannot."""
    import ray

    try:
        from ray.experimental import sandbox as ray_sandbox
    except ImportError as exc:
        return [], f"ray.experimental.sandbox is not in this Ray: {exc}"
    tarball = os.path.join(root, "image.tar")
    made = subprocess.run(["tar", "-C", image_rootfs, "-cf", tarball, "."], capture_output=True, text=True)
    if made.returncode != 0:
        return [], f"could not make an image tarball: {made.stderr.strip()[:200]}"
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        try:
            handle = ray_sandbox.create(image=tarball, cpu=1, memory="512Mi", timeout_seconds=60)
            result = ray.get(handle.exec.remote(["true"]), timeout=120)
            ray.get(handle.delete.remote(), timeout=120)
            ray.kill(handle)
        except Exception as exc:  # noqa: BLE001 - report why, do not stop the bench
            text = str(exc).strip().splitlines()
            return samples, f"{type(exc).__name__}: {(text[-1] if text else '')[:300]}"
        samples.append((time.perf_counter() - start) * 1000)
        del result
    return samples, ""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30)
    options = parser.parse_args()
    import ray

    from blastwall.service.store import Store
    from blastwall.tiers.container.images import rootfs
    from tests.postgres import Postgres

    try:
        image = rootfs("default", os.environ)
    except Exception as exc:  # noqa: BLE001
        print(f"the default image is not built ({exc}): run `blastwall image build` first")
        return 1
    root = tempfile.mkdtemp(prefix="bw-bench-cluster-")
    os.chmod(root, 0o700)
    env = dict(os.environ, XDG_STATE_HOME=os.path.join(root, "st"))
    postgres = Postgres()
    services, cluster = [], None
    try:
        url = postgres.new_database()
        Store(url, upgrade=True).close()
        cluster = ray_cluster(3, 2)
        ray.init(address=cluster.address, namespace="blastwall", log_to_driver=False, logging_level="error")
        os.makedirs(os.path.join(root, "local"), mode=0o700)
        os.makedirs(os.path.join(root, "ray"), mode=0o700)
        local = Service(os.path.join(root, "local"), env, [], os.path.join(root, "local", "service.sqlite"))
        remote = Service(os.path.join(root, "ray"), env, ["--cluster", cluster.address], url)
        services = [local, remote]
        times = {name: {"create": [], "first": [], "cycle": [], "warm": []} for name in ("local", "cluster")}
        for name, svc in (("local", local), ("cluster", remote)):  # A first round each, not counted.
            sandbox = svc.create()
            svc.command(sandbox)
            svc.delete(sandbox)
        for _ in range(options.runs):
            for name, svc in (("local", local), ("cluster", remote)):
                start = time.perf_counter()
                sandbox = svc.create()
                created = time.perf_counter()
                svc.command(sandbox)
                first = time.perf_counter()
                for _ in range(5):
                    before = time.perf_counter()
                    svc.command(sandbox)
                    times[name]["warm"].append((time.perf_counter() - before) * 1000)
                svc.delete(sandbox)
                end = time.perf_counter()
                times[name]["create"].append((created - start) * 1000)
                times[name]["first"].append((first - start) * 1000)
                times[name]["cycle"].append((end - start) * 1000 - sum(times[name]["warm"][-5:]))
        # Memory with sandboxes (two per agent, idle), then without (every node has its agent by then).
        held = [remote.create() for _ in range(6)]
        busy_agents = agents_memory()
        for sandbox in held:
            remote.delete(sandbox)
        idle_agents = agents_memory()
        for svc in services:
            svc.stop()
        services = []
        kill_agents()
        from blastwall.ray import Cluster

        def program(tag: str) -> Cluster:
            data = os.path.join(root, f"prog-{tag}")
            os.makedirs(data, mode=0o700)
            return Cluster(data_dir=data, environ=env)

        per_minute = {"three nodes (2 slots each)": sustained(program("3"), options.seconds, 6)}
        rates = {"placement groups booked + released per second (8 at once)": placement_rate(),
                 "quota transactions per second, one tenant (8 connections)": quota_rate(url, 1),
                 "quota transactions per second, eight tenants (8 connections)": quota_rate(url, 8)}
        ray_samples, ray_why = try_ray_sandbox(min(options.runs, 5), image, root)
        kill_agents()
        ray.shutdown()
        cluster.shutdown()
        cluster = ray_cluster(1, 6)
        ray.init(address=cluster.address, namespace="blastwall", log_to_driver=False, logging_level="error")
        per_minute["one node (6 slots)"] = sustained(program("1"), options.seconds, 6)
        kill_agents()
    finally:
        for svc in services:
            svc.stop()
        try:
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
        finally:
            postgres.close()
            from blastwall.tiers.container.session import ContainerSession

            ContainerSession.recover(environ=env)
            shutil.rmtree(root, ignore_errors=True)

    print(f"\nblastwall service: local vs --cluster (3 Ray nodes on this machine), {options.runs} interleaved rounds\n")
    print("| latency                                        | local ms (p90)  | cluster ms (p90) | cluster / local |")
    print("|------------------------------------------------|-----------------|------------------|-----------------|")
    rows = (("create (POST /v1/sandboxes)", "create"), ("create -> first command `true`", "first"),
            ("create -> first command -> destroy", "cycle"), ("a command in a running sandbox", "warm"))
    for label, key in rows:
        lm, lp = median_p90(times["local"][key])
        cm, cp = median_p90(times["cluster"][key])
        print(f"| {label:<46} | {lm:7.1f} ({lp:6.1f}) | {cm:8.1f} ({cp:6.1f}) | {cm / lm:14.2f}x |")
    create_ratio = median_p90(times["cluster"]["create"])[0] / median_p90(times["local"]["create"])[0]
    warm_delta = median_p90(times["cluster"]["warm"])[0] - median_p90(times["local"]["warm"])[0]
    print("\n| sustained sandboxes per minute (create, `true`, destroy; 6 at once) | per minute |")
    print("|---------------------------------------------------------------------|------------|")
    for label, value in per_minute.items():
        print(f"| {label:<67} | {value:10.0f} |")
    print("\n| capacity inputs (this machine, loopback)                          | per second |")
    print("|-------------------------------------------------------------------|------------|")
    for label, value in rates.items():
        print(f"| {label:<65} | {value:10.0f} |")
    mib = 1 << 20
    print(f"\nnode agent memory (PSS): idle {statistics.median(idle_agents) / mib:.1f} MiB each "
          f"({len(idle_agents)} agents); with two idle sandboxes each {statistics.median(busy_agents) / mib:.1f} MiB")
    if ray_samples:
        m, p = median_p90(ray_samples)
        print(f"ray.experimental.sandbox create -> `true` -> destroy: {m:.1f} ms median ({p:.1f} p90), "
              f"{len(ray_samples)} runs" + (f"; then: {ray_why}" if ray_why else ""))
    else:
        print(f"ray.experimental.sandbox could not run here: {ray_why}")
    print(f"\ngoals: a create through the cluster within 1.2x of local: "
          f"{'met' if create_ratio <= 1.2 else 'NOT met'} ({create_ratio:.2f}x); "
          f"a warm command at most 5 ms more: {'met' if warm_delta <= 5 else 'NOT met'} ({warm_delta:+.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
