"""Background commands: handles, iteration, wait with callbacks, kill, list, connect, stdin (E2B's test_kill,
test_list, test_connect, test_send_stdin; both backends)."""

from __future__ import annotations

import time

import pytest

from blastwall.client import CommandExitException, CommandStdinError, TimeoutException


def test_a_handle_iterates_output_as_it_comes(sandbox):
    handle = sandbox.commands.run("for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.3; done", background=True)
    assert isinstance(handle.pid, int) and handle.pid > 0
    started, seen = time.monotonic(), []
    for stdout, stderr, pty in handle:
        assert pty is None and (stdout is None) != (stderr is None)
        seen.append((time.monotonic() - started, stdout, stderr))
    assert "".join(s for _, s, _ in seen if s) == "out1\nout2\nout3\n"
    assert "".join(e for _, _, e in seen if e) == "err1\nerr2\nerr3\n"
    assert seen[-1][0] - seen[0][0] >= 0.3  # the first came while the command still ran, not all at its end
    assert handle.exit_code == 0 and handle.stdout == "out1\nout2\nout3\n"


def test_wait_hands_output_to_callbacks_and_raises_on_failure(sandbox):
    handle = sandbox.commands.run("echo a; sleep 0.5; echo b; echo e >&2; exit 4", background=True)
    out, err = [], []
    with pytest.raises(CommandExitException) as info:
        handle.wait(on_stdout=out.append, on_stderr=err.append)
    assert ("".join(out), "".join(err), info.value.exit_code) == ("a\nb\n", "e\n", 4)


def test_wait_with_a_timeout_leaves_the_command_running(sandbox):
    handle = sandbox.commands.run("sleep 2; echo done", background=True)
    with pytest.raises(TimeoutException):
        handle.wait(timeout=0.5)
    assert handle.wait(timeout=30).stdout == "done\n"


def test_kill_by_handle_and_by_pid(sandbox):
    sandbox.files.write("go", "")
    handle = sandbox.commands.run("sleep 300", background=True)
    other = sandbox.commands.run("while [ -e go ]; do sleep 0.1; done; touch survived", background=True)
    assert {p.pid for p in sandbox.commands.list()} >= {handle.pid, other.pid}
    assert handle.kill() is True
    with pytest.raises(CommandExitException):
        handle.wait(timeout=30)
    assert sandbox.commands.kill(other.pid) is True
    sandbox.files.remove("go")
    time.sleep(0.5)
    assert not sandbox.files.exists("survived")  # killed, not ended by itself
    assert sandbox.commands.kill(other.pid) is False  # already ended
    assert sandbox.commands.kill(99999) is False
    running = {p.pid for p in sandbox.commands.list()}
    assert handle.pid not in running and other.pid not in running


def test_list_describes_running_commands(sandbox):
    handle = sandbox.commands.run("sleep 30", background=True, envs={"MARK": "1"}, cwd="/home/user")
    try:
        (info,) = [p for p in sandbox.commands.list() if p.pid == handle.pid]
        assert "sleep 30" in info.cmd and info.envs.get("MARK") == "1" and info.cwd
    finally:
        handle.kill()


def test_connect_follows_a_running_command(sandbox):
    handle = sandbox.commands.run("echo early; sleep 1; echo late", background=True)
    again = sandbox.commands.connect(handle.pid)
    assert again.pid == handle.pid
    assert again.wait(timeout=30).stdout == "early\nlate\n"


def test_send_stdin(sandbox):
    handle = sandbox.commands.run("while read line; do echo got:$line; done; echo eof", background=True, stdin=True)
    handle.send_stdin("one\n")
    sandbox.commands.send_stdin(handle.pid, "two\n")
    handle.close_stdin()
    assert handle.wait(timeout=30).stdout == "got:one\ngot:two\neof\n"
    with pytest.raises(CommandStdinError):
        handle.send_stdin("late\n")


def test_stdin_is_closed_unless_asked_for(sandbox):
    handle = sandbox.commands.run("cat; echo after-eof", background=True)
    assert handle.wait(timeout=30).stdout == "after-eof\n"  # /dev/null: EOF at once, no hang
    with pytest.raises(CommandStdinError):
        sandbox.commands.run("sleep 5", background=True).send_stdin("x")
