"""Long-lived container sessions: commands run unprivileged, under the session's limits, killable; nothing left.

Limits are per session: the fork bomb meets RLIMIT_NPROC (gVisor's processes
are not host processes, so the pids cgroup cannot count them), the memory bomb
meets the sandbox's memory cgroup, and the host's OOM killer ends the session.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from tests.tiers.container.test_network import _assert_gone, _exec, pytestmark  # noqa: F401 - same skips


@pytest.fixture
def env(home, image_cache, gw_state):
    return {"HOME": str(home), "XDG_CACHE_HOME": str(image_cache), "XDG_STATE_HOME": str(gw_state),
            "XDG_CONFIG_HOME": str(home / ".config"), "PATH": os.environ["PATH"]}


def _boot(env, workspace, doc):
    from blastwall import api
    from blastwall.policy.model import parse_layer
    from blastwall.tiers.container.session import ContainerSession

    os.chown(workspace, 1000, 1000)
    pol = api.load(None, flags=parse_layer(doc, "test"), workspace=str(workspace), environ=env)
    plan = api.plan_for(pol, workspace=str(workspace), cwd=str(workspace), environ=env)
    session = ContainerSession(plan, environ=env, workspace=str(workspace))
    session.boot()
    return session


def test_commands_run_unprivileged_and_keep_state(env, workspace):
    session = _boot(env, workspace, {"sandbox": {"tier": "container"}})
    try:
        _, out = _exec(session, "id -u; grep CapEff /proc/self/status; echo x > /etc/owned 2>&1 || echo etc-refused; "
                                "echo data > made.txt; echo kept > /tmp/state; pwd; echo $HOME")
        _, later = _exec(session, "cat /tmp/state made.txt")
    finally:
        session.close()
    lines = out.split()
    assert lines[0] == "1000"
    assert "CapEff:\t0000000000000000" in out
    assert "etc-refused" in out
    assert "/home/user" in out
    assert later.split() == ["kept", "data"]  # The session's state lives between commands...
    made = workspace / "made.txt"
    assert made.read_text() == "data\n" and made.stat().st_uid == 1000  # ...and the workspace is the host's.
    _assert_gone(session.id, env)


def test_fork_and_memory_bombs_stay_inside_the_session_limits(env, workspace):
    session = _boot(env, workspace, {"sandbox": {"tier": "container"},
                                      "resources": {"memory": "192M", "pids": 32}})
    try:
        started = time.monotonic()
        _, forks = _exec(session, "python3 -c 'import os, time\nn = 0\nfor _ in range(500):\n try:\n"
                                  "  if os.fork() == 0:\n   time.sleep(20); os._exit(0)\n  n += 1\n"
                                  " except OSError:\n  break\nprint(\"forked\", n)'", timeout=60)
        _exec(session, "kill -9 -1 2>/dev/null; true", timeout=30)
        after = _exec(session, "echo after", timeout=30)  # The user's kill -9 -1 does not end the session.
        # Watch the sandbox's cgroup on the host while the bomb runs (it goes with the sandbox).
        peaks = [0]
        done = threading.Event()

        def watch():
            path = f"/sys/fs/cgroup/memory/blastwall/{session.id}/memory.max_usage_in_bytes"
            while not done.is_set():
                try:
                    with open(path) as f:
                        peaks.append(int(f.read()))
                except (OSError, ValueError):
                    pass
                done.wait(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            # The cgroup is read before the bomb starts (under load the first read can come late).
            waited = time.monotonic() + 10
            while len(peaks) == 1 and time.monotonic() < waited:
                time.sleep(0.01)
            assert len(peaks) > 1, "the sandbox's memory cgroup could not be read"
            assert session.alive(), "the session died before the memory bomb"
            status, memory = _exec(session, "python3 -c 'b = bytearray(1 << 30); b[::4096] = b\"x\" * "
                                            "(len(b) // 4096); print(\"allocated\")'; echo rc=$?", timeout=60)
        finally:
            done.set()
            watcher.join()
        peak = max(peaks)
        alive = session.alive()
        elapsed = time.monotonic() - started
    finally:
        session.close()
    assert "forked" in forks, forks
    assert after == (0, "after\n"), after
    count = int(forks.split()[-1])
    assert 0 < count < 32, forks  # RLIMIT_NPROC for the session's user: the bomb got EAGAIN.
    assert "allocated" not in memory and "rc=0" not in memory, memory
    # The memory limit holds for the whole sandbox: the host's OOM killer ends the
    # session (gVisor's kernel is one host process), never anything outside it.
    assert 64 * 1024 * 1024 < peak <= 192 * 1024 * 1024 + (2 << 20)  # It did grow, up to the limit (+ a dying page).
    assert not alive
    assert elapsed < 120
    _assert_gone(session.id, env)


def test_a_killed_command_is_gone_inside_the_sandbox(env, workspace):
    session = _boot(env, workspace, {"sandbox": {"tier": "container"}})
    try:
        process = session.exec(["sleep", "300"], stdin=0, stdout=1, stderr=2)
        time.sleep(1.0)
        process.kill()
        status = process.wait()
        _, out = _exec(session, "for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null | tr '\\0' ' '; echo; done")
    finally:
        session.close()
    assert status != 0
    assert "sleep 300" not in out, out


def test_commands_keep_their_words_env_cwd_and_streams(env, workspace):
    """Fast path (a spare shell becomes the command) and slow path (runsc exec) must be indistinguishable."""
    (workspace / "sub").mkdir()
    os.chown(workspace / "sub", 1000, 1000)
    session = _boot(env, workspace, {"sandbox": {"tier": "container"}})
    tricky = ["it's", "$(touch /home/user/pwned)", "a;b", "`id`", "*", "-n", "tab\there", "new\nline"]
    results = []
    try:
        for words in (tricky[:-1], tricky):  # The newline forces the slow path.
            time.sleep(0.3)  # Let the session refill its spare.
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            devnull = os.open(os.devnull, os.O_RDONLY)
            process = session.exec(["python3", "-c", "import json, os, sys; print(json.dumps([sys.argv[1:], "
                                "os.getcwd(), os.environ.get('GREETING')])); print('oops', file=sys.stderr); "
                                "sys.exit(7)", *words], env={"GREETING": "hi 'there' $HOME"},
                               cwd="/home/user/sub", stdin=devnull, stdout=out_w, stderr=err_w)
            for fd in (out_w, err_w, devnull):
                os.close(fd)
            status = process.wait()
            with os.fdopen(out_r, "rb") as out, os.fdopen(err_r, "rb") as err:
                results.append((status, out.read().decode(), err.read().decode()))
    finally:
        session.close()
    import json

    for (status, out, err), words in zip(results, (tricky[:-1], tricky)):
        assert status == 7
        assert json.loads(out) == [words, "/home/user/sub", "hi 'there' $HOME"]
        assert err == "oops\n"
    assert not (workspace / "pwned").exists()
