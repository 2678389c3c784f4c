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
from mitmproxy.proxy import commands, layer, layers, mode_specs
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.layers.http import HTTPMode

from blastwall.egress.decide import Verdict, check_addresses, decide, inspects, names_agree, pinned_address
from blastwall.egress.gateway import SESSION_PEER
from blastwall.egress.messages import (Scrubber, check_binding, check_form, check_overrides, check_request,
                                       decoder_for, normalize_path, query_keys)
from blastwall.egress.reasons import EgressReason as R

logger = logging.getLogger("blastwall.gateway")

USERNAME = "blastwall"


# What would allow it, for each refusal a user can do something about.
HOW = {
    R.NOT_ALLOWED: "To allow it: blastwall run --allow-domain HOST, or add it to [network] allow.",
    R.DENIED: "It is listed in network.deny; deny wins over allow.",
    R.FORBIDDEN_ADDRESS: "To reach it: blastwall run --trust-address CIDR, or list the range in [network] "
                         "trusted_addresses.",
    R.BAD_HOST: "Give the host name in its canonical form.",
    R.NOT_GRANTED: "The host's [[network.rules]] grant other methods or paths: add this one to its methods/paths.",
    R.HEADER_NOT_GRANTED: "Add the header's name to the rule's headers = [...] if it carries no credential.",
    R.QUERY_NOT_GRANTED: "Add the key to the rule's query = [...] if it carries no credential.",
    R.COOKIE_NOT_GRANTED: "Add the cookie's name to the rule's cookies = [...] if it carries no credential.",
    R.FOREIGN_CREDENTIAL: "Only the session's own credential may be used on this host.",
    R.AMBIGUOUS_PATH: "Send the path without dot segments, encoded slashes or dots, ';' parameters or "
                      "double encoding.",
}


def refusal_body(what: str, reason: str, detail: str = "") -> str:
    how = HOW.get(reason, "")
    text = f"blastwall: refused {what}: {reason}"
    if detail:
        text += f" ({detail})"
    return text + ("\n" + how if how else "") + "\n"


REASON_HEADER = "x-blastwall-reason"


def refusal(what: str, reason, detail: str = "") -> tuple[bytes, dict[str, str]]:
    """A refusal's body and headers, for people and for programs alike.

    The body is JSON: ``{"error": {"code": "egress_refused", "reason": <EgressReason>, "target", "detail",
    "message", "fix"}}``; ``X-Blastwall-Reason`` carries the reason alone (as Codex's ``x-proxy-error``) and
    ``Proxy-Status`` (RFC 9209) says the proxy refused it.  The reason is a member of the stable EgressReason
    enum, so a program can act on it: ask for the host, use another, give up.
    """
    import json

    code = str(R(reason))
    error = {"code": "egress_refused", "reason": code, "target": what, "detail": detail,
             "message": refusal_body(what, code, detail).strip(), "fix": HOW.get(R(reason), "")}
    body = (json.dumps({"error": error}, ensure_ascii=True) + "\n").encode()
    return body, {"content-type": "application/json", "connection": "close", REASON_HEADER: code,
                  "proxy-status": f'blastwall; error=http_request_denied; details="{code}"'}


def _fail_closed(hook):
    """Run a hook; on any error, refuse what it was deciding instead of carrying on."""

    def refuse(args, exc) -> None:
        logger.error("blastwall gateway: %s failed: %r", hook.__name__, exc)
        target = args[1] if len(args) > 1 else None
        if isinstance(target, http.HTTPFlow):
            if target.response is not None:
                # A response hook: the server's body would still come under a new head.  Kill the flow.
                target.kill()
            else:
                target.response = http.Response.make(500, b"blastwall: internal error; request refused\n",
                                                     {"content-type": "text/plain"})
        elif hasattr(target, "server"):  # ServerConnectionHookData
            target.server.error = "blastwall: internal error; connection refused"
        elif hasattr(target, "ignore_connection"):  # ClientHelloData
            target.context.client.error = "blastwall: internal error"
        elif hasattr(target, "valid"):  # Socks5AuthData
            target.valid = False
        elif isinstance(target, layer.NextLayer):
            target.layer = _Close(target.context)
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
        if not verdict.allowed and verdict.reason is R.NOT_ALLOWED and session.unlisted == "ask":
            allowed, how = await session.ask(_canonical(host), port, session.ask_timeout)
            verdict = type(verdict)(allowed, R.APPROVED if allowed else R.REFUSED_BY_PERSON,
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
    def _deny_response(flow, status: int, what: str, reason, detail: str = "") -> None:
        body, headers = refusal(what, reason, detail)
        flow.response = http.Response.make(status, body, headers)

    # -- hooks ----------------------------------------------------------------------
    @_fail_closed
    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """Which protocol a connection speaks next: parsed whole, or closed (mitmproxy's NextLayer is not loaded).

        mitmproxy decides from the first bytes, and relays as raw TCP what does
        not look like HTTP yet -- two bytes, no space, a leading CRLF -- where
        no HTTP rule or credential check runs.  Here a connection whose host
        must be read (a session with grants, not passthrough) is HTTP (or TLS
        that is then decrypted) whatever its first bytes: a stream that is not
        HTTP fails in the parser and is closed.
        """
        if nextlayer.layer:
            return
        context = nextlayer.context
        session = self._session(context.client)
        if session is None:
            nextlayer.layer = _Close(context)
            return
        data = nextlayer.data_client()
        if len(context.layers) == 1 and isinstance(context.layers[0], modes.HttpProxy):
            nextlayer.layer = _delegate()._setup_explicit_http_proxy(context, data)  # CONNECT or absolute form.
            return
        if data[:1] == b"\x16" and len(data) < 3:
            return  # Perhaps TLS: wait for the record header.
        from mitmproxy.net.tls import starts_like_tls_record

        if starts_like_tls_record(data):
            tls = layers.ServerTLSLayer(context)
            tls.child_layer = layers.ClientTLSLayer(context)  # Decrypted or passed through: tls_clienthello.
            nextlayer.layer = tls
            return
        target = self.registry.target(context.client.id) or context.server.address
        if context.client.tls_established or (target and inspects(session.rules, target[0], target[1])):
            nextlayer.layer = layers.HttpLayer(context, HTTPMode.transparent)
            return
        from mitmproxy.addons.next_layer import NeedsMoreData

        try:
            nextlayer.layer = _delegate()._next_layer(context, data, nextlayer.data_server())
        except NeedsMoreData:
            pass

    @_fail_closed
    def socks5_auth(self, data) -> None:
        session = self._session(data.client_conn)
        data.valid = bool(session and data.username == USERNAME
                          and hmac.compare_digest(data.password.encode(), session.token.encode()))

    @_fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        session = self._session(flow.client_conn)
        if session is None:
            return self._deny_response(flow, 403, "the request", R.NO_SESSION)
        if not self._require_credentials(session, flow):
            return None
        host, port = flow.request.host, flow.request.port
        verdict = await self._decide(session, flow.client_conn.id, host, port)
        if verdict.allowed:
            # Refused before the tunnel opens, with the reason: a client whose address is refused
            # learns it now instead of retrying TLS on a connection that is reset.
            verdict = await self._address(session, flow.client_conn.id, host, port)
        if not verdict.allowed:
            self._record(session, host, port, verdict, "connect")
            return self._deny_response(flow, 403, f"CONNECT {host}:{port}", verdict.reason, verdict.detail)
        self.registry.set_target(flow.client_conn.id, host, port)
        return None

    async def _address(self, session, client_id, host, port):
        """Resolve ``host`` here and check every address; remember the one to connect to.  The verdict."""
        known = self.registry.address(client_id, host, port)
        if known is not None:
            return Verdict(True, R.ALLOWED)
        pinned = pinned_address(session.rules, host)
        try:
            addresses = [pinned] if pinned else await self.resolver(host, port)
        except OSError as exc:
            return Verdict(False, R.RESOLVE_FAILED, detail=str(exc))
        checked, address = check_addresses(session.rules, addresses)
        if checked.allowed:
            self.registry.set_address(client_id, host, port, (checked, address))
        return checked

    @_fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        session = self._session(flow.client_conn)
        if session is None:
            return self._deny_response(flow, 403, "the request", R.NO_SESSION)
        target = self.registry.target(flow.client_conn.id)
        request = flow.request
        # Strict HTTP in, on every protocol, before anything is decided on a header.
        form = check_form(method=request.method, http_version=request.http_version,
                          headers=[(k, v) for k, v in request.headers.items(multi=True)],
                          target=request.data.path.decode("ascii", "surrogateescape"), authority=request.authority)
        if not form.allowed:
            where = target[0] if target else request.authority or "the request"
            self._record(session, where, target[1] if target else 0, form, "http")
            return self._deny_response(flow, 400, f"{request.method} to {where}", form.reason, form.detail)
        # The Host header in HTTP/1, the :authority pseudo-header in HTTP/2.
        host_header = flow.request.host_header
        if target is None and isinstance(flow.client_conn.proxy_mode, mode_specs.Socks5Mode):
            # Plain HTTP through SOCKS5: the SOCKS request named the destination.
            host, port = flow.server_conn.address
            verdict = await self._decide(session, flow.client_conn.id, host, port)
            if not verdict.allowed:
                self._record(session, host, port, verdict, "socks")
                return self._deny_response(flow, 403, f"{host}:{port}", verdict.reason, verdict.detail)
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
                return self._deny_response(flow, 400, f"{flow.request.method} to port {port}", R.BAD_HOST_HEADER,
                                           "no usable Host header")
            verdict = await self._decide(session, flow.client_conn.id, host, port)
            if not verdict.allowed:
                self._record(session, host, port, verdict, "http")
                return self._deny_response(flow, 403, f"{flow.request.method} {host}:{port}", verdict.reason,
                                           verdict.detail)
            self.registry.set_target(flow.client_conn.id, host, port)
            flow.request.host = host
            target = (host, port)
        if target is None:
            # An absolute-form request to the HTTP proxy.
            if not isinstance(flow.client_conn.proxy_mode, mode_specs.RegularMode):
                return self._deny_response(flow, 403, "the request", R.NO_DESTINATION)
            if not self._require_credentials(session, flow):
                return None
            host, port = flow.request.host, flow.request.port
            if not names_agree(host, host_header):
                verdict_reason = R.HOST_MISMATCH
                session.blocked(host, port, verdict_reason, f"Host: {host_header}")
                return self._deny_response(flow, 421, f"{host}:{port}", verdict_reason,
                                           f"Host header says {host_header}")
            verdict = await self._decide(session, flow.client_conn.id, host, port)
            if not verdict.allowed:
                self._record(session, host, port, verdict, "http")
                return self._deny_response(flow, 403, f"{flow.request.method} {host}:{port}", verdict.reason,
                                           verdict.detail)
            return self._capabilities(session, flow, host, port)
        # HTTP inside a CONNECT or SOCKS tunnel (plain, or decrypted): the Host
        # header, an absolute-form target and the TLS SNI must all name the
        # tunnel's host (servers route on any of them).
        host, port = target
        sni = self.registry.sni(flow.client_conn.id)
        for what, name in ((R.HOST_MISMATCH, host_header), (R.TARGET_MISMATCH, request.authority),
                           (R.SNI_MISMATCH, sni)):
            if not names_agree(host, name):
                session.blocked(host, port, what, f"{name}")
                return self._deny_response(flow, 421, f"{host}:{port}", what, f"the request names {name}")
        _canonical_out(request, host, port)
        return self._capabilities(session, flow, host, port)

    def _refuse(self, session, flow, host, port, verdict, kind: str = "http") -> None:
        self._record(session, host, port, verdict, kind)
        status = {R.BODY_TOO_LARGE: 413, R.AMBIGUOUS_PATH: 400}.get(verdict.reason, 403)
        self._deny_response(flow, status, f"{flow.request.method} {host}{flow.request.path[:100]}",
                            verdict.reason, verdict.detail)

    def _capabilities(self, session, flow: http.HTTPFlow, host: str, port: int) -> None:
        """HTTP rules and credentials for a request the gateway can see."""
        request = flow.request
        length = request.headers.get("content-length")
        length = int(length) if length and length.isdigit() else None
        headers = list(request.headers.items(multi=True))
        rules = [r for r in session.http_rules if r.applies_to(host, port)]
        rule = None
        if rules:
            # One normal path: the rules match it, and it is what goes upstream.
            normal = normalize_path(request.data.path.decode("ascii", "surrogateescape"))
            keys = query_keys(normal[1]) if normal is not None else None
            if normal is None or keys is None:
                return self._refuse(session, flow, host, port, Verdict(False, R.AMBIGUOUS_PATH,
                                                                       detail=request.path[:200]))
            verdict = check_overrides(headers, keys)
            if verdict.allowed:
                verdict, rule = check_request(rules, host, port, request.method, normal[0], length)
            if verdict.allowed and rule is not None and rule.credential:
                verdict = check_binding(rule, session.credentials[rule.credential], headers, keys)
            if not verdict.allowed:
                return self._refuse(session, flow, host, port, verdict,
                                    "credential" if verdict.reason.endswith(("credential", "granted")) else "http")
            request.path = normal[0] + ("?" + normal[1] if normal[1] else "")
        visible = request.path + "\n" + "\n".join(f"{k}: {v}" for k, v in headers)
        for cred in session.credentials.values():
            if cred.placeholder in visible and not cred.bound_to(host, port):
                refusal = Verdict(False, R.PLACEHOLDER_TO_UNBOUND_HOST, detail=f"credential {cred.name}")
                return self._refuse(session, flow, host, port, refusal, "credential")
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
            # A reply that could carry the secret back comes plain, to be read whole (and scrubbed).
            request.headers["accept-encoding"] = "identity"
            session.bound.add(flow.id)
            self._record(session, host, port, Verdict(True, R.CREDENTIAL_USED,
                                                      rule=f"credentials.{','.join(sorted(set(used)))}"),
                         "credential")
        return None

    @_fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Whatever comes back, the sandbox sees placeholders: headers, the reason phrase, the body decoded."""
        session = self._session(flow.client_conn)
        if session is None or not session.credentials:
            return
        secrets = [(c.value, c.placeholder) for c in session.credentials.values()]
        response = flow.response
        for name, value in list(response.headers.items(multi=True)):
            for secret, placeholder in secrets:
                if secret in value:
                    response.headers[name] = value.replace(secret, placeholder)
        for secret, placeholder in secrets:
            response.reason = response.reason.replace(secret, placeholder)
        host, port = flow.request.host, flow.request.port
        decoder = None
        if flow.id in session.bound or any(c.bound_to(host, port) for c in session.credentials.values()):
            # A host that knows a secret may send it back compressed: read the body decoded.
            coding = response.headers.get("content-encoding", "").strip().lower()
            if coding and coding != "identity":
                decoder = decoder_for(coding)
                if decoder is None:
                    _replace_response(response, 502, f"blastwall: refused the response of {host}: it is encoded "
                                                     f"as {coding[:40]!r}, which the gateway cannot read to check\n")
                    return
                del response.headers["content-encoding"]
                del response.headers["content-length"]
                if not flow.request.is_http2 and "chunked" not in response.headers.get("transfer-encoding", ""):
                    response.headers["transfer-encoding"] = "chunked"
        response.stream = Scrubber(secrets, decoder)

    @_fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        session = self._session(flow.client_conn)
        if session is None:
            return
        session.bound.discard(flow.id)
        if session.credentials and flow.response is not None and flow.response.trailers:
            trailers = flow.response.trailers
            for name, value in list(trailers.items(multi=True)):
                for cred in session.credentials.values():
                    if cred.value in value:
                        trailers[name] = value.replace(cred.value, cred.placeholder)

    @_fail_closed
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        session = self._session(flow.client_conn)
        if session is None or not session.credentials or flow.websocket is None:
            return
        message = flow.websocket.messages[-1]
        content = message.content
        for cred in session.credentials.values():
            content = content.replace(cred.value.encode(), cred.placeholder.encode())
        message.content = content

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
        sni = data.client_hello.sni
        if data.context.server.connected:
            # A SOCKS5 tunnel, connected before the SNI was known (_decide_socks_before_replying): the upstream
            # TLS starts now, named for the SOCKS destination whatever the client's SNI says.
            data.establish_server_tls_first = True
            data.context.server.sni = target[0]
            if sni and not names_agree(target[0], sni):
                # Never relayed as it is: decrypted, which a client without the session's CA cannot finish,
                # and a request in it is refused for the mismatch.
                session.blocked(target[0], target[1], R.SNI_MISMATCH, f"TLS SNI is {sni}")
                data.ignore_connection = False
                return
        # A session with grants has every TLS connection decrypted and read, but for its passthrough hosts:
        # a tunnel to an unruled name can carry a request for a ruled host on the same server.  A session
        # without grants tunnels TLS untouched; its SNI is checked in server_connect.
        data.ignore_connection = not (bool(target) and inspects(session.rules, target[0], target[1]))

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
                verdict = type(verdict)(False, R.SNI_MISMATCH, detail=f"TLS SNI is {sni}")
        if verdict.allowed:
            verdict = await self._address(session, client.id, host, port)
            if verdict.allowed:
                # Connect to exactly the address that was checked: no second lookup.
                data.server.address = (self.registry.address(client.id, host, port)[1], port)
        self._record(session, host, port, verdict, "connect")
        if not verdict.allowed:
            data.server.error = f"blastwall: refused {host}:{port}: {verdict.reason}"

    @_fail_closed
    def client_disconnected(self, client) -> None:
        self.registry.forget_client(client.id)


class _Close(layer.Layer):
    """The next layer of a connection that is refused: it closes the client's side at once."""

    def _handle_event(self, event):
        yield commands.CloseConnection(self.context.client)


@functools.cache
def _delegate():
    """mitmproxy's own choice of layer, asked only where the gateway need not read the traffic."""
    from mitmproxy.addons.next_layer import NextLayer

    return NextLayer()


def _replace_response(response, status: int, text: str) -> None:
    """Refuse a response whose head arrived: the same response object, its body the refusal, the server's dropped.

    (A new Response object would be sent with the server's body as its content.)
    """
    body = text.encode()
    response.status_code = status
    response.reason = "Bad Gateway" if status == 502 else "Refused"
    response.headers.clear()
    response.headers["content-type"] = "text/plain"
    response.headers["content-length"] = str(len(body))
    response.headers["connection"] = "close"
    response.stream = lambda chunk: [] if chunk else [body]


def _canonical_out(request, host: str, port: int) -> None:
    """Canonical HTTP out: origin-form, and a Host of the tunnel's own name (HTTP/2 keeps :authority)."""
    default = 443 if request.scheme == "https" else 80
    name = host if ":" not in host or host.startswith("[") else f"[{host}]"
    value = name if port == default else f"{name}:{port}"
    if request.is_http2 or request.is_http3:
        request.authority = value
    else:
        request.authority = ""
        request.headers["host"] = value


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

    def count(chunk: bytes) -> list[bytes]:
        seen[0] += len(chunk)
        if seen[0] > limit:
            raise ValueError(f"request body larger than {limit} bytes")
        return [chunk] if chunk else []  # Never an empty chunk: it would end a chunked body.

    return count


async def _resolve(host: str, port: int) -> list[str]:
    import ipaddress

    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))
