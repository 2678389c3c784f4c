"""What `blastwall run` uses to reach the gateway: start it if needed, register a session.

The control connection stays open for the whole run; the gateway ends the
session (and removes its sockets) the moment it closes, so a session can never
outlive the run that created it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time

from blastwall.errors import EnforcementError

__all__ = ["GatewaySession", "gateway_dir", "register"]

START_TIMEOUT = 30.0


def gateway_dir(environ=os.environ) -> str:
    from blastwall.policy.load import state_dir

    return os.path.join(state_dir(environ), "gateway")


class GatewaySession:
    def __init__(self, sock: socket.socket, reply: dict) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")
        self.id = reply["session"]
        self.token = reply["token"]
        self.http_path = reply["http"]
        self.socks_path = reply["socks"]

    def _call(self, request: dict) -> dict:
        self._sock.sendall((json.dumps(request) + "\n").encode())
        line = self._file.readline()
        if not line:
            raise ConnectionError("the gateway closed the connection")
        return json.loads(line)

    def summary(self) -> dict | None:
        """What the gateway refused, or None if the gateway is gone."""
        try:
            return self._call({"op": "summary"})
        except (OSError, ValueError):
            return None

    def inject_fault(self) -> dict:
        return self._call({"op": "fault"})

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._sock.close()


def _connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    return sock


def _spawn(directory: str, environ) -> None:
    idle = environ.get("BLASTWALL_GATEWAY_IDLE", "300")
    log = open(os.path.join(directory, "gateway.log"), "ab")
    env = {k: v for k, v in environ.items()}
    subprocess.Popen(
        [sys.executable, "-m", "blastwall.egress.gateway", directory, idle],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True, close_fds=True,
    )
    log.close()


def _control(environ) -> socket.socket:
    directory = gateway_dir(environ)
    path = os.path.join(directory, "control.sock")
    sock = _connect(path)
    if sock is not None:
        return sock
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # One starter at a time: concurrent runs must not start two gateways.
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


def register(rules: dict, command: str, environ=os.environ) -> GatewaySession:
    """A new gateway session for ``rules``; starts the gateway if it is not running."""
    sock = _control(environ)
    try:
        sock.settimeout(START_TIMEOUT)
        sock.sendall((json.dumps({"op": "register", "rules": rules, "command": command}) + "\n").encode())
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        data = json.loads(reply or b"{}")
        if "error" in data or "session" not in data:
            raise EnforcementError(f"Can't register with the egress gateway: {data.get('error', 'no answer')}")
        sock.settimeout(None)
        return GatewaySession(sock, data)
    except (OSError, ValueError) as exc:
        sock.close()
        raise EnforcementError(f"Can't register with the egress gateway: {exc}") from None
