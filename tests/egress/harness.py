"""Talking to the gateway as a sandbox does: through a session's own sockets, with bytes chosen by the attacker.

A sandbox reaches the gateway only through its relay to the session's unix
sockets (HTTP proxy, SOCKS5); these helpers connect to the same sockets from
the test, so an attack can be written byte by byte and run hundreds of times
(hypothesis) without a sandbox per try.  ``session_for`` compiles a policy
document with the real compiler and registers it with a real gateway.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct
import time


def session_for(document: dict, *, workspace, gw_state, environ: dict):
    """A gateway session for the ``[network]``/``[credentials]`` of ``document``, as a run would register it."""
    from blastwall import api
    from blastwall.egress import client
    from blastwall.policy import plan as P
    from blastwall.policy.model import merge, parse_layer

    env = {**os.environ, "XDG_STATE_HOME": str(gw_state), "BLASTWALL_GATEWAY_IDLE": "60", **environ}
    policy = merge([parse_layer(document, "attack")])
    plan = api.plan_for(policy, workspace=str(workspace), cwd=str(workspace), environ=env)
    (egress,) = plan.of(P.Egress)
    return client.register(egress.rules(), "attack", env)


def _unix(path: str) -> socket.socket:
    from blastwall._unixpath import short

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    with short(path) as name:
        sock.connect(name)
    return sock


def read_all(sock, timeout: float = 3.0, limit: int = 1 << 20) -> bytes:
    """Everything the peer sends until it closes or is quiet for ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + 15
    while len(data) < limit and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            break
        except (OSError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    return data


def proxy_auth(session) -> str:
    return "Basic " + base64.b64encode(f"blastwall:{session.token}".encode()).decode()


def connect_tunnel(session, host: str, port: int) -> tuple[socket.socket | None, bytes]:
    """CONNECT through the session's HTTP proxy: (the tunnel, or None; the proxy's answer head)."""
    sock = _unix(session.http_path)
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                 f"Proxy-Authorization: {proxy_auth(session)}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        rest = read_all(sock, 1)
        sock.close()
        return None, head + rest
    return sock, head


def socks_tunnel(session, host: str, port: int) -> tuple[socket.socket | None, bytes]:
    """SOCKS5 (user/password = blastwall/token, a domain name): (the tunnel, or None; the reply)."""
    sock = _unix(session.socks_path)
    sock.sendall(b"\x05\x01\x02")
    if sock.recv(2) != b"\x05\x02":
        sock.close()
        return None, b""
    user, password = b"blastwall", session.token.encode()
    sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
    if sock.recv(2) != b"\x01\x00":
        sock.close()
        return None, b""
    sock.sendall(b"\x05\x01\x00\x03" + bytes([len(host)]) + host.encode() + struct.pack(">H", port))
    reply = sock.recv(10)
    if reply[:2] != b"\x05\x00":
        sock.close()
        return None, reply
    return sock, reply


def tls(sock, session, sni: str, *, alpn=("http/1.1",)):
    """TLS over a tunnel, trusting the session's CA bundle (the gateway's CA and the system's)."""
    context = ssl.create_default_context(cafile=session.ca_bundle)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context.wrap_socket(sock, server_hostname=sni)


def send_split(sock, data: bytes, cuts, *, pause: float = 0.02) -> None:
    """Write ``data`` in pieces cut at ``cuts`` (offsets), pausing between writes so each is its own read."""
    last = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))):
        sock.sendall(data[last:cut])
        time.sleep(pause)
        last = cut
    sock.sendall(data[last:])


def status_of(answer: bytes) -> int | None:
    line = answer.split(b"\r\n", 1)[0].split(b" ")
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else None


def body_of(answer: bytes) -> bytes:
    """The body of an HTTP/1.1 answer, de-chunked (the last answer if interim ones came first)."""
    while answer.startswith(b"HTTP/1.1 1") and b"\r\n\r\n" in answer and not answer.startswith(b"HTTP/1.1 101"):
        answer = answer.split(b"\r\n\r\n", 1)[1]
    head, _, body = answer.partition(b"\r\n\r\n")
    if b"chunked" not in head.lower():
        return body
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2:]
    return out
