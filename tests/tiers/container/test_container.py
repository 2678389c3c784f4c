"""The container tier with real gVisor: an image built by mmdebstrap, attacks checked on the host.

The image is built once per test session (about half a minute) into the test
cache, with `blastwall image build` as a user would.
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

from tests.conftest import BASE, SECRET, blastwall, bw_env

RUNSC = shutil.which("runsc", path="/usr/bin:/usr/local/bin:/usr/sbin")
pytestmark = [
    pytest.mark.skipif(RUNSC is None, reason="gVisor's runsc is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the container tier needs root on this machine"),
    pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="mmdebstrap is not installed"),
]


def crun(args, *, home, workspace, image_cache, env=None, timeout=120):
    merged = {"XDG_CACHE_HOME": str(image_cache)}
    merged.update(env or {})
    return blastwall(["run", "--tier", "container", *args], home=home, cwd=workspace, env=merged, timeout=timeout)


def test_image_is_listed(home, workspace, image_cache):
    r = blastwall(["image", "list"], home=home, cwd=workspace, env={"XDG_CACHE_HOME": str(image_cache)})
    assert r.stdout.startswith("default ") and "python3" in r.stdout


def test_runs_in_gvisor_with_the_image_not_the_host(home, workspace, image_cache):
    r = crun(["--", "sh", "-c", "dmesg 2>/dev/null | head -1; cat /etc/os-release | head -1; "
              f"cat {home}/.aws/credentials {home}/notes.txt; ls /root/.pyenv; echo $BLASTWALL_SANDBOX; exit 4"],
             home=home, workspace=workspace, image_cache=image_cache)
    assert r.returncode == 4, r.stderr
    assert "Starting gVisor" in r.stdout
    assert "bookworm" in r.stdout
    # The host's home (secrets and all) and the host's own files are simply not there.
    assert SECRET not in r.stdout and "ordinary readable file" not in r.stdout
    assert "container" in r.stdout


def test_workspace_writes_persist_and_nothing_else_does(home, workspace, image_cache):
    rootfs = image_cache / "blastwall" / "images" / "default" / "rootfs"
    marker = f"pwned-{uuid.uuid4().hex[:8]}"
    r = crun(["--", "sh", "-c", f"id -u; echo kept > result.txt; echo x > /tmp/{marker}; cat /tmp/{marker}; "
              f"echo x > /etc/{marker} || echo refused"], home=home, workspace=workspace, image_cache=image_cache)
    assert r.returncode == 0, r.stderr
    # Root's run is uid 1000 inside: the image's files are not its own to change.
    assert r.stdout.split() == ["1000", "x", "refused"], r.stdout
    assert (workspace / "result.txt").read_text() == "kept\n"
    assert os.stat(workspace / "result.txt").st_uid == os.getuid()  # The workspace's owner's, on the host.
    assert not (rootfs / "etc" / marker).exists() and not (rootfs / "tmp" / marker).exists()  # The image is never written.
    assert not os.path.exists(f"/etc/{marker}") and not os.path.exists(f"/tmp/{marker}")


def test_plans_this_tier_cannot_enforce_are_refused(home, workspace, image_cache):
    r = crun(["--require", "landlock", "--", "touch", "ran"], home=home, workspace=workspace, image_cache=image_cache)
    assert r.returncode == 125
    r = crun(["--image", "missing", "--", "touch", "ran"], home=home, workspace=workspace, image_cache=image_cache)
    assert r.returncode == 125 and "image build missing" in r.stderr
    assert not (workspace / "ran").exists()


def _sandbox_processes(container_root) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if str(container_root).encode() in f.read():
                        found.append(pid)
            except OSError:
                pass
    return found


def test_nothing_left_behind_even_after_sigkill(home, workspace, image_cache):
    state = home / ".local" / "state" / "blastwall" / "containers"
    before = sorted(os.listdir(workspace))
    proc = subprocess.Popen([sys.executable, "-m", "blastwall", "run", "--tier", "container", "--", "sleep", "1000"],
                            cwd=workspace, env=bw_env(home, {"XDG_CACHE_HOME": str(image_cache)}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not _sandbox_processes(state) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert _sandbox_processes(state), f"the sandbox did not start: {proc.poll()} {proc.stderr.read() if proc.poll() is not None else ''}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 20
    while _sandbox_processes(state) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sandbox_processes(state) == []  # runsc, its sandbox and gofer died with run.
    r = crun(["--", "true"], home=home, workspace=workspace, image_cache=image_cache)  # The reaper runs first.
    assert r.returncode == 0, r.stderr
    assert os.listdir(state) == []
    assert sorted(os.listdir(workspace)) == before  # Placeholders of the killed run are gone too.
