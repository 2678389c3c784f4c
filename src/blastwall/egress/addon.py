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

from blastwall.egress.decide import (check_addresses, check_request, decide, foreign_credentials, names_agree,
                                     needs_interception, pinned_address)
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
        return self.registry.session_for_port(_kind(client), peer[1])

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

    async def _decide(self, session, client_id, host, port):
        """decide(), plus asking the person when the policy says so.  Cached per connection."""
        cached = self.registry.decided(client_id, host, port)
        if cached is not None:
            return cached
        verdict = decide(session.rules, host, port)
        if not verdict.allowed and verdict.reason == "not-allowed" and session.unlisted == "ask":
            allowed, how = await session.ask(_canonical(host), port, session.ask_timeout)
            verdict = type(verdict)(allowed, "approved" if allowed else "refused-by-person",
                                    rule=f"asked ({how})", detail="" if allowed else how)
            if self.audit is not None:
                self.audit.append(kind="approval", session=session.id, command=session.command, host=str(host),
                                  port=port, decision="allow" if allowed else "deny", rule=verdict.rule,
                                  reason=how)
        self.registry.remember(client_id, host, port, verdict)
        return verdict

    def _require_credentials(self, session, flow) -> bool:
        """The session token must come with every proxy request; it never goes upstream."""
        if not self._authorized(session, flow):
            flow.response = http.Response.make(407, b"blastwall: proxy credentials required\n",
                                               {"Proxy-Authenticate": 'Basic realm="blastwall"'})
            return False
        del flow.request.headers["Proxy-Authorization"]
        return True

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
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        session = self._session(flow.client_conn)
        if session is None:
            return self._deny_response(flow, 403, "blastwall: no session\n")
        if not self._require_credentials(session, flow):
            return None
        host, port = flow.request.host, flow.request.port
        verdict = await self._decide(session, flow.client_conn.id, host, port)
        if not verdict.allowed:
            self._record(session, host, port, verdict, "connect")
            return self._deny_response(flow, 403, refusal_body(f"CONNECT {host}:{port}", verdict.reason, verdict.detail))
        self.registry.set_target(flow.client_conn.id, host, port)
        return None

    @_fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        session = self._session(flow.client_conn)
        if session is None:
            return self._deny_response(flow, 403, "blastwall: no session\n")
        target = self.registry.target(flow.client_conn.id)
        # The Host header in HTTP/1, the :authority pseudo-header in HTTP/2.
        host_header = flow.request.host_header
        if target is None and isinstance(flow.client_conn.proxy_mode, mode_specs.Socks5Mode):
            # Plain HTTP through SOCKS5: the SOCKS request named the destination.
            host, port = flow.server_conn.address
            verdict = await self._decide(session, flow.client_conn.id, host, port)
            if not verdict.allowed:
                self._record(session, host, port, verdict, "socks")
                return self._deny_response(flow, 403, refusal_body(f"{host}:{port}", verdict.reason, verdict.detail))
            self.registry.set_target(flow.client_conn.id, host, port)
            target = (host, port)
        if target is None and isinstance(flow.client_conn.proxy_mode, mode_specs.TransparentMode):
            # Plain HTTP redirected from port 80 of any address: the Host
            # header names the destination; the address the program chose
            # (our DNS answer, or a literal) is ignored.
            port = flow.request.port
            try:
                host = _canonical_strict(host_header)
            except ValueError:
                return self._deny_response(flow, 400, "blastwall: request without a usable Host header\n")
            verdict = await self._decide(session, flow.client_conn.id, host, port)
            if not verdict.allowed:
                self._record(session, host, port, verdict, "http")
                return self._deny_response(flow, 403, refusal_body(f"{flow.request.method} {host}:{port}",
                                                                   verdict.reason, verdict.detail))
            self.registry.set_target(flow.client_conn.id, host, port)
            flow.request.host = host
            target = (host, port)
        if target is None:
            # An absolute-form request to the HTTP proxy.
            if not isinstance(flow.client_conn.proxy_mode, mode_specs.RegularMode):
                return self._deny_response(flow, 403, "blastwall: request without a destination\n")
            if not self._require_credentials(session, flow):
                return None
            host, port = flow.request.host, flow.request.port
            if not names_agree(host, host_header):
                verdict_reason = "host-mismatch"
                session.blocked(host, port, verdict_reason, f"Host: {host_header}")
                return self._deny_response(flow, 421, refusal_body(f"{host}:{port}", verdict_reason,
                                                                   f"Host header says {host_header}"))
            verdict = await self._decide(session, flow.client_conn.id, host, port)
            if not verdict.allowed:
                self._record(session, host, port, verdict, "http")
                return self._deny_response(flow, 403, refusal_body(f"{flow.request.method} {host}:{port}",
                                                                   verdict.reason, verdict.detail))
            return self._capabilities(session, flow, host, port)
        # HTTP inside a CONNECT or SOCKS tunnel (plain, or decrypted): it must
        # address the tunnel's host, and so must the TLS SNI.
        host, port = target
        sni = self.registry.sni(flow.client_conn.id)
        for what, name in (("host-mismatch", host_header), ("sni-mismatch", sni)):
            if not names_agree(host, name):
                session.blocked(host, port, what, f"{name}")
                return self._deny_response(flow, 421, refusal_body(f"{host}:{port}", what,
                                                                   f"the request names {name}"))
        return self._capabilities(session, flow, host, port)

    def _capabilities(self, session, flow: http.HTTPFlow, host: str, port: int) -> None:
        """HTTP rules and credentials for a request the gateway can see."""
        request = flow.request
        length = request.headers.get("content-length")
        length = int(length) if length and length.isdigit() else None
        verdict, rule = check_request(session.http_rules, host, port, request.method, request.path, length)
        if not verdict.allowed:
            self._record(session, host, port, verdict, "http")
            return self._deny_response(flow, 413 if verdict.reason == "body-too-large" else 403,
                                       refusal_body(f"{request.method} {host}{request.path[:100]}", verdict.reason,
                                                    verdict.detail))
        headers = list(request.headers.items(multi=True))
        visible = request.path + "\n" + "\n".join(f"{k}: {v}" for k, v in headers)
        for cred in session.credentials.values():
            if cred.placeholder in visible and not cred.bound_to(host, port):
                refusal = type(verdict)(False, "placeholder-to-unbound-host", detail=f"credential {cred.name}")
                self._record(session, host, port, refusal, "credential")
                return self._deny_response(flow, 403, refusal_body(f"{request.method} {host}", refusal.reason,
                                                                   refusal.detail))
        if rule is not None and rule.credential:
            cred = session.credentials[rule.credential]
            query_keys = [k for k, _ in request.query.items(multi=True)]
            foreign = foreign_credentials(headers, query_keys, cred)
            if foreign:
                refusal = type(verdict)(False, "foreign-credential", detail=", ".join(foreign))
                self._record(session, host, port, refusal, "credential")
                return self._deny_response(flow, 403, refusal_body(f"{request.method} {host}", refusal.reason,
                                                                   f"only {cred.name} may be used on this host"))
        used = []
        for cred in session.credentials.values():
            if not cred.bound_to(host, port):
                continue
            for name, value in headers:
                if cred.placeholder in value:
                    request.headers[name] = value.replace(cred.placeholder, cred.value)
                    used.append(cred.name)
        limit = rule.max_body_bytes if rule is not None else None
        if limit is not None:
            request.stream = _body_limit(limit)
        if used:
            session.bound.add(flow.id)
            self._record(session, host, port, type(verdict)(True, "credential-used",
                                                           rule=f"credentials.{','.join(sorted(set(used)))}"),
                         "credential")
        return None

    @_fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        session = self._session(flow.client_conn)
        if session is None or flow.id not in session.bound:
            return
        secrets = [(c.value, c.placeholder) for c in session.credentials.values()]
        for name, value in list(flow.response.headers.items(multi=True)):
            for secret, placeholder in secrets:
                if secret in value:
                    flow.response.headers[name] = value.replace(secret, placeholder)
        # Whatever the upstream echoes, the sandbox sees the placeholder.
        flow.response.stream = _Scrubber(secrets)

    @_fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        session = self._session(flow.client_conn)
        if session is not None:
            session.bound.discard(flow.id)

    @_fail_closed
    def tls_clienthello(self, data) -> None:
        session = self._session(data.context.client)
        if session is None:
            data.context.client.error = "blastwall: no session"
            return
        client = data.context.client
        self.registry.set_sni(client.id, data.client_hello.sni)
        if isinstance(client.proxy_mode, mode_specs.TransparentMode) and self.registry.target(client.id) is None:
            # TLS redirected from port 443 of any address: the SNI names the
            # destination (no SNI, no connection); server_connect decides it.
            sni = data.client_hello.sni
            if not sni:
                client.error = "blastwall: TLS without SNI refused"
                data.ignore_connection = True
                data.context.server.address = None
                return
            port = data.context.server.address[1] if data.context.server.address else 443
            host = _canonical_strict(sni)
            self.registry.set_target(client.id, host, port)
            data.context.server.address = (host, port)
        target = self.registry.target(client.id) or data.context.server.address
        # Decrypt only hosts with HTTP rules or bound credentials.  Every other
        # tunnel passes through untouched; its SNI is checked in server_connect.
        intercept = bool(target) and needs_interception(session.http_rules, list(session.credentials.values()),
                                                        target[0], target[1])
        data.ignore_connection = not intercept

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
        verdict = await self._decide(session, client.id, host, port)
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


def _kind(client) -> str:
    """Which of a session's listeners a connection came through."""
    if isinstance(client.proxy_mode, mode_specs.Socks5Mode):
        return "socks"
    if isinstance(client.proxy_mode, mode_specs.TransparentMode):
        return "transparent"
    return "http"


def _canonical_strict(host: str | None) -> str:
    from blastwall.egress.decide import normalize_target_host

    if not host:
        raise ValueError("no host")
    name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    return normalize_target_host(name if port.isdigit() else host)


def _canonical(host: str) -> str:
    from blastwall.egress.decide import normalize_target_host

    try:
        return normalize_target_host(host)
    except ValueError:
        return host


def _body_limit(limit: int):
    """A stream filter that fails the request once its body exceeds ``limit`` bytes."""
    seen = [0]

    def count(chunk: bytes) -> bytes:
        seen[0] += len(chunk)
        if seen[0] > limit:
            raise ValueError(f"request body larger than {limit} bytes")
        return chunk

    return count


class _Scrubber:
    """Replaces secrets by placeholders in a streamed body, across chunk boundaries."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = [(s.encode(), p.encode()) for s, p in pairs]
        self.keep = max((len(s) for s, _ in self.pairs), default=1) - 1
        self.buffer = b""

    def __call__(self, chunk: bytes) -> bytes:
        data = self.buffer + chunk
        for secret, placeholder in self.pairs:
            data = data.replace(secret, placeholder)
        if not chunk:  # End of the body: flush everything.
            self.buffer = b""
            return data
        cut = max(0, len(data) - self.keep)
        self.buffer = data[cut:]
        return data[:cut]


async def _resolve(host: str, port: int) -> list[str]:
    import ipaddress

    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))
