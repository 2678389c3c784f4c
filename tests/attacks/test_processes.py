"""Processes end with the run: nothing survives `blastwall run` being killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import blastwall, bw_env, needs_bwrap

pytestmark = needs_bwrap

SPAWN = """
import os, sys, time
for _ in range(3):
    if os.fork() == 0:
        os.setsid()  # Try to escape the process group, like a daemon would.
        if os.fork() == 0:
            time.sleep(1000)
        os._exit(0)
time.sleep(1000)
"""


def processes_with(token: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if token.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP])
def test_killing_run_kills_everything_inside(home, workspace, sig):
    token = f"blastwall-token-{uuid.uuid4().hex}"
    proc = subprocess.Popen([sys.executable, "-m", "blastwall", "run", "--", "python3", "-c", SPAWN, token],
                            cwd=workspace, env=bw_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # The python in the sandbox plus its daemonised grandchildren.
        assert wait_for(lambda: len(processes_with(token)) >= 4), processes_with(token)
        proc.send_signal(sig)
        status = proc.wait(timeout=10)
        if sig != signal.SIGKILL:
            assert status == 128 + sig
        assert wait_for(lambda: not processes_with(token), timeout=10), processes_with(token)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in processes_with(token):
            os.kill(pid, signal.SIGKILL)


def test_placeholders_of_a_killed_run_are_cleaned_by_the_next(home, workspace):
    before = sorted(os.listdir(workspace))
    proc = subprocess.Popen([sys.executable, "-m", "blastwall", "run", "--", "sleep", "1000"],
                            cwd=workspace, env=bw_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: (workspace / ".git").exists())  # A placeholder is in place.
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    r = blastwall(["run", "--", "true"], home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(workspace)) == before


def test_clean_exit_leaves_nothing(home, workspace):
    before = sorted(os.listdir(workspace))
    mounts_before = open("/proc/self/mountinfo").read()
    r = blastwall(["run", "--", "sh", "-c", "sleep 0.1 & echo started"], home=home, cwd=workspace)
    assert r.returncode == 0
    assert sorted(os.listdir(workspace)) == before
    assert open("/proc/self/mountinfo").read() == mounts_before


def test_exit_status_and_signals_pass_through(home, workspace):
    assert blastwall(["run", "--", "sh", "-c", "exit 7"], home=home, cwd=workspace).returncode == 7
    assert blastwall(["run", "--", "sh", "-c", "kill -TERM $$"], home=home, cwd=workspace).returncode == 143
    r = blastwall(["run", "--", "no-such-command-xyz"], home=home, cwd=workspace)
    assert r.returncode == 127 and "command not found" in r.stderr


def test_stdin_stdout_stderr_pass_through(home, workspace):
    r = blastwall(["run", "--", "sh", "-c", "tr a-z A-Z; echo err >&2"], home=home, cwd=workspace, input="hello\n")
    assert r.stdout == "HELLO\n"
    assert r.stderr == "err\n"
