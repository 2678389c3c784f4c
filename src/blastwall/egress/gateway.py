"""The long-lived gateway process: mitmproxy, the session registry, the control socket.

One gateway per user serves every sandbox of that user.  ``blastwall run``
starts it on demand (``python -m blastwall.egress.gateway``) and talks to it
over a control socket in the user's state directory (mode 0700):

* ``register`` (with the rules and the command; see ``protocol``) creates a session:
  a random id and token, the session's rules, and two unix sockets (HTTP proxy
  and SOCKS5) in a private directory.  With ``listen=ADDRESS`` (a container
  session's host-side veth address, 10.201.0.0/16 only) it also listens on
  TCP there: HTTP proxy, SOCKS5, a transparent listener (connections the
  session's firewall redirected from ports 80/443; decided by SNI/Host) and a
  DNS answerer on UDP (``dns``).  The session lives exactly as long as the
  control connection that created it.
* ``summary`` returns what the gateway refused for that session; ``ping``
  says the gateway is alive.

A connection accepted on a session's socket or listener is handed straight to
mitmproxy's mode server with a synthetic peer address, ("blastwall-session",
N), which no real socket can have; N maps to the session in the registry.  A
connection that did not come through a session's own listener has no session
and is refused.  The gateway exits after ``--idle`` seconds without sessions.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import sys
import time

from blastwall._unixpath import short
from blastwall.egress.decide import Rules

MAX_BLOCKED = 1000


def make_placeholder(value: str) -> str:
    """A random stand-in exactly as long as ``value``.

    The same length keeps Content-Length right when an upstream echoes the
    secret and the gateway swaps it back for the placeholder.
    """
    stem = "BLASTWALL_PLACEHOLDER_"
    random = secrets.token_hex(max(16, len(value)))
    text = (stem + random) if len(value) >= len(stem) + 16 else random
    return text[: len(value)] if len(value) >= 16 else text[:16]


class Session:
    def __init__(self, rules: Rules, command: str, directory: str, http_rules=(), credentials=None) -> None:
        self.id = secrets.token_hex(8)
        self.token = secrets.token_urlsafe(24)
        self.rules = rules
        self.connections: set = set()  # The session's open proxy connections (their writers), by _relay.
        self.command = command
        self.directory = directory
        self.http_rules = list(http_rules)
        self.credentials = dict(credentials or {})
        self.bound: set[str] = set()
        # Asking: "ask" sessions send questions over their control connection.
        self.unlisted = "deny"
        self.can_ask = False
        self.ask_timeout = 60.0
        self.answers: dict[tuple[str, int], bool] = {}  # Session- and workspace-scope answers.
        self.pending: dict[tuple[str, int], asyncio.Future] = {}
        self.questions: dict[str, asyncio.Future] = {}
        self.control: asyncio.StreamWriter | None = None
        self._question_serial = 0
        self.servers: list[asyncio.AbstractServer] = []
        self.transports: list[asyncio.BaseTransport] = []
        self.tcp_ports: dict[str, int] = {}
        self.dns_port: int | None = None
        self._blocked: list[dict] = []
        self.blocked_count = 0

    def update_network(self, allow: list[str], deny: list[str]) -> int:
        """The hosts the session may reach from now: ``allow`` replaces the allow list (its HTTP rules'
        hosts stay only if listed), ``deny`` is added to the deny list.  Whether it may widen is the
        caller's decision (the service checks the tenant's ceiling); ValueError for a malformed pattern.

        A change that takes anything away closes every open connection of the session: a connection
        is decided when it opens (and a TLS tunnel that is not decrypted, a WebSocket, raw TCP are never
        looked into again), so only closing it makes the change hold at once.  Clients reconnect and
        are decided under the new rules.  The number of connections closed."""
        import copy

        from blastwall.egress.decide import _split
        from blastwall.policy.hosts import normalize_host_pattern

        new_allow = [normalize_host_pattern(p) for p in allow]
        new_deny = [normalize_host_pattern(p) for p in deny]
        narrower = bool(new_deny) or any(old[2] not in new_allow for old in self.rules.allow)
        rules = copy.copy(self.rules)
        rules.allow = tuple(_split(p) for p in new_allow)
        rules.deny = self.rules.deny + tuple(_split(p) for p in new_deny)
        self.rules = rules
        if not narrower:
            return 0
        self.answers.clear()  # A person's yes was to the old rules.
        open_now = list(self.connections)
        for writer in open_now:
            writer.transport.abort()
        return len(open_now)

    async def ask(self, host: str, port: int, timeout: float) -> tuple[bool, str]:
        """Ask the run process about ``host:port``; one question for parallel identical requests.

        Returns (allowed, how).  No answer within ``timeout`` means deny.
        """
        from blastwall.egress.protocol import encode

        key = (host, port)
        if key in self.answers:
            return self.answers[key], "remembered"
        if not self.can_ask or self.control is None:
            return False, "no-one-to-ask"
        future = self.pending.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            self.pending[key] = future
            self._question_serial += 1
            qid = str(self._question_serial)
            self.questions[qid] = future
            try:
                self.control.write(encode("ask", [("id", qid), ("host", host), ("port", str(port))]))
                await self.control.drain()
            except (ConnectionError, OSError):
                self.pending.pop(key, None)
                return False, "no-one-to-ask"
            future.add_done_callback(lambda _f, k=key, q=qid: (self.pending.pop(k, None),
                                                              self.questions.pop(q, None)))
        try:
            allowed, scope = await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            if not future.done():
                future.set_result((False, "timeout"))
            return False, "timeout"
        return allowed, scope

    def answer(self, qid: str, allowed: bool, scope: str) -> None:
        future = self.questions.get(qid)
        if future is None or future.done():
            return
        if scope in ("session", "workspace"):
            for key, pending in self.pending.items():
                if pending is future:
                    self.answers[key] = allowed
        future.set_result((allowed, scope))

    def blocked(self, host, port, reason: str, detail: str = "") -> None:
        self.blocked_count += 1
        if len(self._blocked) < MAX_BLOCKED:
            self._blocked.append({"host": str(host), "port": port, "reason": reason, "detail": detail})

    def summary_fields(self) -> list[tuple[str, str]]:
        from blastwall.egress.protocol import pack

        fields = [("count", str(self.blocked_count))]
        for item in self._blocked:
            fields.append(("blocked", pack([item["host"], str(item["port"]), item["reason"], item["detail"]])))
        return fields


class Registry:
    """Sessions, and which relay connection belongs to which session."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self._by_port: dict[tuple[str, int], Session] = {}
        self._targets: dict[str, tuple[str, int]] = {}
        self._sni: dict[str, str | None] = {}
        self._decided: dict[tuple[str, str, int], object] = {}
        self._addresses: dict[tuple[str, str, int], tuple] = {}
        self.last_active = time.monotonic()

    # Keyed by listener kind and source port: a source port is unique only per
    # destination, and the HTTP and SOCKS listeners are different destinations.
    def session_for_port(self, kind: str, port: int) -> Session | None:
        return self._by_port.get((kind, port))

    def bind_port(self, kind: str, port: int, session: Session) -> None:
        self._by_port[(kind, port)] = session

    def unbind_port(self, kind: str, port: int) -> None:
        self._by_port.pop((kind, port), None)

    def set_target(self, client_id: str, host: str, port: int) -> None:
        self._targets[client_id] = (host, port)

    def target(self, client_id: str) -> tuple[str, int] | None:
        return self._targets.get(client_id)

    def set_sni(self, client_id: str, sni: str | None) -> None:
        self._sni[client_id] = sni

    def sni(self, client_id: str) -> str | None:
        return self._sni.get(client_id)

    def decided(self, client_id: str, host: str, port: int):
        return self._decided.get((client_id, host, port))

    def remember(self, client_id: str, host: str, port: int, verdict) -> None:
        self._decided[(client_id, host, port)] = verdict

    def address(self, client_id: str, host: str, port: int):
        """(verdict, address) checked for this connection's ``host:port``, or None."""
        return self._addresses.get((client_id, host, port))

    def set_address(self, client_id: str, host: str, port: int, checked: tuple) -> None:
        self._addresses[(client_id, host, port)] = checked

    def forget_client(self, client_id: str) -> None:
        self._targets.pop(client_id, None)
        self._sni.pop(client_id, None)
        for key in [k for k in self._decided if k[0] == client_id]:
            del self._decided[key]
        for key in [k for k in self._addresses if k[0] == client_id]:
            del self._addresses[key]


# The peer "address" a session connection shows to mitmproxy.  No real socket
# has this host, so a connection that reached mitmproxy's TCP listener some
# other way can never be mistaken for a session's.
SESSION_PEER = "blastwall-session"


class _SessionWriter(asyncio.StreamWriter):
    """A session connection's writer, presented to mitmproxy with a session identity.

    A real StreamWriter over the same transport (mitmproxy's transparent mode
    insists on one, to read the original destination from its socket).
    """

    def __init__(self, writer: asyncio.StreamWriter, number: int) -> None:
        super().__init__(writer.transport, writer._protocol, writer._reader, writer._loop)
        self._peer = (SESSION_PEER, number)

    def get_extra_info(self, name: str, default=None):
        if name == "peername":
            return self._peer
        if name == "sockname":
            return (SESSION_PEER, 0)
        return super().get_extra_info(name, default)


class Gateway:
    def __init__(self, state: str, *, idle: float) -> None:
        self.state = state
        self.idle = idle
        self.registry = Registry()
        self.master = None
        self.addon = None

    # -- mitmproxy ------------------------------------------------------------------
    async def start_proxy(self) -> None:
        from mitmproxy import master, options
        from mitmproxy.addons import core, disable_h2c, proxyserver, tlsconfig

        from blastwall.audit.log import AuditLog, BackgroundAppender, default_path
        from blastwall.egress.addon import Gatekeeper

        _drop_interim_responses()
        _decide_socks_before_replying()
        opts = options.Options()
        self.master = master.Master(opts, event_loop=asyncio.get_running_loop())
        self.audit = BackgroundAppender(AuditLog(os.environ.get("BLASTWALL_AUDIT_DB") or default_path()))
        self.addon = Gatekeeper(self.registry, self.audit)
        self.tls = tlsconfig.TlsConfig()
        # No NextLayer addon: the Gatekeeper chooses every next layer itself (no raw fallback where it reads).
        self.master.addons.add(core.Core(), proxyserver.Proxyserver(), disable_h2c.DisableH2C(), self.tls,
                               _SocksAuthOption(), self.addon)
        confdir = self._ephemeral_ca_dir()
        http_port, socks_port, transparent_port = _free_ports(3)
        opts.update(
            # The listeners on loopback only exist because mitmproxy's mode
            # servers need one; connections reach them with no session and are refused.
            mode=[f"regular@127.0.0.1:{http_port}", f"socks5@127.0.0.1:{socks_port}",
                  f"transparent@127.0.0.1:{transparent_port}"],
            # Connect upstream only when the client's first bytes arrived, so
            # that the TLS SNI is known and checked before any connection.
            connection_strategy="lazy",
            # Makes mitmproxy ask SOCKS5 clients for credentials; our addon
            # checks them against the session token.
            proxyauth="blastwall-session-token",
            ssl_insecure=False,
            upstream_cert=False,
            http3=False,
            rawtcp=True,
            # Stream bodies instead of buffering them whole: large downloads and
            # uploads pass through with bounded memory.
            stream_large_bodies="64k",
            confdir=confdir,
            ssl_verify_upstream_trusted_ca=self._write_upstream_trust(),
        )
        self._task = asyncio.create_task(self.master.run())
        ps = self.master.addons.get("proxyserver")
        for _ in range(200):
            if self._task.done():
                self._task.result()
                raise RuntimeError("mitmproxy stopped while starting")
            servers = list(ps.servers)
            if servers and all(s.is_running for s in servers):
                break
            await asyncio.sleep(0.01)
        self.instances = {}
        for instance in ps.servers:
            kind = {"socks5": "socks", "transparent": "transparent"}.get(instance.mode.type_name, "http")
            self.instances[kind] = instance
        # Only now is the certificate store final (mitmproxy configures its
        # addons again as it starts running).
        self._client_bundle()

    # -- TLS ---------------------------------------------------------------------------
    def _ephemeral_ca_dir(self) -> str:
        """A fresh private directory where mitmproxy generates this gateway's CA.

        Every gateway start makes a new CA, removed when the gateway exits.
        The directory is inside the state directory (0700), which every sandbox
        has hidden; sandboxes only ever get the CA's certificate.
        """
        path = os.path.join(self.state, "ca")
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, mode=0o700)
        self._ca_dir = path
        return path

    def _client_bundle(self) -> None:
        """The system's CAs plus this gateway's, for clients inside sandboxes."""
        ca_pem = self.tls.certstore.default_ca.to_pem().decode()
        with open(_system_ca_file()) as f:
            system = f.read()
        self.client_bundle = system.rstrip("\n") + "\n" + ca_pem

    def _write_upstream_trust(self) -> str:
        """The CA file upstream servers are verified against, under a new name per content.

        mitmproxy caches TLS contexts by the file's *path*, so a changed file
        needs a new path to take effect.
        """
        import hashlib

        with open(_system_ca_file()) as f:
            parts = [f.read()]
        parts += sorted(getattr(self, "_upstream_cas", {}).values())
        text = "\n".join(p.rstrip("\n") for p in parts) + "\n"
        path = os.path.join(self.state, f"upstream-trust-{hashlib.sha256(text.encode()).hexdigest()[:16]}.pem")
        if not os.path.exists(path):
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.replace(path + ".tmp", path)
        return path

    def _trust_upstream(self, ca_path: str) -> None:
        """Add a session's ``network.upstream_ca`` to the CAs upstream servers are verified with.

        It applies gateway-wide, that is to every session of this user.
        """
        with open(ca_path) as f:
            pem = f.read(1 << 20)
        if "BEGIN CERTIFICATE" not in pem:
            raise ValueError(f"{ca_path} holds no PEM certificate")
        cas = getattr(self, "_upstream_cas", {})
        if cas.get(ca_path) != pem:
            cas[ca_path] = pem
            self._upstream_cas = cas
            self.master.options.update(ssl_verify_upstream_trusted_ca=self._write_upstream_trust())

    # -- sessions -----------------------------------------------------------------------
    async def register(self, fields: dict[str, list[str]]) -> Session:
        from blastwall.egress.protocol import unpack

        from blastwall.egress.messages import Credential, HttpRule

        resolve = {}
        for item in fields.get("resolve", []):
            name, addr = unpack(item)
            resolve[name] = addr
        def listed(packed: str):
            return None if packed == "*" else [item for item in unpack(packed) if item]

        http_rules = []
        for item in fields.get("rule", []):
            host, methods, paths, limit, credential, headers, query, cookies = unpack(item)
            http_rules.append(HttpRule(host=host, methods=listed(methods), paths=listed(paths),
                                       max_body_bytes=int(limit) if limit else None, credential=credential,
                                       headers=listed(headers) or (), query=listed(query) or (),
                                       cookies=listed(cookies) or ()))
        credentials = {}
        for item in fields.get("credential", []):
            name, value, header, template, hosts = unpack(item)
            credentials[name] = Credential(name=name, value=value, placeholder=make_placeholder(value),
                                           hosts=listed(hosts), header=header, template=template)
        # A rule grants its host: it is an allow entry with restrictions.
        allow = list(fields.get("allow", [])) + [rule.host[2] for rule in http_rules]
        rules = Rules(allow=allow, deny=fields.get("deny", []), resolve=resolve, trusted=fields.get("trusted", []),
                      passthrough=fields.get("passthrough", []), grants=bool(http_rules or credentials))
        for ca in fields.get("upstream_ca", []):
            self._trust_upstream(ca)
        directory = os.path.join(self.state, "sessions", secrets.token_hex(8))
        os.makedirs(directory, mode=0o700)
        session = Session(rules, (fields.get("command") or [""])[0][:2048], directory, http_rules, credentials)
        session.unlisted = (fields.get("unlisted") or ["deny"])[0]
        session.can_ask = (fields.get("ask") or ["none"])[0] != "none"
        session.ask_timeout = min(max(float((fields.get("ask_timeout") or ["60"])[0]), 0.0), 3600.0)
        for item in fields.get("approved", []) + fields.get("refused", []):
            host, port = unpack(item)
            session.answers[(host, int(port))] = item in fields.get("approved", [])
        if http_rules or credentials:
            with open(os.path.join(directory, "ca-bundle.pem"), "w") as f:
                f.write(self.client_bundle)
        self.registry.sessions[session.id] = session
        try:
            for kind in ("http", "socks"):
                with short(os.path.join(directory, f"{kind}.sock")) as path:
                    server = await asyncio.start_unix_server(
                        lambda r, w, k=kind, s=session: self._relay(r, w, k, s), path=path)
                session.servers.append(server)
            listen = (fields.get("listen") or [""])[0]
            if listen:
                await self._listen(session, _session_address(listen))
        except BaseException:
            await self.unregister(session)
            raise
        return session

    async def _listen(self, session: Session, address: str) -> None:
        """TCP listeners and the DNS answerer on a container session's own address."""
        from blastwall.egress.dns import answer

        for kind in ("http", "socks", "transparent"):
            server = await asyncio.start_server(
                lambda r, w, k=kind, s=session: self._relay(r, w, k, s), host=address, port=0,
                reuse_address=True)
            session.servers.append(server)
            session.tcp_ports[kind] = server.sockets[0].getsockname()[1]

        class Answerer(asyncio.DatagramProtocol):
            def connection_made(self, transport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, peer) -> None:
                reply = answer(data, address)
                if reply is not None:
                    self.transport.sendto(reply, peer)

        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Answerer, local_addr=(address, 0))
        session.transports.append(transport)
        session.dns_port = transport.get_extra_info("sockname")[1]

    async def unregister(self, session: Session) -> None:
        self.registry.sessions.pop(session.id, None)
        for server in session.servers:
            server.close()
        for transport in session.transports:
            transport.close()
        shutil.rmtree(session.directory, ignore_errors=True)
        self.registry.last_active = time.monotonic()

    async def _relay(self, reader, writer, kind: str, session: Session) -> None:
        """Hand a session socket's connection straight to mitmproxy's mode server."""
        if session.id not in self.registry.sessions:
            writer.close()
            return
        self._serial = (getattr(self, "_serial", 0) + 1) % (1 << 31)
        number = self._serial
        self.registry.bind_port(kind, number, session)
        session.connections.add(writer)  # update_network closes it if the rules narrow.
        try:
            await self.instances[kind].handle_stream(reader, _SessionWriter(writer, number))
        finally:
            session.connections.discard(writer)
            self.registry.unbind_port(kind, number)
            writer.close()

    # -- control ------------------------------------------------------------------------
    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from blastwall.egress.protocol import ProtocolError, decode, encode

        session = None
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # Longer than the stream's limit.
                    break
                if not line:
                    break
                try:
                    verb, fields = decode(line)
                except ProtocolError as exc:
                    writer.write(encode("error", [("message", f"bad request: {exc}")]))
                    await writer.drain()
                    continue
                if verb == "register" and session is None:
                    try:
                        session = await self.register(fields)
                    except (ValueError, TypeError, KeyError, OSError) as exc:
                        reply = encode("error", [("message", f"bad rules: {exc}")])
                    else:
                        from blastwall.egress.protocol import pack

                        answer = [("session", session.id), ("token", session.token),
                                  ("http", os.path.join(session.directory, "http.sock")),
                                  ("socks", os.path.join(session.directory, "socks.sock"))]
                        if session.http_rules or session.credentials:
                            answer.append(("ca", os.path.join(session.directory, "ca-bundle.pem")))
                        answer += [("placeholder", pack([c.name, c.placeholder]))
                                   for c in session.credentials.values()]
                        answer += [("tcp", pack([kind, str(port)])) for kind, port in session.tcp_ports.items()]
                        if session.dns_port:
                            answer.append(("dns", str(session.dns_port)))
                        reply = encode("ok", answer)
                        session.control = writer
                elif verb == "answer" and session is not None:
                    session.answer((fields.get("id") or [""])[0], (fields.get("decision") or [""])[0] == "allow",
                                   (fields.get("scope") or ["once"])[0])
                    continue  # No reply: answers are one-way.
                elif verb == "network" and session is not None:
                    try:
                        closed = session.update_network(fields.get("allow", []), fields.get("deny", []))
                    except (ValueError, TypeError) as exc:
                        reply = encode("error", [("message", f"bad rules: {exc}")])
                    else:
                        reply = encode("ok", [("closed", str(closed))])
                elif verb == "summary" and session is not None:
                    reply = encode("ok", session.summary_fields())
                elif verb == "ping":
                    reply = encode("ok", [("pid", str(os.getpid())), ("sessions", str(len(self.registry.sessions)))])
                elif verb == "fault" and os.environ.get("BLASTWALL_GATEWAY_TEST_FAULTS") == "1":
                    # Test hook: make the decision code raise, to prove it fails closed.
                    self.addon.fault = RuntimeError("injected fault")
                    reply = encode("ok", [("fault", "1")])
                else:
                    reply = encode("error", [("message", f"unexpected {verb!r}")])
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if session is not None:
                await self.unregister(session)
            writer.close()

    async def serve(self) -> None:
        await self.start_proxy()
        control_path = os.path.join(self.state, "control.sock")
        tmp_path = control_path + f".{os.getpid()}"
        with short(tmp_path) as path:
            server = await asyncio.start_unix_server(self.control, path=path)
        os.chmod(tmp_path, 0o600)
        os.replace(tmp_path, control_path)  # Atomic: clients never see a half-ready gateway.
        our_inode = os.stat(control_path).st_ino
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            while not stop.is_set():
                if self._task.done():
                    break
                if not self.registry.sessions and time.monotonic() - self.registry.last_active > self.idle:
                    break
                try:
                    await asyncio.wait_for(stop.wait(), timeout=0.5)
                except asyncio.TimeoutError:
                    pass
        finally:
            server.close()
            try:
                if os.stat(control_path).st_ino == our_inode:  # Not a newer gateway's socket.
                    os.unlink(control_path)
            except OSError:
                pass
            for session in list(self.registry.sessions.values()):
                await self.unregister(session)
            self.master.shutdown()
            try:
                await asyncio.wait_for(self._task, timeout=5)
            except (asyncio.TimeoutError, Exception):
                pass
            self.audit.close()
            shutil.rmtree(getattr(self, "_ca_dir", ""), ignore_errors=True)


def _drop_interim_responses() -> None:
    """Let a final HTTP/1 response through after interim ``1xx`` ones (``103 Early Hints``).

    mitmproxy 11 takes the first response head from a server as the
    response, so after a ``103`` the real one was "unexpected data" and the
    connection was closed.  The interim heads (all 1xx but 101, which
    switches protocols) are dropped from the server's buffer before mitmproxy
    reads it; the client gets the final response.  (A proxy should forward
    them, but mitmproxy has one response per request.)
    """
    import re

    from mitmproxy.proxy import events
    from mitmproxy.proxy.layers.http._http1 import Http1Client

    if getattr(Http1Client.read_headers, "blastwall", False):
        return
    interim = re.compile(rb"HTTP/1\.[01] 1(?!01)[0-9][0-9][^\r\n]*\r?\n(?:[^\r\n]+\r?\n)*\r?\n")
    original = Http1Client.read_headers

    def read_headers(self, event):
        if isinstance(event, events.DataReceived) and self.request:
            while interim.match(bytes(self.buf)):
                self.buf.maybe_extract_lines()  # Exactly that head: it ends at its blank line.
        yield from original(self, event)

    read_headers.blastwall = True
    Http1Client.read_headers = read_headers


def _decide_socks_before_replying() -> None:
    """Make a SOCKS5 request's decision before mitmproxy answers it, so a refusal is a reply code.

    With the lazy connection strategy (which the rest of the gateway needs:
    the TLS SNI must be known before an HTTP CONNECT tunnel connects),
    mitmproxy answers a SOCKS5 request "succeeded" at once and refuses only
    when the client's first bytes arrive, and pip and npm retry TLS for a
    minute.  For SOCKS5 only, the upstream connection is opened before the
    answer: ``server_connect`` decides (name, resolution, address), and a
    refusal is answered with reply code 4 and the connection closed.  The
    SNI, unknown then, is checked against the SOCKS destination in
    ``tls_clienthello``.
    """
    from mitmproxy.proxy import commands
    from mitmproxy.proxy.layers.modes import Socks5Proxy

    if getattr(Socks5Proxy.finish_start, "blastwall", False):
        return
    original = Socks5Proxy.finish_start

    def finish_start(self):
        if self.context.server.address and self.context.server.transport_protocol == "tcp" \
                and not self.context.server.connected:
            err = yield commands.OpenConnection(self.context.server)
            if err:
                self._handle_event = self.done
                return err
        return (yield from original(self))

    finish_start.blastwall = True
    Socks5Proxy.finish_start = finish_start


def _session_address(value: str) -> str:
    """A container session's listen address: an IPv4 address in blastwall's own range, nothing else."""
    import ipaddress

    address = ipaddress.IPv4Address(value)
    if address not in ipaddress.IPv4Network("10.201.0.0/16"):
        raise ValueError(f"{value} is outside the session range")
    return str(address)


def _system_ca_file() -> str:
    import ssl

    for path in (ssl.get_default_verify_paths().cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if path and os.path.exists(path):
            return path
    import certifi

    return certifi.where()


def _free_ports(count: int) -> list[int]:
    import socket

    socks, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class _SocksAuthOption:
    """Declares mitmproxy's ``proxyauth`` option without its ProxyAuth addon.

    The SOCKS5 layer asks clients for a username and password only when the
    option is set; our Gatekeeper validates the answer.
    """

    def load(self, loader) -> None:
        from typing import Optional

        loader.add_option("proxyauth", Optional[str], None, "Require SOCKS5 credentials (blastwall).")


def main(argv: list[str]) -> int:
    import logging

    state = argv[0]
    idle = float(argv[1]) if len(argv) > 1 else 300.0
    logging.basicConfig(level=os.environ.get("BLASTWALL_GATEWAY_LOG", "WARNING"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.makedirs(os.path.join(state, "sessions"), mode=0o700, exist_ok=True)
    os.chmod(state, 0o700)
    asyncio.run(Gateway(state, idle=idle).serve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
