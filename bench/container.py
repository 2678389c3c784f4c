"""The container tier's costs, side by side with bare gVisor (issue 6).

    .venv/bin/python bench/container.py [--runs 15] [--sessions 5] [--seconds 30]

Needs root, runsc and the default image (`blastwall image build`).  Prints:
* latency (medians, p90; interleaved rounds so noise hits all alike):
  - bare `runsc do true` (ptrace platform, no network): the comparison;
  - a one-shot `blastwall run --tier container -- true`, in-process (api.run)
    and through the CLI;
  - a session: create -> first command (`true`) -> destroy, in-process;
  - the same with network (its namespace, firewall and gateway session);
  - a command in an already running session (what a warm pool serves);
  - the same through the HTTP service from its warm pool, when `blastwall
    serve` is installed (create from the pool -> first command -> response);
* memory per idle session (PSS of every host process of the sandbox, and its
  memory cgroup's usage);
* sessions per minute, sustained with two workers (create, run, destroy).
Goals: a session's create->first command->destroy within 1.3x of bare
runsc; under 50 ms to the first command from the warm pool.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))


def median_p90(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]


def session_factory(workdir: str, *, network: bool):
    from blastwall import api
    from blastwall.policy.model import parse_layer
    from blastwall.tiers.container.session import ContainerSession

    doc: dict = {"sandbox": {"tier": "container"}}
    if network:
        doc["network"] = {"allow": ["example.com"]}
    policy = api.load(None, flags=parse_layer(doc, "bench"), workspace=workdir)
    plan = api.plan_for(policy, workspace=workdir, cwd=workdir)

    def make():
        return ContainerSession(plan, workspace=workdir)

    return make


def run_true(session) -> int:
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        process = session.exec(["true"], stdin=devnull, stdout=devnull, stderr=devnull)
    finally:
        os.close(devnull)
    status = process.wait()
    process.release()
    return status


def cycle(make) -> None:
    session = make()
    try:
        session.boot()
        if run_true(session) != 0:
            raise RuntimeError("`true` failed in the session")
    finally:
        session.close()


def sandbox_pss(session) -> tuple[int, int]:
    """(PSS of the sandbox's host processes, memory cgroup usage) in bytes."""
    cgroup = f"/sys/fs/cgroup/memory/blastwall/{session.id}"
    pids: set[int] = set()
    try:
        with open(f"{cgroup}/cgroup.procs") as f:
            pids = {int(line) for line in f if line.strip()}
        with open(f"{cgroup}/memory.usage_in_bytes") as f:
            usage = int(f.read())
    except OSError:
        usage = 0
    if session._runner:
        pids.add(session._runner)
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total, usage


def http_warm_pool(runs: int) -> tuple[list[float], str]:
    """Latency of create (from the warm pool) -> first command, through `blastwall serve`; or why not."""
    try:
        import requests  # noqa: F401

        import blastwall.service  # noqa: F401
    except ImportError as exc:
        return [], f"the service is not installed ({exc.name})"
    from bench_service import measure  # bench/bench_service.py, kept apart: it needs the service's extras

    return measure(runs)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/container.py: needs root (runsc and network namespaces)", file=sys.stderr)
        return 2
    from blastwall import api
    from blastwall.policy.model import parse_layer
    from blastwall.tiers.container import find_runsc

    runsc = find_runsc()
    work = tempfile.mkdtemp(prefix="bw-bench-")
    os.chown(work, 1000, 1000)
    make = session_factory(work, network=False)
    make_net = session_factory(work, network=True)
    one_shot_policy = api.load(None, flags=parse_layer({"sandbox": {"tier": "container"}}, "bench"), workspace=work)
    cli = [str(Path(sys.executable).with_name("blastwall"))]
    if not os.path.exists(cli[0]):
        cli = [sys.executable, "-m", "blastwall"]
    null = subprocess.DEVNULL

    def bare():
        subprocess.run([runsc, "--platform=ptrace", "--network=none", "do", "true"], stdout=null, stderr=null,
                       check=True, cwd=work)

    def one_shot():
        if api.run(["true"], policy=one_shot_policy, workspace=work, cwd=work, stdin=0, stdout=1, stderr=2) != 0:
            raise RuntimeError("one-shot run failed")

    def one_shot_cli():
        subprocess.run([*cli, "run", "--tier", "container", "--", "true"], cwd=work, stdout=null, stderr=null,
                       check=True)

    warm = make()
    warm.boot()
    cases = [("bare runsc do true", bare), ("one-shot run, in-process", one_shot),
             ("one-shot run, CLI", one_shot_cli), ("session create+true+destroy", lambda: cycle(make)),
             ("  ... with network", lambda: cycle(make_net)), ("command in a running session", lambda: run_true(warm))]
    for _, fn in cases:  # Warm caches (image pages, gateway) once, unmeasured.
        fn()
    samples: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(args.runs):
        for name, fn in cases:
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    warm.close()
    pool_samples, pool_note = http_warm_pool(args.runs)
    if pool_samples:
        samples["service: warm-pool create+first command"] = pool_samples

    base, _ = median_p90(samples["bare runsc do true"])
    print(f"{'latency':44} {'median ms':>10} {'p90 ms':>8} {'x bare':>7}")
    for name, values in samples.items():
        med, p90 = median_p90(values)
        print(f"{name:44} {med * 1000:10.1f} {p90 * 1000:8.1f} {med / base:7.2f}")
    if pool_note:
        print(f"(service warm pool not measured: {pool_note})")

    idle = [make() for _ in range(args.sessions)]
    try:
        for session in idle:
            session.boot()
        time.sleep(2.0)
        measured = [sandbox_pss(session) for session in idle]
    finally:
        for session in idle:
            session.close()
    pss = statistics.median(m[0] for m in measured)
    usage = statistics.median(m[1] for m in measured)
    print(f"\nmemory per idle session ({args.sessions} sessions): PSS {pss / 2**20:.1f} MiB, "
          f"cgroup usage {usage / 2**20:.1f} MiB (median)")

    done = [0]
    stop = time.monotonic() + args.seconds
    errors: list[BaseException] = []

    def worker():
        while time.monotonic() < stop:
            try:
                cycle(make)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return
            done[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(2)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    print(f"sessions per minute (2 workers, {elapsed:.0f} s): {done[0] * 60 / elapsed:.0f}"
          + (f"  [{len(errors)} worker error(s): {errors[0]!r}]" if errors else ""))
    os.rmdir(work) if not os.listdir(work) else None
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
