"""The mitmproxy addon that makes every network decision of the gateway.

Each hook looks up the session the connection belongs to (by the synthetic
peer address the gateway gave it when it arrived on a session socket; no
session, no traffic), asks the pure
functions in ``decide`` and enforces the answer.  Every upstream connection,
whatever the protocol (HTTP absolute-form, CONNECT, SOCKS5), passes through
``server_connect``, where the name is resolved *here*, every address checked,
and the connection pinned to the checked address.

mitmproxy logs an addon's exception and carries on; for a policy addon that is
failing open.  So every hook runs inside ``_fail_closed``: an error refuses the
flow or connection it was deciding.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import logging
import socket

from mitmproxy import http
from mitmproxy.proxy import mode_specs

from blastwall.egress.decide import check_addresses, decide, names_agree, pinned_address
from blastwall.egress.gateway import SESSION_PEER

logger = logging.getLogger("blastwall.gateway")

USERNAME = "blastwall"


def refusal_body(what: str, reason: str, detail: str = "") -> str:
    how = {
        "not-allowed": "To allow it: blastwall run --allow-domain HOST, or add it to [network] allow.",
        "denied": "It is listed in network.deny; deny wins over allow.",
        "forbidden-address": "To reach a private address, list its range in [network] trusted_addresses.",
        "bad-host": "Give the host name in its canonical form.",
    }.get(reason, "")
    text = f"blastwall: refused {what}: {reason}"
    if detail:
        text += f" ({detail})"
    return text + ("\n" + how if how else "") + "\n"


def _fail_closed(hook):
    """Run a hook; on any error, refuse what it was deciding instead of carrying on."""

    def refuse(args, exc) -> None:
        logger.error("blastwall gateway: %s failed: %r", hook.__name__, exc)
        target = args[1] if len(args) > 1 else None
        if isinstance(target, http.HTTPFlow):
            target.response = http.Response.make(500, b"blastwall: internal error; request refused\n",
                                                 {"content-type": "text/plain"})
        elif hasattr(target, "server"):  # ServerConnectionHookData
            target.server.error = "blastwall: internal error; connection refused"
        elif hasattr(target, "ignore_connection"):  # ClientHelloData
            target.context.client.error = "blastwall: internal error"
        elif hasattr(target, "valid"):  # Socks5AuthData
            target.valid = False
        elif hasattr(target, "error"):  # Client
            target.error = "blastwall: internal error"

    if asyncio.iscoroutinefunction(hook):
        @functools.wraps(hook)
        async def async_wrapper(*args):
            try:
                return await hook(*args)
            except Exception as exc:  # noqa: BLE001 - every error must refuse
                refuse(args, exc)
        return async_wrapper

    @functools.wraps(hook)
    def wrapper(*args):
        try:
            return hook(*args)
        except Exception as exc:  # noqa: BLE001 - every error must refuse
            refuse(args, exc)
    return wrapper


class Gatekeeper:
    """Decides and enforces; ``registry`` knows the sessions, ``audit`` records."""

    def __init__(self, registry, audit=None, resolver=None) -> None:
        self.registry = registry
        self.audit = audit
        self.resolver = resolver or _resolve
        self.fault = None  # Tests inject an exception here to prove failing closed.

    # -- helpers -----------------------------------------------------------------
    def _session(self, client):
        if self.fault is not None:
            raise self.fault
        peer = client.peername
        if not peer or peer[0] != SESSION_PEER:
            return None
        kind = "socks" if isinstance(client.proxy_mode, mode_specs.Socks5Mode) else "http"
        return self.registry.session_for_port(kind, peer[1])

    def _record(self, session, host, port, verdict, kind) -> None:
        if not verdict.allowed:
            session.blocked(host, port, verdict.reason, verdict.detail)
        if self.audit is not None:
            self.audit.append(kind=kind, session=session.id, command=session.command, host=str(host),
                              port=port if isinstance(port, int) else 0,
                              decision="allow" if verdict.allowed else "deny",
                              rule=verdict.rule, reason=verdict.reason if not verdict.detail
                              else f"{verdict.reason}: {verdict.detail}")

    def _authorized(self, session, flow) -> bool:
        header = flow.request.headers.get("Proxy-Authorization", "")
        scheme, _, encoded = header.partition(" ")
        try:
            user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return (scheme.lower() == "basic" and user == USERNAME
                and hmac.compare_digest(password.encode(), session.token.encode()))

    @staticmethod
    def _deny_response(flow, status: int, text: str) -> None:
        flow.response = http.Response.make(status, text.encode(), {"content-type": "text/plain",
                                                                   "connection": "close"})

    # -- hooks ----------------------------------------------------------------------
    @_fail_closed
    def socks5_auth(self, data) -> None:
        session = self._session(data.client_conn)
        data.valid = bool(session and data.username == USERNAME
                          and hmac.compare_digest(data.password.encode(), session.token.encode()))

    @_fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        session = self._session(flow.client_conn)
        if session is None:
            return self._deny_response(flow, 403, "blastwall: no session\n")
        if not self._authorized(session, flow):
            flow.response = http.Response.make(407, b"blastwall: proxy credentials required\n",
                                               {"Proxy-Authenticate": 'Basic realm="blastwall"'})
            return None
        del flow.request.headers["Proxy-Authorization"]
        host, port = flow.request.host, flow.request.port
        verdict = decide(session.rules, host, port)
        if not verdict.allowed:
            self._record(session, host, port, verdict, "connect")
            return self._deny_response(flow, 403, refusal_body(f"CONNECT {host}:{port}", verdict.reason, verdict.detail))
        self.registry.set_target(flow.client_conn.id, host, port)
        return None

    @_fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        session = self._session(flow.client_conn)
        if session is None:
            return self._deny_response(flow, 403, "blastwall: no session\n")
        target = self.registry.target(flow.client_conn.id)
        host_header = flow.request.headers.get("Host")
        if target is None and isinstance(flow.client_conn.proxy_mode, mode_specs.Socks5Mode):
            # Plain HTTP through SOCKS5: the SOCKS request named the destination.
            host, port = flow.server_conn.address
            verdict = decide(session.rules, host, port)
            if not verdict.allowed:
                self._record(session, host, port, verdict, "socks")
                return self._deny_response(flow, 403, refusal_body(f"{host}:{port}", verdict.reason, verdict.detail))
            self.registry.set_target(flow.client_conn.id, host, port)
            target = (host, port)
        if target is None:
            # An absolute-form request to the HTTP proxy.
            if not isinstance(flow.client_conn.proxy_mode, mode_specs.RegularMode):
                return self._deny_response(flow, 403, "blastwall: request without a destination\n")
            if not self._authorized(session, flow):
                flow.response = http.Response.make(407, b"blastwall: proxy credentials required\n",
                                                   {"Proxy-Authenticate": 'Basic realm="blastwall"'})
                return None
            del flow.request.headers["Proxy-Authorization"]
            host, port = flow.request.host, flow.request.port
            if not names_agree(host, host_header):
                verdict_reason = "host-mismatch"
                session.blocked(host, port, verdict_reason, f"Host: {host_header}")
                return self._deny_response(flow, 421, refusal_body(f"{host}:{port}", verdict_reason,
                                                                   f"Host header says {host_header}"))
            verdict = decide(session.rules, host, port)
            if not verdict.allowed:
                self._record(session, host, port, verdict, "http")
                return self._deny_response(flow, 403, refusal_body(f"{flow.request.method} {host}:{port}",
                                                                   verdict.reason, verdict.detail))
            return None
        # Plain HTTP inside a CONNECT or SOCKS tunnel: it must address the tunnel's host.
        host, port = target
        if not names_agree(host, host_header):
            session.blocked(host, port, "host-mismatch", f"Host: {host_header}")
            return self._deny_response(flow, 421, refusal_body(f"{host}:{port}", "host-mismatch",
                                                               f"Host header says {host_header}"))
        return None

    @_fail_closed
    def tls_clienthello(self, data) -> None:
        session = self._session(data.context.client)
        if session is None:
            data.context.client.error = "blastwall: no session"
            return
        self.registry.set_sni(data.context.client.id, data.client_hello.sni)
        # Nothing is decrypted: the tunnel is passed through, its SNI checked in
        # server_connect against the host the client asked for.
        data.ignore_connection = True

    @_fail_closed
    async def server_connect(self, data) -> None:
        client = data.client
        session = self._session(client)
        if session is None:
            data.server.error = "blastwall: no session"
            return
        host, port = data.server.address
        target = self.registry.target(client.id)
        if target is None and isinstance(client.proxy_mode, mode_specs.Socks5Mode):
            self.registry.set_target(client.id, host, port)
        verdict = decide(session.rules, host, port)
        if verdict.allowed:
            sni = self.registry.sni(client.id)
            if not names_agree(host, sni):
                verdict = type(verdict)(False, "sni-mismatch", detail=f"TLS SNI is {sni}")
        if verdict.allowed:
            pinned = pinned_address(session.rules, host)
            try:
                addresses = [pinned] if pinned else await self.resolver(host, port)
            except OSError as exc:
                verdict = type(verdict)(False, "resolve-failed", detail=str(exc))
            else:
                checked, address = check_addresses(session.rules, addresses)
                if not checked.allowed:
                    verdict = type(verdict)(False, checked.reason, detail=checked.detail)
                else:
                    # Connect to exactly the address that was checked: no second lookup.
                    data.server.address = (address, port)
        self._record(session, host, port, verdict, "connect")
        if not verdict.allowed:
            data.server.error = f"blastwall: refused {host}:{port}: {verdict.reason}"

    @_fail_closed
    def client_disconnected(self, client) -> None:
        self.registry.forget_client(client.id)


async def _resolve(host: str, port: int) -> list[str]:
    import ipaddress

    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))
