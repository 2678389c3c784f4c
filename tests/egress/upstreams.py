"""Upstream servers for egress tests, on the host's loopback only.

``Upstream`` serves HTTP and HTTPS (with its own CA, given to clients and to
the gateway through ``network.upstream_ca`` later) and records every request
it receives, so a test can check that a refused request never arrived.
"""

from __future__ import annotations

import datetime
import http.server
import os
import socket
import socketserver
import ssl
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_ca_and_cert(directory, names):
    """A CA and a server certificate for ``names``; returns (ca_pem_path, cert_path, key_path)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # A unique name per CA: verifiers look issuers up by name first.
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"blastwall test CA {os.urandom(4).hex()}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = [os.path.join(directory, n) for n in ("ca.pem", "cert.pem", "key.pem")]
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


class _Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # Quiet.
        pass

    def _record(self):
        body = b""
        if "Content-Length" in self.headers:
            body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.upstream.requests.append((self.command, self.path, dict(self.headers), body))

    def do_GET(self):
        self._record()
        if self.server.upstream.root and self.path != "/hello":
            return super().do_GET()
        payload = b"hello from upstream\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self):
        self._record()
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def translate_path(self, path):
        rel = path.split("?", 1)[0].lstrip("/")
        return os.path.join(self.server.upstream.root, rel)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Upstream:
    """HTTP on ``http_port`` and HTTPS on ``https_port``; ``requests`` lists what arrived."""

    def __init__(self, directory, names=("api.test", "other.test"), root=None, host="127.0.0.1",
                 ports=(0, 0)) -> None:
        self.requests: list = []
        self.root = root
        self.ca, cert, key = make_ca_and_cert(directory, list(names))
        self._servers = []
        for tls, port in zip((False, True), ports):
            server = _Server((host, port), _Handler)
            server.upstream = self
            if tls:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(cert, key)
                server.socket = ctx.wrap_socket(server.socket, server_side=True)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers.append(server)
        self.http_port = self._servers[0].server_address[1]
        self.https_port = self._servers[1].server_address[1]

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()


class Echo:
    """A raw TCP echo server for tunnel tests."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn):
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def close(self):
        self.sock.close()


class AsgiUpstream:
    """An HTTPS upstream on hypercorn: HTTP/1.1, HTTP/2 and WebSocket, recording what arrives.

    ``/echo-key`` answers with the x-api-key it received (in a header and the
    body), like an API that reflects credentials back.
    """

    def __init__(self, directory, names=("api.test", "other.test")) -> None:
        import asyncio

        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        self.requests: list = []
        self.ca, cert, key = make_ca_and_cert(directory, list(names))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.certfile, config.keyfile = cert, key
        config.accesslog = config.errorlog = None
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        ready = threading.Event()

        async def main():
            self._stop = asyncio.Event()
            ready.set()
            await serve(self.app, config, shutdown_trigger=self._stop.wait)

        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(main(),), daemon=True)
        self._thread.start()
        ready.wait(10)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                threading.Event().wait(0.02)

    async def app(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        if scope["type"] == "websocket":
            self.requests.append(("WEBSOCKET", scope["path"], headers, scope.get("http_version")))
            await receive()
            await send({"type": "websocket.accept"})
            while True:
                message = await receive()
                if message["type"] != "websocket.receive":
                    return
                await send({"type": "websocket.send", "text": "echo: " + (message.get("text") or "")})
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests.append((scope["method"], scope["path"], headers, scope["http_version"], len(body)))
        key = headers.get("x-api-key", "")
        if scope["path"] == "/echo-key":
            payload = f"you sent {key}".encode()
            extra = [(b"x-echo", key.encode())]
        else:
            payload = f"http/{scope['http_version']} {scope['method']} {scope['path']}".encode()
            extra = []
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(payload)).encode()), *extra]})
        await send({"type": "http.response.body", "body": payload})

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
