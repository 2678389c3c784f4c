"""What `blastwall run` uses to reach the gateway: start it if needed, register a session.

The control connection stays open for the whole run; the gateway ends the
session (and removes its sockets) the moment it closes, so a session can never
outlive the run that created it.
"""

from __future__ import annotations

import os
import sys
import time

import _socket  # The C module: `socket` costs ~5 ms to import on this path.

from blastwall.egress.protocol import ProtocolError, decode, encode, pack, unpack
from blastwall.errors import EnforcementError

__all__ = ["GatewaySession", "connect", "gateway_dir", "register", "sandbox_environment"]

START_TIMEOUT = 30.0


def gateway_dir(environ=os.environ) -> str:
    from blastwall.policy.load import state_dir

    return os.path.join(state_dir(environ), "gateway")


def _readline(sock) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the gateway closed the connection")
        data += chunk
        if len(data) > (1 << 22):
            raise ConnectionError("reply too long")
    return data


def call(sock, verb: str, fields: list[tuple[str, str]]) -> dict[str, list[str]]:
    """One request and its reply on a control connection; raises on error replies."""
    sock.sendall(encode(verb, fields))
    status, reply = decode(_readline(sock))
    if status != "ok":
        raise ProtocolError((reply.get("message") or ["error"])[0])
    return reply


class GatewaySession:
    def __init__(self, sock, reply: dict[str, list[str]], *, broker=None, workspace: str = "",
                 environ=os.environ) -> None:
        self._sock = sock
        self._broker = broker
        self._workspace = workspace
        self._environ = environ
        self._reader = None
        self._send_lock = None
        self.id = reply["session"][0]
        self.token = reply["token"][0]
        self.http_path = reply["http"][0]
        self.socks_path = reply["socks"][0]
        self.ca_bundle = (reply.get("ca") or [None])[0]
        self.placeholders = dict(unpack(item) for item in reply.get("placeholder", []))
        # Container sessions: the gateway's TCP ports on the session's address, and its DNS port.
        self.tcp_ports = {kind: int(port) for kind, port in (unpack(item) for item in reply.get("tcp", []))}
        self.dns_port = int(reply["dns"][0]) if reply.get("dns") else None
        if broker is not None:
            self._start_answering()

    # Questions from the gateway arrive on the control connection at any time;
    # with a broker, a reader thread owns the socket and hands replies over.
    def _start_answering(self) -> None:
        import queue
        import threading

        self._replies: queue.Queue = queue.Queue()
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_loop, name="blastwall-approvals", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        import threading

        buffer = b""
        while True:
            try:
                chunk = self._sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                self._replies.put(None)
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    verb, fields = decode(line + b"\n")
                except ProtocolError:
                    continue
                if verb == "ask":
                    threading.Thread(target=self._answer, args=(fields,), daemon=True).start()
                else:
                    self._replies.put((verb, fields))

    def _answer(self, fields: dict[str, list[str]]) -> None:
        qid = (fields.get("id") or [""])[0]
        host = (fields.get("host") or [""])[0]
        port = int((fields.get("port") or ["0"])[0] or 0)
        try:
            allowed, scope = self._broker.decide(host, port)
        except Exception:  # noqa: BLE001 - a broken broker denies
            allowed, scope = False, "once"
        if scope == "workspace" and self._workspace:
            from blastwall.approvals.store import ApprovalStore

            ApprovalStore(self._environ).remember(self._workspace, host, port, allowed)
        message = encode("answer", [("id", qid), ("decision", "allow" if allowed else "deny"), ("scope", scope)])
        with self._send_lock:
            try:
                self._sock.sendall(message)
            except OSError:
                pass

    def _call(self, verb: str, fields) -> dict[str, list[str]]:
        if self._reader is None:
            return call(self._sock, verb, fields)
        import queue

        with self._send_lock:
            self._sock.sendall(encode(verb, fields))
        try:
            item = self._replies.get(timeout=10)
        except queue.Empty:
            raise ConnectionError("the gateway did not answer") from None
        if item is None:
            raise ConnectionError("the gateway closed the connection")
        status, reply = item
        if status != "ok":
            raise ProtocolError((reply.get("message") or ["error"])[0])
        return reply

    def update_network(self, allow, deny=()) -> None:
        """Replace the session's allow list and add to its deny list, for new requests at once."""
        self._call("network", [("allow", host) for host in allow] + [("deny", host) for host in deny])

    def summary(self) -> dict | None:
        """What the gateway refused, or None if the gateway is gone."""
        try:
            reply = self._call("summary", [])
        except (OSError, ValueError):
            return None
        blocked = []
        for item in reply.get("blocked", []):
            host, port, reason, detail = unpack(item)
            blocked.append({"host": host, "port": port, "reason": reason, "detail": detail})
        return {"blocked": blocked, "blocked_count": int((reply.get("count") or ["0"])[0])}

    def close(self) -> None:
        try:
            self._sock.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


def _connect(path: str):
    from blastwall._unixpath import short

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        with short(path) as name:
            sock.connect(name)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except OSError:
        sock.close()
        raise
    return sock


def _spawn(directory: str, environ) -> None:
    import subprocess  # Only when the gateway must be started.

    idle = environ.get("BLASTWALL_GATEWAY_IDLE", "300")
    log = open(os.path.join(directory, "gateway.log"), "ab")
    env = {k: v for k, v in environ.items()}
    # Through a shell that backgrounds it and exits: the gateway is nobody's
    # child, so a long-lived caller (the service) never collects its zombie.
    starter = subprocess.Popen(
        ["/bin/sh", "-c", '"$@" &', "sh", sys.executable, "-m", "blastwall.egress.gateway", directory, idle],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True, close_fds=True,
    )
    log.close()
    starter.wait()


def _control(environ):
    directory = gateway_dir(environ)
    path = os.path.join(directory, "control.sock")
    sock = _connect(path)
    if sock is not None:
        return sock
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # One starter at a time: concurrent runs must not start two gateways.
    import fcntl

    with open(os.path.join(directory, "start.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = _connect(path)
        if sock is not None:
            return sock
        try:
            os.unlink(path)  # A stale socket of a gateway that died.
        except FileNotFoundError:
            pass
        _spawn(directory, environ)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            sock = _connect(path)
            if sock is not None:
                return sock
            time.sleep(0.02)
    raise EnforcementError(
        f"Can't start the egress gateway (see {os.path.join(directory, 'gateway.log')})",
        fix="check that mitmproxy is installed (pip install 'blastwall[egress]'); the sandbox was not started",
    )


def read_secret(name: str, origin: str, environ) -> str:
    """A credential's value, read on the host; it goes to the gateway, never the sandbox."""
    kind, _, ref = origin.partition(":")
    value = None
    if kind == "env":
        value = environ.get(ref)
    elif kind == "file":
        path = os.path.expanduser(ref)
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read(65536).strip()
        except OSError as exc:
            raise EnforcementError(f"Can't read credential {name} from {path}: {exc.strerror}") from None
    elif kind == "keyring":
        import subprocess

        service, _, account = ref.partition("/")
        try:
            out = subprocess.run(["secret-tool", "lookup", "service", service, "username", account],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EnforcementError(f"Can't read credential {name} from the keyring: {exc}",
                                   fix="install libsecret-tools (secret-tool) or use env: or file:") from None
        value = out.stdout.strip() if out.returncode == 0 else None
    if not value:
        raise EnforcementError(f"Can't use credential {name}: {origin} is empty or not set",
                               fix=f"set it, or remove [credentials.{name}] from the policy")
    if "\n" in value or "\r" in value:
        raise EnforcementError(f"Can't use credential {name}: its value spans several lines")
    return value


def register(rules: dict, command: str, environ=os.environ, *, broker=None, workspace: str = "",
             listen: str | None = None) -> GatewaySession:
    """A new gateway session for ``rules``; starts the gateway if it is not running.

    With ``broker``, the gateway may ask about hosts the rules do not list
    (``network.unlisted = "ask"``); answers remembered for ``workspace`` are sent along.
    With ``listen`` (a container session's host-side address), the gateway also
    listens there on TCP (``tcp_ports``) and answers DNS (``dns_port``).
    """
    fields = [("allow", a) for a in rules.get("allow", ())]
    fields += [("deny", d) for d in rules.get("deny", ())]
    fields += [("resolve", pack([name, addr])) for name, addr in (rules.get("resolve") or {}).items()]
    fields += [("trusted", t) for t in rules.get("trusted_addresses", ())]
    def listed(items) -> str:
        # A list inside a field: packed again (a path may hold a comma); "*" for "any".
        return "*" if items is None else pack(list(items))

    for rule in rules.get("rules", ()):
        fields.append(("rule", pack([rule["host"], listed(rule["methods"]), listed(rule["paths"]),
                                     "" if rule["max_body_bytes"] is None else str(rule["max_body_bytes"]),
                                     rule["credential"] or "", listed(rule.get("headers") or ()),
                                     listed(rule.get("query") or ()), listed(rule.get("cookies") or ())])))
    for cred in rules.get("credentials", ()):
        fields.append(("credential", pack([cred["name"], read_secret(cred["name"], cred["from"], environ),
                                           cred["header"], cred["template"], listed(cred["hosts"])])))
    fields += [("passthrough", p) for p in rules.get("passthrough", ())]
    if rules.get("upstream_ca"):
        fields.append(("upstream_ca", rules["upstream_ca"]))
    fields.append(("unlisted", rules.get("unlisted", "deny")))
    fields.append(("ask", "yes" if broker is not None else "none"))
    timeout = environ.get("BLASTWALL_ASK_TIMEOUT", "60")
    fields.append(("ask_timeout", timeout if timeout.replace(".", "", 1).isdigit() else "60"))
    if rules.get("unlisted") == "ask" and workspace:
        from blastwall.approvals.store import ApprovalStore

        for entry in ApprovalStore(environ).entries(workspace):
            key = "approved" if entry["decision"] == "allow" else "refused"
            fields.append((key, pack([entry["host"], str(entry["port"])])))
    fields.append(("command", command))
    if listen:
        fields.append(("listen", listen))
    sock = _control(environ)
    try:
        sock.settimeout(START_TIMEOUT)
        reply = call(sock, "register", fields)
        sock.settimeout(None)
        return GatewaySession(sock, reply, broker=broker, workspace=workspace, environ=environ)
    except (OSError, ValueError, KeyError) as exc:
        sock.close()
        raise EnforcementError(f"Can't register with the egress gateway: {exc}") from None


# Where common clients look for extra CA certificates (the gateway's, when it decrypts).  SSL_CERT_FILE
# serves OpenSSL, Go, Ruby, and Rust tools using native roots (uv, reqwest, rustls-native-certs); the
# others are the tools' own: requests, curl, Node, git, pip, boto/aws, Deno, cargo.  Java reads no
# variable (its truststore is a keystore): see docs/security.md.
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO",
                "PIP_CERT", "AWS_CA_BUNDLE", "DENO_CERT", "CARGO_HTTP_CAINFO")


def proxy_environment(host: str, token: str, ports: dict[str, int], *, ca: str | None = None) -> dict[str, str]:
    """Variables that point every common client at a session's gateway listeners (``ports``: http, socks)."""
    http = f"http://blastwall:{token}@{host}:{ports['http']}"
    socks = f"socks5h://blastwall:{token}@{host}:{ports['socks']}"
    env = {}
    for name in ("HTTP_PROXY", "HTTPS_PROXY"):
        env[name] = env[name.lower()] = http
    # ALL_PROXY is the HTTP proxy too: some clients (httpx) refuse a socks5h:// URL there and fail whole.
    env["ALL_PROXY"] = env["all_proxy"] = http
    env["BLASTWALL_SOCKS_PROXY"] = socks  # SOCKS5, for the tools that want it.
    env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1,::1"
    env["npm_config_proxy"] = env["npm_config_https_proxy"] = http
    env["NODE_USE_ENV_PROXY"] = "1"
    env["BLASTWALL_PROXY"] = http
    if ca:
        env.update({name: ca for name in CA_VARIABLES})
    return env


def connect(plan, *, label: str, environ=os.environ, broker=None, workspace: str = "", listen: str | None = None):
    """The gateway session for ``plan`` (registered now), or None when the plan grants no network.

    Every tier wires a sandbox to the gateway with this and ``sandbox_environment``;
    only how the sandbox reaches the listeners differs (relays, a veth, QEMU's forwards).
    """
    from blastwall.policy import plan as P

    egress = plan.of(P.Egress)
    if not egress:
        return None
    return register(egress[0].rules(), label[:2048], environ, broker=broker, workspace=workspace, listen=listen)


def sandbox_environment(gateway, *, host: str, ports: dict[str, int], ca_path: str) -> dict[str, str]:
    """What the sandbox's commands get to use ``gateway`` at ``host``: the proxy variables, each credential's
    placeholder (the gateway swaps in the value), and ``ca_path`` for the CA variables when the gateway
    decrypts (the tier puts the gateway's bundle there)."""
    env = proxy_environment(host, gateway.token, ports, ca=ca_path if gateway.ca_bundle else None)
    env.update(gateway.placeholders)
    return env

