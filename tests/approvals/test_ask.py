"""Asking about unlisted hosts, answered on a real (pseudo-)terminal.

The person's answers scope: once, session, workspace; timeouts deny; the
sandboxed program cannot answer its own question.
"""

from __future__ import annotations

import shutil
import time

import pytest

from tests.cli.test_terminal import Terminal
from tests.conftest import blastwall, needs_bwrap
from tests.egress.upstreams import Upstream

pytestmark = [needs_bwrap, pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")]


@pytest.fixture
def upstream(scratch):
    up = Upstream(str(scratch))
    yield up
    up.close()


def ask_policy(scratch):
    path = scratch / "ask.toml"
    path.write_text('[network]\nunlisted = "ask"\ndeny = ["denied.test"]\n'
                    'resolve = { "api.test" = "127.0.0.1", "other.test" = "127.0.0.1", "denied.test" = "127.0.0.1" }\n'
                    'trusted_addresses = ["127.0.0.1/32"]\n')
    return path


def terminal(args, *, home, workspace, gw_state, env=None):
    extra = {"XDG_STATE_HOME": str(gw_state), "BLASTWALL_GATEWAY_IDLE": "60"}
    extra.update(env or {})
    return Terminal(args, home=home, cwd=workspace, extra_env=extra)


def curl_twice(port, host="api.test", pause=0.0):
    return ["sh", "-c", f"curl -s -o /dev/null -w 'first=%{{http_code}}\\n' http://{host}:{port}/hello; "
            f"sleep {pause}; curl -s -o /dev/null -w 'second=%{{http_code}}\\n' http://{host}:{port}/hello"]


def test_allow_once_asks_again_and_does_not_persist(home, workspace, scratch, upstream, gw_state):
    term = terminal(["run", "--policy", str(ask_policy(scratch)), "--", *curl_twice(upstream.http_port)],
                    home=home, workspace=workspace, gw_state=gw_state)
    term.expect("wants to connect to api.test:")
    term.send("o\r")
    term.expect("first=200")
    term.expect("wants to connect to api.test:", count=2)  # Once means once: asked again.
    term.send("d\r")
    term.expect("second=403")
    assert term.wait() == 0
    assert len(upstream.requests) == 1


def test_session_scope_ends_with_the_session(home, workspace, scratch, upstream, gw_state):
    term = terminal(["run", "--policy", str(ask_policy(scratch)), "--", *curl_twice(upstream.http_port)],
                    home=home, workspace=workspace, gw_state=gw_state)
    term.expect("wants to connect to api.test:")
    term.send("s\r")
    term.expect("second=200")
    assert term.wait() == 0
    assert term.output.count(b"wants to connect") == 1
    term = terminal(["run", "--policy", str(ask_policy(scratch)), "--", *curl_twice(upstream.http_port)],
                    home=home, workspace=workspace, gw_state=gw_state)
    term.expect("wants to connect to api.test:")  # A new session asks again.
    term.send("d\r")
    term.expect("first=403")
    term.expect("wants to connect to api.test:", count=2)
    term.send("d\r")
    term.expect("second=403")
    assert term.wait() == 0


def test_workspace_scope_applies_only_in_that_workspace(home, workspace, scratch, upstream, gw_state):
    term = terminal(["run", "--policy", str(ask_policy(scratch)), "--", *curl_twice(upstream.http_port)],
                    home=home, workspace=workspace, gw_state=gw_state)
    term.expect("wants to connect to api.test:")
    term.send("w\r")
    term.expect("second=200")
    assert term.wait() == 0
    r = blastwall(["run", "--policy", str(ask_policy(scratch)), "--", *curl_twice(upstream.http_port)],
                  home=home, cwd=workspace, env={"XDG_STATE_HOME": str(gw_state)})
    assert "first=200" in r.stdout and "second=200" in r.stdout, r.stdout + r.stderr  # Remembered, no terminal.
    other = scratch / "other-ws"
    other.mkdir()
    r = blastwall(["run", "--policy", str(ask_policy(scratch)), "--", *curl_twice(upstream.http_port)],
                  home=home, cwd=other, env={"XDG_STATE_HOME": str(gw_state), "BLASTWALL_ASK_TIMEOUT": "2"})
    assert "first=403" in r.stdout, r.stdout + r.stderr  # Not remembered elsewhere; no terminal: denied.
    listing = blastwall(["approvals", "list"], home=home, cwd=workspace, env={"XDG_STATE_HOME": str(gw_state)})
    assert "api.test" in listing.stdout
    entry = listing.stdout.split()[0]
    assert blastwall(["approvals", "revoke", entry], home=home, cwd=workspace,
                     env={"XDG_STATE_HOME": str(gw_state)}).returncode == 0


def test_no_answer_means_deny(home, workspace, scratch, upstream, gw_state):
    term = terminal(["run", "--policy", str(ask_policy(scratch)), "--", "curl", "-s", "-o", "/dev/null", "-w",
                     "code=%{http_code}\\n", f"http://api.test:{upstream.http_port}/hello"],
                    home=home, workspace=workspace, gw_state=gw_state, env={"BLASTWALL_ASK_TIMEOUT": "2"})
    term.expect("wants to connect to api.test:")
    term.expect("code=403", timeout=30)
    term.send("o\r")  # Too late.
    term.wait()
    assert upstream.requests == []


def test_parallel_identical_requests_ask_once(home, workspace, scratch, upstream, gw_state):
    port = upstream.http_port
    script = " & ".join(f"curl -s -o /dev/null -w 'c{i}=%{{http_code}}\\n' http://api.test:{port}/hello"
                        for i in range(5)) + "; wait"
    term = terminal(["run", "--policy", str(ask_policy(scratch)), "--", "sh", "-c", script],
                    home=home, workspace=workspace, gw_state=gw_state)
    term.expect("wants to connect to api.test:")
    time.sleep(1.0)
    term.send("o\r")
    for i in range(5):
        term.expect(f"c{i}=200")
    term.wait()
    assert term.output.count(b"wants to connect") == 1


def test_denied_hosts_are_never_asked_about(home, workspace, scratch, upstream, gw_state):
    r = blastwall(["run", "--policy", str(ask_policy(scratch)), "--", "curl", "-s", "-o", "/dev/null", "-w",
                   "%{http_code}", f"http://denied.test:{upstream.http_port}/"],
                  home=home, cwd=workspace, env={"XDG_STATE_HOME": str(gw_state)})
    assert r.stdout == "403" and "wants to connect" not in r.stderr


def test_sandbox_cannot_forge_the_answer(home, workspace, scratch, upstream, gw_state):
    # The sandboxed program prints what looks like an answer, and tries to
    # push keystrokes into its terminal; only the person's keys count.
    port = upstream.http_port
    script = (f"(sleep 1; printf 'o\\r'; python3 -c \"import fcntl,termios; [fcntl.ioctl(0, termios.TIOCSTI, c) "
              f"for c in b'o\\r']\" 2>/dev/null) & "
              f"curl -s -o /dev/null -w 'code=%{{http_code}}\\n' http://api.test:{port}/hello; wait")
    term = terminal(["run", "--policy", str(ask_policy(scratch)), "--", "sh", "-c", script],
                    home=home, workspace=workspace, gw_state=gw_state, env={"BLASTWALL_ASK_TIMEOUT": "4"})
    term.expect("wants to connect to api.test:")
    term.expect("code=403", timeout=30)  # Nobody answered: denied.
    term.wait()
    assert upstream.requests == []


def test_library_callback(home, workspace, scratch, upstream, gw_state):
    import os

    from blastwall import api

    asked = []

    def approve(host, port):
        asked.append((host, port))
        return (host == "api.test", "once")

    env = dict(os.environ, HOME=str(home), XDG_STATE_HOME=str(gw_state), XDG_CONFIG_HOME=str(home / ".config"))
    policy = api.load(str(ask_policy(scratch)), environ=env)
    out = scratch / "out.txt"
    with open(out, "w") as f:
        status = api.run(["sh", "-c", f"curl -s -o /dev/null -w 'a=%{{http_code}} ' http://api.test:{upstream.http_port}/hello;"
                          f"curl -s -o /dev/null -w 'b=%{{http_code}}' http://other.test:{upstream.http_port}/hello"],
                         policy=policy, workspace=str(workspace), cwd=str(workspace), environ=env,
                         stdout=f.fileno(), approve=approve)
    assert status == 0
    assert out.read_text() == "a=200 b=403"
    assert asked == [("api.test", upstream.http_port), ("other.test", upstream.http_port)]
