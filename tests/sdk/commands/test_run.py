"""commands.run: output, exit codes, bash, streaming, timeouts, envs, cwd, user (E2B's test_run, both backends)."""

from __future__ import annotations

import time

import pytest

from blastwall.client import CommandExitException, InvalidArgumentException, SandboxFileError, TimeoutException


def test_run_returns_output_and_exit_code(sandbox):
    result = sandbox.commands.run("echo hello; echo oops >&2")
    assert (result.stdout, result.stderr, result.exit_code, result.error) == ("hello\n", "oops\n", 0, None)


def test_commands_run_in_bash(sandbox):
    # dash would print "{1..3}" and "\x41", and has no [[.
    result = sandbox.commands.run('echo {1..3}; printf "\\x41\\n"; [[ a == a ]] && echo bash; echo $BASH_VERSION')
    lines = result.stdout.splitlines()
    assert lines[:3] == ["1 2 3", "A", "bash"] and lines[3][:1].isdigit()


def test_broken_utf8_is_replaced_not_fatal(sandbox):
    result = sandbox.commands.run(r"printf 'ok \xe2\x28\xa1 end\n'")
    assert result.stdout == "ok \ufffd(\ufffd end\n"


def test_nonzero_exit_raises_with_the_result(sandbox):
    with pytest.raises(CommandExitException) as info:
        sandbox.commands.run("echo out; echo err >&2; exit 3")
    error = info.value
    assert (error.exit_code, error.stdout, error.stderr) == (3, "out\n", "err\n")
    assert error.result.error and "3" in error.result.error


def test_output_streams_as_it_comes(sandbox):
    seen: list[tuple[float, str]] = []
    started = time.monotonic()
    result = sandbox.commands.run("echo first; sleep 2; echo second",
                                  on_stdout=lambda text: seen.append((time.monotonic() - started, text)))
    assert result.stdout == "first\nsecond\n" and "".join(t for _, t in seen) == result.stdout
    assert seen[0][1].startswith("first") and seen[0][0] < 1.5


def test_timeout_raises_timeout_exception_on_time(sandbox):
    sandbox.commands.run("true")  # booted: the first command's boot is not the timeout's
    started = time.monotonic()
    with pytest.raises(TimeoutException) as info:
        sandbox.commands.run("echo before; sleep 30", timeout=2)
    took = time.monotonic() - started
    assert isinstance(info.value, TimeoutError) and info.value.result.stdout == "before\n"
    assert 2 <= took < 3.0, f"timeout=2 took {took:.2f}s"
    assert sandbox.commands.run("echo after").stdout == "after\n"


def test_envs_and_cwd(sandbox):
    sandbox.files.make_dir("sub/dir")
    result = sandbox.commands.run('echo "$GREETING"; pwd', envs={"GREETING": "hi there"}, cwd="sub/dir")
    greeting, cwd = result.stdout.splitlines()
    assert greeting == "hi there" and cwd.endswith("/sub/dir")
    assert sandbox.commands.run("pwd", cwd="/home/user/sub").stdout.strip().endswith("/sub")
    sandbox.files.write("sub/marker", "m")
    home = sandbox.commands.run("pwd").stdout.strip()  # the workspace, as the sandbox names it
    assert sandbox.commands.run("cat marker", cwd=home + "/sub").stdout == "m"


def test_timeout_zero_means_no_limit_of_its_own(sandbox):
    assert sandbox.commands.run("sleep 1; echo slept", timeout=0).stdout == "slept\n"


def test_user_is_the_sandbox_user_and_root_is_refused(sandbox):
    assert sandbox.commands.run("id -u", user="user").stdout.strip() != "0"
    with pytest.raises(InvalidArgumentException):
        sandbox.commands.run("id -u", user="root")


@pytest.mark.parametrize("kwargs", [{"timeout": -1}, {"timeout": True}, {"timeout": "5"}, {"envs": {"1BAD": "x"}},
                                    {"envs": {"A": 1}}, {"stdin": True}, {"cwd": "../escape"}])
def test_bad_arguments_are_refused_before_anything_runs(sandbox, kwargs):
    with pytest.raises((InvalidArgumentException, SandboxFileError)) as info:
        sandbox.commands.run("touch ran", **kwargs)
    assert info.value.code in ("", "invalid_path", "invalid_request")
    assert not sandbox.files.exists("ran")
