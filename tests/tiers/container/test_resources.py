"""[resources] on the container tier, with real gVisor: bombs stay inside their limits, the host stays usable.

Every limit is read on the host, in the sandbox's own cgroup (``/blastwall/ID``
in each hierarchy), while the sandbox runs; every loop and wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import blastwall, bw_env

RUNSC = shutil.which("runsc", path="/usr/bin:/usr/local/bin:/usr/sbin")
pytestmark = [
    pytest.mark.skipif(RUNSC is None, reason="gVisor's runsc is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the container tier needs root on this machine"),
    pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="mmdebstrap is not installed"),
    pytest.mark.skipif(not os.path.isdir("/sys/fs/cgroup"), reason="this machine has no cgroup filesystem"),
]

MiB = 1024 * 1024


def cgroup_dirs(sandbox_id: str) -> list[str]:
    from blastwall.tiers.container._raw_cgroups import hierarchies

    return [top + f"/blastwall/{sandbox_id}" for top in hierarchies()
            if os.path.isdir(top + f"/blastwall/{sandbox_id}")]


def read(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def host_latency() -> float:
    """Seconds the host takes to start and reap /bin/true: a responsive host answers in milliseconds."""
    start = time.monotonic()
    subprocess.run(["/bin/true"], check=True, timeout=30)
    return time.monotonic() - start


class Run:
    """``blastwall run --tier container --policy FILE -- CMD`` in the background, observed from the host."""

    def __init__(self, policy: str, command: list[str], *, home, workspace, image_cache, scratch):
        path = scratch / f"policy-{uuid.uuid4().hex[:8]}.toml"
        path.write_text(policy)
        self.state = home / ".local" / "state" / "blastwall" / "containers"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "blastwall", "run", "--tier", "container", "--policy", str(path), "--", *command],
            cwd=workspace, env=bw_env(home, {"XDG_CACHE_HOME": str(image_cache)}), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.id: str | None = None

    def wait_for_cgroup(self, timeout: float = 30) -> str:
        """The sandbox's id, once its cgroup exists on the host."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            for name in os.listdir(self.state) if self.state.is_dir() else []:
                if cgroup_dirs(name):
                    self.id = name
                    return name
            time.sleep(0.01)
        raise AssertionError(f"no cgroup appeared; exit {self.proc.poll()}: {self.finish()[2][-2000:]}")

    def cgroup(self, controller: str, filename: str) -> int | None:
        return read(f"/sys/fs/cgroup/{controller}/blastwall/{self.id}/{filename}")

    def running(self) -> bool:
        return self.proc.poll() is None

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, out, err


def sandbox_processes(state) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if str(state).encode() in f.read():
                        found.append(pid)
            except OSError:
                pass
    return found


def assert_gone(run: Run) -> None:
    """Nothing of the sandbox is left on the host: no process, no cgroup, no state."""
    deadline = time.monotonic() + 10
    while (sandbox_processes(run.state) or cgroup_dirs(run.id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes(run.state) == []
    assert cgroup_dirs(run.id) == []
    assert not (run.state / run.id).exists()


MEMORY_BOMB = r"""
import time
chunks = []
for i in range(256):  # 256 x 4 MiB = 1 GiB, every page touched
    chunk = bytearray(4 << 20)
    for j in range(0, len(chunk), 4096):
        chunk[j] = 1
    chunks.append(chunk)
    print(4 * (i + 1), "MiB", flush=True)
    time.sleep(0.005)
print("allocated 1 GiB", flush=True)
"""


def test_memory_bomb_is_killed_at_its_limit_and_the_host_stays_responsive(home, workspace, image_cache, scratch):
    run = Run('[resources]\nmemory = "128M"\n', ["python3", "-c", MEMORY_BOMB], home=home, workspace=workspace,
              image_cache=image_cache, scratch=scratch)
    run.wait_for_cgroup()
    limit = run.cgroup("memory", "memory.limit_in_bytes")
    assert limit == 128 * MiB
    assert run.cgroup("memory", "memory.memsw.limit_in_bytes") in (128 * MiB, None)  # None: no swap accounting
    peak, latencies = 0, []
    deadline = time.monotonic() + 30
    while run.running() and time.monotonic() < deadline:
        peak = max(peak, run.cgroup("memory", "memory.max_usage_in_bytes") or 0)
        if len(latencies) < 50:
            latencies.append(host_latency())
        time.sleep(0.005)
    status, out, err = run.finish()
    assert status != 0, out[-500:]
    assert "allocated 1 GiB" not in out
    # It pushed against the limit and did not get past it: the kernel may force-charge a dying task a
    # few pages beyond the limit (seen: one page), never the gigabyte the bomb asked for.
    assert 64 * MiB < peak <= limit + 2 * MiB, peak - limit
    assert max(latencies) < 1.0, latencies
    assert "Traceback" not in err
    assert_gone(run)


FORK_BOMB = r"""
import os, time
deadline = time.monotonic() + 3
monitor = os.fork()
if monitor == 0:  # Counts the sandbox's processes (gVisor's /proc) while the bomb goes off.
    most = 0
    while time.monotonic() < deadline + 0.5:
        most = max(most, sum(name.isdigit() for name in os.listdir("/proc")))
        time.sleep(0.005)
    print("most processes", most, flush=True)
    os._exit(0)
forked = refused = 0
root = os.getpid()
while time.monotonic() < deadline:  # Every child forks too, until refused.
    try:
        if os.fork() == 0:
            forked, refused = 0, 0
            continue
        forked += 1
    except BlockingIOError:
        refused += 1
        time.sleep(0.01)
if os.getpid() != root:
    os._exit(0)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
print("forked", forked, "refused", refused, flush=True)
"""


def test_fork_bomb_cannot_pass_its_pids_limit_and_the_host_stays_responsive(home, workspace, image_cache, scratch):
    from blastwall.tiers.container._raw_cgroups import host_pids

    run = Run('[resources]\npids = 64\ntimeout = "30s"\n', ["python3", "-c", FORK_BOMB], home=home,
              workspace=workspace, image_cache=image_cache, scratch=scratch)
    run.wait_for_cgroup()
    host_max = run.cgroup("pids", "pids.max")
    assert host_max == host_pids(64)  # The host's backstop for gVisor's own threads and stubs.
    latencies = []
    deadline = time.monotonic() + 30
    while run.running() and time.monotonic() < deadline:
        current = run.cgroup("pids", "pids.current")
        assert current is None or current <= host_max
        if len(latencies) < 50:
            latencies.append(host_latency())
        time.sleep(0.02)
    status, out, err = run.finish()
    assert status == 0, err[-2000:]  # The bomb was refused, the sandbox itself carried on.
    most = int(out.split("most processes ")[1].split()[0])
    refused = int(out.split("refused ")[1].split()[0])
    assert refused > 0  # fork() failed with EAGAIN, as under a Linux pids.max.
    assert 8 < most <= 64, out
    assert max(latencies) < 1.0, latencies
    assert_gone(run)


CPU_BURN = r"""
import os, time
end = time.monotonic() + 4
if os.fork() == 0:
    pass  # Two busy processes: more than the quota allows, on any number of CPUs.
while time.monotonic() < end:
    pass
"""


def test_cpus_sets_the_quota_and_throttles(home, workspace, image_cache, scratch):
    run = Run('[resources]\ncpus = 0.5\n', ["python3", "-c", CPU_BURN], home=home, workspace=workspace,
              image_cache=image_cache, scratch=scratch)
    run.wait_for_cgroup()
    # One controller's directory can appear before the cpu controller's is written: wait for it, bounded.
    deadline = time.monotonic() + 10
    quota = (None, None)
    while time.monotonic() < deadline and quota != (50000, 100000):
        quota = (run.cgroup("cpu", "cpu.cfs_quota_us"), run.cgroup("cpu", "cpu.cfs_period_us"))
        time.sleep(0.05)
    assert quota == (50000, 100000)
    time.sleep(1)  # Past start-up.
    used0, wall0 = run.cgroup("cpuacct", "cpuacct.usage"), time.monotonic()
    time.sleep(2)
    used1, wall1 = run.cgroup("cpuacct", "cpuacct.usage"), time.monotonic()
    status, _, err = run.finish()
    assert status == 0, err[-2000:]
    if used0 is None or used1 is None:
        pytest.skip(reason="no cpuacct controller to measure CPU time with")
    share = (used1 - used0) / 1e9 / (wall1 - wall0)
    assert 0.2 < share < 0.65, share  # Half a CPU, give or take the scheduler.
    assert_gone(run)


def test_timeout_kills_the_sandbox_with_124(home, workspace, image_cache, scratch):
    start = time.monotonic()
    run = Run('[resources]\ntimeout = "2s"\n', ["sleep", "30"], home=home, workspace=workspace,
              image_cache=image_cache, scratch=scratch)
    run.wait_for_cgroup()
    status, out, err = run.finish()
    assert status == 124, err
    assert "ran longer than its [resources] timeout of 2s" in err
    assert time.monotonic() - start < 15
    assert_gone(run)


def test_cgroups_of_a_killed_run_are_reaped_by_the_next_run(home, workspace, image_cache, scratch):
    run = Run('[resources]\nmemory = "256M"\npids = 128\n', ["sleep", "1000"], home=home, workspace=workspace,
              image_cache=image_cache, scratch=scratch)
    sandbox_id = run.wait_for_cgroup()
    run.proc.send_signal(signal.SIGKILL)
    run.finish(timeout=10)
    deadline = time.monotonic() + 10
    while sandbox_processes(run.state) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes(run.state) == []  # runsc and gVisor died with blastwall ...
    r = blastwall(["run", "--tier", "container", "--", "true"], home=home, cwd=workspace,
                  env={"XDG_CACHE_HOME": str(image_cache)})
    assert r.returncode == 0, r.stderr
    assert cgroup_dirs(sandbox_id) == []  # ... and the next run's reaper removed what they left.
    assert_gone(run)


def test_limits_are_in_policy_show_and_refused_by_the_process_tier(home, workspace, scratch):
    path = scratch / "policy.toml"
    path.write_text('[resources]\nmemory = "1g"\ncpus = 1.5\npids = 100\ntimeout = 90\n')
    r = blastwall(["policy", "show", "--policy", str(path), "--plan"], home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr
    assert '[resources]\nmemory = "1G"\ncpus = 1.5\npids = 100\ntimeout = "1m30s"\n' in r.stdout
    assert "Resources(memory_bytes=1073741824, cpus=1.5, pids=100, timeout_seconds=90)" in r.stdout
    r = blastwall(["run", "--policy", str(path), "--tier", "process", "--", "true"], home=home, cwd=workspace)
    assert r.returncode == 125 and "cannot limit memory, cpus, pids" in r.stderr
