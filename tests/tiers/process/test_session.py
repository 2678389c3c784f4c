"""The process tier's sessions, attacked from inside: the spawner is the weakest new part.

The spawner runs inside the sandbox as the same user as the commands.  A
command must not be able to reach its channel to the host or its memory,
and killing it must end the session cleanly: every command reports killed,
no new command starts, nothing is left running on the host.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from blastwall import api
from blastwall.policy.model import merge, parse_layer
from blastwall.tiers.contract import SandboxStopped
from tests.conftest import bw_env, needs_bwrap

pytestmark = needs_bwrap


def _session(home, workspace, doc=None):
    policy = merge([parse_layer(doc or {}, "test")])
    session = api.session(policy, workspace=str(workspace), environ={**os.environ, **bw_env(home)})
    session.boot()
    return session


def _run(session, script: str, timeout: float = 60) -> tuple[int, str]:
    r, w = os.pipe()
    process = session.exec(["sh", "-c", script], stdout=w, stderr=w, stdin=os.open(os.devnull, os.O_RDONLY))
    os.close(w)
    try:
        status = process.wait(timeout)
    finally:
        process.release()
    os.set_blocking(r, False)
    out = b""
    try:
        while chunk := os.read(r, 65536):
            out += chunk
    except BlockingIOError:
        pass
    os.close(r)
    return status, out.decode()


def _until(condition, seconds: float) -> None:
    """Wait, at most ``seconds``, for ``condition()`` (the assertion after it says whether it came)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


def _host_processes_with(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if marker.encode() in f.read().replace(b"\0", b" "):
                        found.append(int(name))
            except OSError:
                pass
    return found


# The spawner's pid inside (bubblewrap, pid 1, names it in its own command line too).
SPAWNER = r"""pid=$(for p in /proc/[0-9]*; do case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in
*bwrap*) ;; *_spawner.py*) basename $p ;; esac; done | head -1)"""


def test_a_command_cannot_reach_the_spawners_channel_or_memory(home, workspace):
    session = _session(home, workspace)
    try:
        status, out = _run(session, SPAWNER + r"""
[ -n "$pid" ] && [ "$pid" != 1 ] && echo found-spawner
python3 -c "
import os, socket, stat
for fd in range(64):  # Each descriptor it may hold, listed or not.
    try:
        mine = os.open('/proc/$pid/fd/%d' % fd, os.O_RDWR)
    except OSError:
        continue
    print('OPENED', fd, 'socket' if stat.S_ISSOCK(os.fstat(mine).st_mode) else 'file')
for fd in range(64):
    try:
        print('LINK', fd, os.readlink('/proc/$pid/fd/%d' % fd))
    except OSError:
        pass
try:
    with open('/proc/$pid/mem', 'rb') as f: f.read(1)
    print('MEMORY-READ')
except OSError as e:
    print('memory refused', e.errno)
"
echo control
""")
    finally:
        session.close()
    assert "found-spawner" in out and "control" in out, out
    assert "OPENED" not in out and "LINK" not in out and "MEMORY-READ" not in out, out


def test_killing_the_spawner_ends_the_session_and_leaves_nothing(home, workspace):
    marker = f"sleep {3000 + uuid.uuid4().int % 1000}"
    session = _session(home, workspace)
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        victim = session.exec(["sh", "-c", marker], stdin=devnull, stdout=devnull, stderr=devnull)
        os.close(devnull)
        _until(lambda: _host_processes_with(marker), 30)
        assert _host_processes_with(marker)  # The control: it runs, and the host sees it.
        try:
            _run(session, "kill -9 -1")  # It kills itself too: its status, or the session's end.
        except SandboxStopped:
            pass
        assert victim.poll() is None or victim.poll() == 137
        with pytest.raises(SandboxStopped):
            victim.wait(30)
        assert victim.poll() == 137 and not session.alive()
        with pytest.raises(SandboxStopped):
            session.exec(["true"])
    finally:
        session.close()
    _until(lambda: not _host_processes_with(marker), 10)
    assert _host_processes_with(marker) == []


def test_close_kills_what_the_commands_left_running(home, workspace):
    marker = f"sleep {4000 + uuid.uuid4().int % 1000}"
    session = _session(home, workspace)
    try:
        assert _run(session, f"setsid {marker} >/dev/null 2>&1 & echo started")[1] == "started\n"
        _until(lambda: _host_processes_with(marker), 30)
        assert _host_processes_with(marker)
    finally:
        session.close()
    _until(lambda: not _host_processes_with(marker), 10)
    assert _host_processes_with(marker) == []


def test_the_plans_timeout_bounds_each_command_not_the_session(home, workspace):
    session = _session(home, workspace, {"resources": {"timeout": "2s"}})
    try:
        started = time.monotonic()
        assert _run(session, "sleep 30")[0] == 124
        assert time.monotonic() - started < 15
        time.sleep(1.5)  # Longer than the timeout since boot: the session itself is not timed.
        assert _run(session, "echo alive") == (0, "alive\n")
    finally:
        session.close()


def test_a_command_never_holds_the_next_commands_descriptors(home, workspace):
    """A large frame arrives in pieces: the next command's descriptors must not reach the one being started."""
    session = _session(home, workspace)
    try:
        big = {f"PAD{i}": "x" * 40_000 for i in range(10)}  # Each under the kernel's 128 KiB per string.
        for _ in range(8):
            r, w = os.pipe()
            first = session.exec(["sh", "-c", "sleep 0.3; ls /proc/self/fd"], env=big, stdout=w, stderr=w,
                                 stdin=os.open(os.devnull, os.O_RDONLY))
            os.close(w)
            b_in_r, b_in_w = os.pipe()
            second = session.exec(["cat"], stdin=b_in_r, stdout=os.open(os.devnull, os.O_WRONLY),
                                  stderr=os.open(os.devnull, os.O_WRONLY))
            os.close(b_in_r)
            assert first.wait(30) == 0
            listed = sorted(int(fd) for fd in os.read(r, 65536).split())
            os.close(r)
            os.close(b_in_w)
            assert second.wait(30) == 0
            assert listed == [0, 1, 2, 3], listed  # 3: the listing's own; nothing of the second command's.
    finally:
        session.close()


def test_a_stopped_spawner_ends_the_session_instead_of_hanging_it(home, workspace):
    marker = f"sleep {5000 + uuid.uuid4().int % 1000}"
    session = _session(home, workspace, {"resources": {"timeout": "2s"}})
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        victim = session.exec(["sh", "-c", f"kill -STOP $PPID; {marker}"], stdin=devnull, stdout=devnull,
                              stderr=devnull)
        started = time.monotonic()
        with pytest.raises(SandboxStopped):
            victim.wait(60)  # The timeout's kill goes nowhere; the sandbox is then killed from the host.
        assert time.monotonic() - started < 30
        with pytest.raises(SandboxStopped):
            for _ in range(50):  # However much is sent, exec refuses rather than blocks.
                session.exec(["true"], env={"PAD": "x" * 20_000}, stdin=devnull, stdout=devnull, stderr=devnull)
        os.close(devnull)
    finally:
        session.close()
    _until(lambda: not _host_processes_with(marker), 10)
    assert _host_processes_with(marker) == []


def test_a_session_outlives_the_thread_that_booted_it(home, workspace):
    import threading

    holder = {}

    def boot():
        holder["session"] = _session(home, workspace)

    thread = threading.Thread(target=boot)
    thread.start()
    thread.join()
    session = holder["session"]
    try:
        assert _run(session, "echo kept > /tmp/state") == (0, "")
        time.sleep(1.0)  # The booting thread is gone; its sandbox must not be.
        assert session.alive() and _run(session, "cat /tmp/state") == (0, "kept\n")
    finally:
        session.close()


def test_what_the_caller_gives_is_checked_and_the_session_goes_on(home, workspace):
    session = _session(home, workspace)
    try:
        for bad in (dict(argv="true"), dict(argv=["true"], cwd="relative"), dict(argv=["true"], stdin=9999),
                    dict(argv=["true"], env={"A": b"bytes"}), dict(argv=[])):
            argv = bad.pop("argv")
            with pytest.raises(ValueError):
                session.exec(argv, **bad)
        r, w = os.pipe()
        process = session.exec(["true"], cwd="/nonexistent", stdout=w, stderr=w)
        os.close(w)
        assert process.wait(30) == 126
        assert b"working directory" in os.read(r, 4096)
        os.close(r)
        assert session.alive() and _run(session, "echo fine") == (0, "fine\n")
    finally:
        session.close()
