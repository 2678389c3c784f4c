"""The gateway's capability grants, attacked byte by byte from inside a session.

A grant is ``api.test`` with its methods, paths and credential.  Each test
sends what an attacker inside a sandbox would -- through the session's own
sockets, exactly where the sandbox's relay connects -- and judges by what the
upstream received (``hostile.raw``: every byte of every connection) and what
came back to the client.  Every test has its legitimate request beside it.
"""

from __future__ import annotations

import os
import shutil
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import BASE, kill_gateway
from tests.egress.harness import (body_of, connect_tunnel, read_all, send_split, session_for, socks_tunnel, status_of,
                                  tls)
from tests.egress.hostile import Hostile

REAL_KEY = "sk-real-0123456789abcdef0123456789abcdef"
ATTACKER_KEY = "sk-attacker-ffffffffffffffffffffffffffff"
NAMES = ("api.test", "other.test", "plain.test", "www.api.test", "secret.api.test")
PATHS = ["/v1/messages", "/gzip", "/deflate", "/br", "/zstd", "/compress", "/reason", "/split", "/trailer",
         "/early-hints", "/ws"]


@pytest.fixture(scope="module")
def place():
    directory = BASE / f"egress-attacks-{os.getpid()}"
    (directory / "ws").mkdir(parents=True, exist_ok=True)
    (directory / "state").mkdir(exist_ok=True)
    yield directory
    kill_gateway(directory / "state")
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def hostile(place):
    server = Hostile(str(place), NAMES)
    yield server
    server.close()


@pytest.fixture(scope="module")
def plain(place):
    (place / "plain").mkdir(exist_ok=True)
    server = Hostile(str(place / "plain"), NAMES, tls=False)
    yield server
    server.close()


def document(hostile, **network):
    return {
        "network": {"allow": ["plain.test", "other.test", "*.api.test"], "deny": ["secret.api.test"],
                    "resolve": {name: "127.0.0.1" for name in NAMES}, "trusted_addresses": ["127.0.0.1/32"],
                    "upstream_ca": hostile.ca,
                    "rules": [{"host": "api.test", "methods": ["GET", "POST"], "paths": PATHS, "headers": ["x-marker"],
                               "credential": "EXAMPLE_API_KEY"}], **network},
        "credentials": {"EXAMPLE_API_KEY": {"from": "env:EXAMPLE_API_KEY", "hosts": ["api.test"],
                                            "header": "x-api-key"}},
    }


@pytest.fixture(scope="module")
def session(place, hostile):
    s = session_for(document(hostile), workspace=place / "ws", gw_state=place / "state",
                    environ={"EXAMPLE_API_KEY": REAL_KEY})
    yield s
    s.close()


def placeholder(session) -> str:
    return session.placeholders["EXAMPLE_API_KEY"]


def arrived(server, marker: str) -> list[bytes]:
    return [raw for raw in server.raw if marker.encode() in raw]


def over_tls(session, server, host="api.test", sni=None, via=connect_tunnel):
    sock, head = via(session, host, server.port)
    assert sock is not None, head
    return tls(sock, session, sni or host)


def exchange(sock, data: bytes, cuts=()) -> bytes:
    try:
        send_split(sock, data, cuts)
    except OSError:
        return b""
    answer = read_all(sock, 2)
    sock.close()
    return answer


# -- 1. Unparsed traffic is never relayed raw ----------------------------------------------------------

def request(path: str, key: str, host: str = "api.test", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nx-api-key: {key}\r\n{extra}Connection: close\r\n\r\n".encode()


TUNNELS = {"connect-tls": (connect_tunnel, True), "socks-tls": (socks_tunnel, True),
           "connect-plain": (connect_tunnel, False), "socks-plain": (socks_tunnel, False)}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(TUNNELS)), cuts=st.lists(st.integers(1, 80), max_size=3),
       lead=st.sampled_from([b"", b"\r\n", b"G", b"GE"]))
def test_split_writes_never_skip_the_rules(session, hostile, plain, kind, cuts, lead):
    """The same bytes cut at any offsets (a first write of one or two bytes, a leading CRLF): never raw TCP."""
    via, secure = TUNNELS[kind]
    server = hostile if secure else plain
    marker = f"split-{kind}-{os.urandom(4).hex()}"
    attack = request("/v1/admin", ATTACKER_KEY, extra=f"x-marker: {marker}\r\n")
    data = (lead if lead != b"G" and lead != b"GE" else b"") + attack
    if lead in (b"G", b"GE"):
        cuts = [len(lead), *cuts]  # The first write is the start of the method alone.
    sock, head = via(session, "api.test", server.port)
    assert sock is not None, head
    if secure:
        sock = tls(sock, session, "api.test")
    answer = exchange(sock, data, cuts)
    assert arrived(server, marker) == [], answer  # The upstream got not a byte of it.
    assert ATTACKER_KEY.encode() not in b"".join(server.raw)
    assert status_of(answer) in (None, 400, 403), answer


@pytest.mark.parametrize("kind", sorted(TUNNELS))
def test_split_writes_of_the_granted_request_still_work(session, hostile, plain, kind):
    via, secure = TUNNELS[kind]
    server = hostile if secure else plain
    marker = f"control-{kind}-{os.urandom(4).hex()}"
    sock, head = via(session, "api.test", server.port)
    assert sock is not None, head
    if secure:
        sock = tls(sock, session, "api.test")
    answer = exchange(sock, request("/v1/messages", placeholder(session), extra=f"x-marker: {marker}\r\n"),
                      [1, 2, 17])
    assert status_of(answer) == 200, answer
    (got,) = arrived(server, marker)
    assert f"x-api-key: {REAL_KEY}".encode() in got  # The gateway swapped the placeholder for the real key.


# -- 2 and 3. The request line, the Host, the SNI and the tunnel name one host -----------------------------

@pytest.mark.parametrize("tunnel, line", [
    ("api.test", "GET https://other.test:{port}/v1/messages HTTP/1.1"),  # The key of api.test, sent to another host.
    ("www.api.test", "GET https://secret.api.test:{port}/ HTTP/1.1"),  # A denied subdomain through an allowed one.
    ("api.test", "GET http://other.test:{port}/v1/messages HTTP/1.1"),
])
def test_request_line_naming_another_host_inside_a_tunnel(session, hostile, tunnel, line):
    marker = os.urandom(4).hex()
    sock = over_tls(session, hostile, tunnel)
    head = line.format(port=hostile.port)
    answer = exchange(sock, f"{head}\r\nHost: {tunnel}:{hostile.port}\r\nx-api-key: {placeholder(session)}\r\n"
                            f"x-marker: {marker}\r\nConnection: close\r\n\r\n".encode())
    assert status_of(answer) in (400, 421), answer
    assert arrived(hostile, marker) == []
    # The control: an absolute-form target naming the tunnel's own host goes out, in origin form.
    sock = over_tls(session, hostile, "api.test")
    answer = exchange(sock, f"GET https://api.test:{hostile.port}/v1/messages HTTP/1.1\r\nHost: api.test:"
                            f"{hostile.port}\r\nx-api-key: {placeholder(session)}\r\nx-marker: {marker}-ok\r\n"
                            "Connection: close\r\n\r\n".encode())
    assert status_of(answer) == 200, answer
    (got,) = arrived(hostile, f"{marker}-ok")
    assert got.startswith(b"GET /v1/messages HTTP/1.1\r\n")


def test_domain_fronting_through_an_unruled_tunnel(session, hostile):
    """A tunnel to an unruled name on the same server (a CDN) carrying the ruled host's name: read, and refused."""
    marker = os.urandom(4).hex()
    sock = over_tls(session, hostile, "plain.test")
    answer = exchange(sock, request("/v1/admin", ATTACKER_KEY, host="api.test", extra=f"x-marker: {marker}\r\n"))
    assert status_of(answer) == 421, answer
    assert arrived(hostile, marker) == []
    sock = over_tls(session, hostile, "plain.test")
    answer = exchange(sock, request("/anything", "none", host="plain.test", extra=f"x-marker: {marker}-ok\r\n"))
    assert status_of(answer) == 200 and len(arrived(hostile, f"{marker}-ok")) == 1, answer


# -- 4. HTTP/2 headers never become HTTP/1.1 lines ------------------------------------------------------------

def h2_request(sock, headers) -> tuple[int | None, bool]:
    """One HTTP/2 request with ``headers`` sent as given (no client-side validation): (status, stream reset)."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False,
        validate_inbound_headers=False))
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=True)
    sock.sendall(conn.data_to_send())
    status, reset = None, False
    deadline = time.monotonic() + 5
    sock.settimeout(1)
    while time.monotonic() < deadline and status is None and not reset:
        try:
            data = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            continue
        except OSError:
            break
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                reset = True
        try:
            sock.sendall(conn.data_to_send())
        except OSError:
            reset = True  # The gateway closed the connection while we answered it (its GOAWAY, then EOF).
            break
    sock.close()
    return status, reset


@pytest.mark.parametrize("name, value", [
    ("x-note", "a\r\nx-injected: 1"),
    ("x-note", "a\r\n\r\nGET /v1/admin HTTP/1.1\r\nHost: other.test\r\nx-injected: 1"),  # A whole second request.
    ("x-note", "a\x00x-injected"),
    ("x-note", "a\rx-injected: 1"),
    ("x-injected\r\nx-other", "1"),
    ("host", "other.test"),  # A second name beside :authority.
])
def test_http2_header_bytes_never_reach_http1(session, hostile, name, value):
    marker = os.urandom(4).hex()
    sock = over_tls(session, hostile, "api.test")  # (ALPN below: a new TLS session.)
    sock.close()
    sock, head = connect_tunnel(session, "api.test", hostile.port)
    sock = tls(sock, session, "api.test", alpn=("h2",))
    assert sock.selected_alpn_protocol() == "h2"
    authority = f"api.test:{hostile.port}"
    headers = [(":method", "GET"), (":path", "/v1/messages"), (":authority", authority), (":scheme", "https"),
               ("x-api-key", placeholder(session)), ("x-marker", marker), (name, value)]
    status, reset = h2_request(sock, [(k.encode(), v.encode()) for k, v in headers])
    assert status in (400, None) and (status == 400 or reset), (status, reset)
    assert arrived(hostile, marker) == [] and not [r for r in hostile.raw if b"x-injected" in r]
    # The control: the same request without the bad header is translated and arrives.
    sock, head = connect_tunnel(session, "api.test", hostile.port)
    sock = tls(sock, session, "api.test", alpn=("h2",))
    status, _ = h2_request(sock, [(k.encode(), v.encode()) for k, v in headers[:-1]])
    assert status == 200 and len(arrived(hostile, marker)) == 1


# -- 5. The real secret never comes back -----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/gzip", "/deflate", "/br", "/zstd", "/reason", "/split", "/trailer"])
def test_real_secret_never_comes_back(session, hostile, path):
    sock = over_tls(session, hostile, "api.test")
    answer = exchange(sock, request(path, placeholder(session), extra="Accept-Encoding: gzip, deflate, br\r\n"))
    assert REAL_KEY.encode() not in answer, answer
    assert status_of(answer) == 200, answer
    if path in ("/gzip", "/deflate", "/br", "/zstd", "/split"):
        # Decoded, readable, scrubbed, and whole (a scrubber's empty chunk would have ended it early).
        assert body_of(answer) == f"your key is {placeholder(session)}".encode(), answer


def test_a_response_the_gateway_cannot_read_is_refused(session, hostile):
    sock = over_tls(session, hostile, "api.test")
    answer = exchange(sock, request("/compress", placeholder(session)))
    assert status_of(answer) == 502 and REAL_KEY.encode() not in answer, answer


def test_early_hints_do_not_drop_the_connection(session, hostile):
    # The interim 103 is dropped (mitmproxy has one response per request); the final one passes.
    sock = over_tls(session, hostile, "api.test")
    answer = exchange(sock, request("/early-hints", placeholder(session)))
    assert status_of(answer) == 200 and body_of(answer) == b"final", answer


def test_secret_never_comes_back_in_a_websocket_message(session, hostile):
    sock = over_tls(session, hostile, "api.test")
    answer = exchange(sock, (f"GET /ws HTTP/1.1\r\nHost: api.test\r\nx-api-key: {placeholder(session)}\r\n"
                             "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
    assert b" 101 " in answer.split(b"\r\n", 1)[0], answer
    assert REAL_KEY.encode() not in answer and placeholder(session).encode() in answer


# -- 6 and 7. Nothing that could serve as another credential, no other method -----------------------------------

@pytest.mark.parametrize("extra, target", [
    *[(f"{name}: {ATTACKER_KEY}\r\n", "/v1/messages")
      for name in ("apikey", "x-apikey", "X-Authorization", "Authentication", "Token", "Authorization")],
    *[("", f"/v1/messages?{key}={ATTACKER_KEY}") for key in ("private_token", "api-key", "access_key", "auth_token")],
    ("Cookie: session=attacker\r\n", "/v1/messages"),
    ("X-HTTP-Method-Override: DELETE\r\n", "/v1/messages"),
    ("", "/v1/messages?_method=DELETE"),
])
def test_nothing_rides_along_with_the_bound_credential(session, hostile, extra, target):
    marker = os.urandom(4).hex()
    sock = over_tls(session, hostile, "api.test")
    answer = exchange(sock, request(target, placeholder(session), extra=extra + f"x-marker: {marker}\r\n"))
    assert status_of(answer) == 403, answer
    assert arrived(hostile, marker) == [] and ATTACKER_KEY.encode() not in b"".join(hostile.raw)


# -- 9. Forms whose meaning depends on the server ---------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    "GET /v1/messages HTTP/1.1\r\nHost: api.test\r\nHost: other.test\r\n",
    "GET /v1/messages HTTP/1.1\r\nHost: api.test\r\n other.test\r\n",  # Folded.
    "GET /v1/messages HTTP/1.1\r\nHost: a:@api.test\r\n",
    "GET /v1/messages HTTP/1.1\r\nHost: api.test, other.test\r\n",
    "GET /v1/messages HTTP/1.0\r\n",  # HTTP/1.0 without Host.
    "GET /v1/messages HTTP/1.1\r\nHost: api.test\r\nx-a: b\rc\r\n",  # A lone CR.
    "GET /v1/messages/..;/admin HTTP/1.1\r\nHost: api.test\r\n",
    "GET /v1/%252e%252e/admin HTTP/1.1\r\nHost: api.test\r\n",
    "GET /v1/messages#frag HTTP/1.1\r\nHost: api.test\r\n",
    "GET /v1/%c0%ae%c0%ae/admin HTTP/1.1\r\nHost: api.test\r\n",  # Overlong UTF-8.
    "GET /v1/%EF%BC%8E%EF%BC%8E/admin HTTP/1.1\r\nHost: api.test\r\n",  # Fullwidth dots.
    "GET /v1/messages?a=1;key=attacker HTTP/1.1\r\nHost: api.test\r\n",
    "GET /v1/messages HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n",
])
def test_forms_with_more_than_one_meaning_are_refused(session, hostile, raw):
    marker = os.urandom(4).hex()
    sock = over_tls(session, hostile, "api.test")
    answer = exchange(sock, (raw + f"x-api-key: {placeholder(session)}\r\nx-marker: {marker}\r\n\r\n").encode())
    assert status_of(answer) in (None, 400, 403), answer
    assert arrived(hostile, marker) == []


# -- Refused early, and said how ----------------------------------------------------------------------------------

def test_refused_address_is_answered_before_the_tunnel_opens(place, hostile):
    s = session_for({"network": {"allow": ["addr.test"], "resolve": {"addr.test": "10.9.8.7"}}},
                    workspace=place / "ws", gw_state=place / "state", environ={})
    try:
        started = time.monotonic()
        sock, head = connect_tunnel(s, "addr.test", 443)
        assert sock is None and status_of(head) == 403, head
        assert b"forbidden-address" in head and b"10.9.8.7 is private" in head and b"--trust-address" in head
        assert time.monotonic() - started < 5
    finally:
        s.close()


def test_refused_socks_destination_gets_a_reply_code_at_once(place, hostile):
    s = session_for({"network": {"allow": ["addr.test", "evil.test"], "deny": ["evil.test"],
                                 "resolve": {"addr.test": "10.9.8.7"}}},
                    workspace=place / "ws", gw_state=place / "state", environ={})
    try:
        for host in ("addr.test", "evil.test", "unlisted.test"):
            started = time.monotonic()
            sock, reply = socks_tunnel(s, host, 443)
            assert sock is None and reply[:2] == b"\x05\x04", (host, reply)  # Not "succeeded", then a close.
            assert time.monotonic() - started < 5
    finally:
        s.close()


def test_socks_tunnel_whose_sni_names_another_host(session, hostile):
    """SOCKS5 connects before the SNI is known: a ClientHello naming another host is never relayed."""
    marker = os.urandom(4).hex()
    sock, reply = socks_tunnel(session, "plain.test", hostile.port)
    assert sock is not None, reply
    try:
        sock = tls(sock, session, "other.test")
        answer = exchange(sock, request("/x", "none", host="other.test", extra=f"x-marker: {marker}\r\n"))
    except OSError:
        answer = b""
    assert status_of(answer) in (None, 421), answer
    assert arrived(hostile, marker) == []
