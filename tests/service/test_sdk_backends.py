"""One SDK test module, run against both backends: local (a session on this machine) and remote (the service).

What a user of the SDK does should not depend on where the sandbox runs:
output streamed as it comes, exit statuses, timeouts, background commands
and their kill, a server started by one command reached by the next, files
written by the SDK read by a command and back.
"""

from __future__ import annotations

import os
import time

import pytest

from blastwall.client import CommandExitError, Sandbox, TimeoutException
from tests.conftest import bw_env, needs_bwrap
from tests.service.conftest import needs_gvisor


@pytest.fixture(params=[pytest.param("local", marks=needs_bwrap),
                        pytest.param("remote", marks=needs_gvisor)])
def create(request, home):
    if request.param == "local":
        env = {**os.environ, **bw_env(home)}
        return lambda: Sandbox.create(environ=env)
    service = request.getfixturevalue("service")
    key = service.tenant()
    return lambda: Sandbox.create(api_url=service.url, api_key=key, timeout=120)


def test_output_streams_before_the_command_ends(create):
    with create() as sbx:
        seen: list[tuple[float, str]] = []
        started = time.monotonic()
        result = sbx.commands.run("echo first; sleep 2; echo second; echo err >&2",
                                  on_stdout=lambda text: seen.append((time.monotonic() - started, text)))
        assert (result.stdout, result.stderr, result.exit_code) == ("first\nsecond\n", "err\n", 0)
        assert "".join(text for _, text in seen) == "first\nsecond\n"
        assert seen[0][1].startswith("first") and seen[0][0] < 1.5  # Delivered before the sleep ended.


def test_exit_status_timeout_and_kill(create):
    with create() as sbx:
        with pytest.raises(CommandExitError) as info:
            sbx.commands.run("echo out; echo err >&2; exit 3")
        assert (info.value.exit_code, info.value.stdout, info.value.stderr) == (3, "out\n", "err\n")
        started = time.monotonic()
        with pytest.raises(TimeoutException) as info:
            sbx.commands.run("sleep 30", timeout=1)
        assert info.value.result.exit_code == 124 and time.monotonic() - started < 20
        handle = sbx.commands.run("sleep 0.3; echo bg", background=True)
        assert handle.wait(timeout=30).stdout == "bg\n"
        handle = sbx.commands.run("sleep 300", background=True)
        time.sleep(0.5)
        handle.kill()
        with pytest.raises(CommandExitError):
            handle.wait(timeout=30)
        assert sbx.commands.run("echo still-usable").stdout == "still-usable\n"


def test_a_server_started_by_one_command_is_reached_by_the_next(create):
    with create() as sbx:
        sbx.files.write("www/index.html", "served from inside\n")
        server = sbx.commands.run("cd www && exec python3 -m http.server 8765 --bind 127.0.0.1", background=True)
        fetch = ("python3 -c 'import urllib.request; "
                 "print(urllib.request.urlopen(\"http://127.0.0.1:8765/index.html\", timeout=5).read().decode(), end=\"\")'")
        deadline = time.monotonic() + 60
        while True:
            try:
                result = sbx.commands.run(fetch, timeout=30)
                break
            except CommandExitError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert result.stdout == "served from inside\n"
        server.kill()


def test_state_outside_the_workspace_is_kept_between_commands(create):
    with create() as sbx:
        sbx.commands.run("echo kept > /tmp/state")
        assert sbx.commands.run("cat /tmp/state").stdout == "kept\n"
        sbx.files.write("sub/data.bin", b"\x00\x01\xff")
        result = sbx.commands.run(["sh", "-c", "pwd; echo $A"], envs={"A": "b"}, cwd="sub")
        assert result.stdout.splitlines() == [os.path.join(sbx.workspace, "sub"), "b"]
        assert sbx.commands.run("od -An -tx1 sub/data.bin").stdout.split() == ["00", "01", "ff"]
        sbx.commands.run("printf made-inside > sub/out.txt")
        assert sbx.files.read("sub/out.txt") == "made-inside"


def test_a_process_left_writing_does_not_hold_the_command(create):
    with create() as sbx:
        started = time.monotonic()
        result = sbx.commands.run("(while :; do echo tick; sleep 0.2; done) & echo started", timeout=3)
        # The background loop may print its first tick before or after "started": either order is right.
        assert result.stdout.splitlines().count("started") == 1 and result.exit_code == 0, result
        assert time.monotonic() - started < 15
        assert sbx.commands.run("echo next").stdout == "next\n"
