"""The resident helper: `blastwall run` served by a warm process, with the same boundary.

Each test starts its own helper (``python -m blastwall.cli.resident``) for its
own state directory, checks that the run really went through it, and judges
the effect on the host, with the same attack run in the calling process as the
control where the two could differ.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SECRET, bw_env, needs_bwrap

pytestmark = needs_bwrap


def _env(home, **extra):
    return bw_env(home, {"BLASTWALL_RESIDENT": "on", "BLASTWALL_RESIDENT_IDLE": "30", **extra})


def _socket(home):
    return home / ".local" / "state" / "blastwall" / "resident.sock"


@pytest.fixture
def helper(home):
    """A running helper for ``home``'s state directory; stopped after the test."""
    proc = subprocess.Popen([sys.executable, "-m", "blastwall.cli.resident"], env=_env(home),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not _socket(home).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _socket(home).exists(), proc.stderr.read() if proc.poll() is not None else "no socket"
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(args, *, home, cwd, env=None, timeout=60, **kw):
    return subprocess.run([sys.executable, "-m", "blastwall", "run", *args], cwd=cwd, env=env or _env(home),
                          capture_output=True, text=True, timeout=timeout, **kw)


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_a_run_goes_through_the_helper_and_keeps_the_boundary(helper, home, workspace):
    (workspace / ".git").mkdir()
    (workspace / ".git" / "config").write_text("[core]\n")
    script = (f"cat README.md; cat {home}/.aws/credentials; echo planted >> .git/config; "
              "echo '[core] fsmonitor = evil' > .git/config2; echo made > new.txt; sleep 1.5; exit 7")
    run_ = subprocess.Popen([sys.executable, "-m", "blastwall", "run", "--", "sh", "-c", script], cwd=workspace,
                            env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # While it runs, its sandbox is the helper's descendant, not the caller's.
    assert _wait_for(lambda: any(_comm(p) == "bwrap" for p in _descendants(helper.pid))), "not through the helper"
    assert not any(_comm(p) == "bwrap" for p in _descendants(run_.pid))
    out, err = run_.communicate(timeout=60)
    assert run_.returncode == 7, err  # The command's own status, through the helper.
    assert "project" in out  # The control: the workspace reads, and writes where allowed.
    assert (workspace / "new.txt").read_text() == "made\n"
    assert SECRET not in out + err
    assert (workspace / ".git" / "config").read_text() == "[core]\n"
    assert not (workspace / ".git" / "config2").exists()
    assert "Read-only file system" in err


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def test_the_caller_going_away_stops_its_sandbox(helper, home, workspace):
    proc = subprocess.Popen([sys.executable, "-m", "blastwall", "run", "--", "sh", "-c",
                             "sleep 20; echo late > late.txt"], cwd=workspace, env=_env(home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait_for(lambda: any(_comm(p) == "bwrap" for p in _descendants(helper.pid)))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert _wait_for(lambda: not any(_comm(p) == "bwrap" for p in _descendants(helper.pid)), timeout=20)
    assert _wait_for(lambda: sorted(p.name for p in workspace.iterdir()) == ["README.md"], timeout=20), \
        sorted(p.name for p in workspace.iterdir())  # Placeholders gone too.
    time.sleep(0.5)
    assert not (workspace / "late.txt").exists()
    assert helper.poll() is None  # The helper itself serves on.


def test_runs_do_not_wait_for_each_other(helper, home, workspace):
    slow = subprocess.Popen([sys.executable, "-m", "blastwall", "run", "--", "sleep", "8"], cwd=workspace,
                            env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: any(_comm(p) == "bwrap" for p in _descendants(helper.pid)))
        started = time.monotonic()
        quick = run(["--", "echo", "quick"], home=home, cwd=workspace)
        assert quick.returncode == 0 and quick.stdout == "quick\n", quick.stderr
        assert time.monotonic() - started < 6
        assert slow.poll() is None
    finally:
        slow.kill()
        slow.wait()


def test_the_callers_environment_is_the_runs(helper, home, workspace):
    r = run(["--env", "PROBE_VALUE", "--", "sh", "-c", "echo $PROBE_VALUE"], home=home, cwd=workspace,
            env=_env(home, PROBE_VALUE="from-this-caller"))
    assert r.returncode == 0 and r.stdout == "from-this-caller\n", r.stderr
    other = run(["--", "sh", "-c", "echo ${PROBE_VALUE:-unset}"], home=home, cwd=workspace)
    assert other.stdout == "unset\n"  # Nothing of one caller's is left for the next.


def _through_helper(helper, home, workspace, prefix=(), preexec_fn=None) -> bool:
    """Whether a run of ``sleep`` started through ``prefix`` had its sandbox under the helper."""
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "blastwall", "run", "--", "sleep", "3"], cwd=workspace,
                            env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=preexec_fn)
    try:
        seen = _wait_for(lambda: any(_comm(p) == "bwrap" for p in _descendants(helper.pid)), timeout=5)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        return seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("how", ["umask", "no-new-privs", "mount-namespace"])
def test_a_caller_confined_otherwise_runs_it_itself(helper, home, workspace, how):
    """A run through the helper would shed the caller's own confinement: it is not taken."""
    import shutil

    assert _through_helper(helper, home, workspace)  # The control: this caller is served.
    if how == "umask":
        r = run(["--", "touch", "made"], home=home, cwd=workspace, preexec_fn=lambda: os.umask(0o077))
        assert r.returncode == 0, r.stderr
        assert (workspace / "made").stat().st_mode & 0o777 == 0o600
        assert not _through_helper(helper, home, workspace, preexec_fn=lambda: os.umask(0o077))
    elif how == "no-new-privs":
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is not installed")
        assert not _through_helper(helper, home, workspace, prefix=("setpriv", "--no-new-privs"))
    else:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            pytest.skip("needs root and unshare(1) to give the caller a mount namespace of its own")
        (workspace / "hidden").mkdir()
        (workspace / "hidden" / "data").write_text("the caller cannot see this\n")
        script = (f"mount -t tmpfs none {workspace / 'hidden'} && "
                  f"{sys.executable} -m blastwall run -- ls -A hidden")
        r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], cwd=workspace,
                           env=_env(home), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout == ""  # The caller's own view, as a run without the helper has it.
        assert not _through_helper(helper, home, workspace, prefix=("unshare", "-m"))


def test_code_planted_in_the_workspace_is_not_imported_by_a_helper_started_there(home, workspace):
    marker = home / "imported-from-the-workspace"
    for name in ("fcntl", "select", "signal", "socket", "struct", "gc", "threading"):
        (workspace / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write({name!r})\n")
    env = _env(home, BLASTWALL_RESIDENT_IDLE="3")
    first = subprocess.run([str(Path(sys.executable).with_name("blastwall")), "run", "--", "true"], cwd=workspace,
                           env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert _wait_for(lambda: _socket(home).exists(), timeout=30)  # The helper started from there, and runs.
    served = subprocess.run([str(Path(sys.executable).with_name("blastwall")), "run", "--", "echo", "ok"],
                            cwd=workspace, env=env, capture_output=True, text=True, timeout=60)
    assert served.stdout == "ok\n", served.stderr
    assert not marker.exists()
    assert _wait_for(lambda: not _socket(home).exists(), timeout=30)


def test_a_policy_error_is_said_once_and_a_bad_request_changes_nothing(helper, home, workspace):
    r = run(["--allow-write", "/", "--", "true"], home=home, cwd=workspace)
    assert r.returncode == 2 and r.stderr.count("blastwall:") == 1, r.stderr
    assert "Traceback" not in r.stderr
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # Garbage, then a request claiming 1 TiB.
        s.connect(str(_socket(home)))
        s.sendall(b"GET / HTTP/1.1\r\n\r\n" * 10)
        assert s.recv(1) in (b"D", b"")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(_socket(home)))
        s.sendall(b"BW1\0" + (1 << 40).to_bytes(8, "little"))
        assert s.recv(1) in (b"D", b"")
    ok = run(["--", "echo", "still"], home=home, cwd=workspace)
    assert ok.returncode == 0 and ok.stdout == "still\n", ok.stderr
    assert helper.poll() is None


def test_another_user_is_refused(helper, home, workspace):
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as another user")
    # The peer's credentials decide, not only the file's mode: the probe reaches the socket with
    # root's file-system identity (setfsuid 0) but connects as uid 65534.
    probe = ("import ctypes,os,socket,sys; libc=ctypes.CDLL(None); os.setresgid(65534,65534,0); "
             "os.setresuid(65534,65534,0); libc.setfsuid(0); s=socket.socket(socket.AF_UNIX); "
             "s.connect(sys.argv[1]); s.sendall(b'BW1\\0' + (3).to_bytes(8,'little') + b'x\\0x'); "
             "print(repr(s.recv(1)))\n")
    probe = probe.replace("print(repr(s.recv(1)))", "\ntry:\n    print(repr(s.recv(1)))\n"
                          "except ConnectionResetError:\n    print(repr(b''))")
    r = subprocess.run([sys.executable, "-c", probe, str(_socket(home))], capture_output=True, text=True,
                       timeout=30)
    assert r.stdout.strip() == "b''", (r.stdout, r.stderr)  # Closed unanswered.
    assert helper.poll() is None
    ok = run(["--", "echo", "mine"], home=home, cwd=workspace)
    assert ok.returncode == 0 and ok.stdout == "mine\n", ok.stderr


def test_a_changed_installation_hands_the_run_back_and_ends_the_helper(helper, home, workspace):
    import blastwall.cli.args as module

    path = module.__file__
    before = os.stat(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    try:
        r = run(["--", "echo", "served"], home=home, cwd=workspace)
        assert r.returncode == 0 and r.stdout == "served\n", r.stderr  # Run in the caller instead.
        helper.wait(timeout=20)  # And the stale helper is gone.
        assert not _socket(home).exists()
    finally:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_the_first_run_starts_a_helper_that_serves_the_next(home, workspace):
    env = _env(home, BLASTWALL_RESIDENT_IDLE="3")
    first = run(["--", "echo", "one"], home=home, cwd=workspace, env=env)
    assert first.returncode == 0 and first.stdout == "one\n", first.stderr
    assert _wait_for(lambda: _socket(home).exists(), timeout=30)
    second = run(["--", "echo", "two"], home=home, cwd=workspace, env=env)
    assert second.returncode == 0 and second.stdout == "two\n", second.stderr
    assert _wait_for(lambda: not _socket(home).exists(), timeout=30)  # Idle: it ends by itself.
