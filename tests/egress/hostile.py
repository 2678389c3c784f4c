"""A hostile HTTPS (or plain) upstream that records every byte it receives and answers as an attacker's server would.

It reads whatever arrives on a connection (all requests, pipelined or
smuggled: ``raw`` keeps the bytes) and answers by the first request's path:

* ``/gzip``, ``/deflate``, ``/br``, ``/zstd``: the ``x-api-key`` it got, in a
  body compressed that way;
* ``/compress``: an encoding nobody can read;
* ``/reason``: the key in the status line's reason phrase;
* ``/split``: a chunked body whose first chunk is a single byte and whose key
  is cut across chunks (a scrubber that sends an empty chunk ends the body);
* ``/trailer``: the key in a chunked trailer;
* ``/early-hints``: a ``103 Early Hints`` before the answer;
* ``/ws``: a WebSocket handshake, then a text message with the key;
* anything else: ``200 ok``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import socket
import ssl
import threading
import zlib

from tests.egress.upstreams import make_ca_and_cert


class Hostile:
    def __init__(self, directory, names=("api.test", "other.test", "plain.test"), *, tls: bool = True) -> None:
        self.raw: list[bytes] = []
        self.ca, cert, key = make_ca_and_cert(directory, list(names))
        self.context = None
        if tls:
            self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.context.load_cert_chain(cert, key)
            self.context.set_alpn_protocols(["http/1.1"])
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def requests(self) -> list[bytes]:
        """Each request head that arrived (across all connections), in order."""
        heads = []
        for data in self.raw:
            while b"\r\n\r\n" in data:
                head, data = data.split(b"\r\n\r\n", 1)
                heads.append(head)
        return [h for h in heads if h.strip()]

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn) -> None:
        try:
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            conn.settimeout(2)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            try:  # Whatever else comes at once (a smuggled second request).
                conn.settimeout(0.3)
                while chunk := conn.recv(65536):
                    data += chunk
            except (socket.timeout, OSError):
                pass
            self.raw.append(data)
            if not data:
                return
            head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            path = head.split(" ", 2)[1] if head.count(" ") >= 2 else "/"
            key = ""
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "x-api-key":
                    key = value.strip()
            conn.sendall(self._answer(path, key, head))
        except (OSError, ssl.SSLError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _answer(self, path: str, key: str, head: str) -> bytes:
        secret = f"your key is {key}".encode()

        def plain(body: bytes, extra: str = "", status: str = "200 OK") -> bytes:
            return (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
                    .encode() + body)

        if path == "/gzip":
            return plain(gzip.compress(secret), "Content-Encoding: gzip\r\n")
        if path == "/deflate":
            return plain(zlib.compress(secret), "Content-Encoding: deflate\r\n")
        if path == "/br":
            import brotli

            return plain(brotli.compress(secret), "Content-Encoding: br\r\n")
        if path == "/zstd":
            import zstandard

            return plain(zstandard.ZstdCompressor().compress(secret), "Content-Encoding: zstd\r\n")
        if path == "/compress":
            return plain(b"\x1f\x9d" + secret, "Content-Encoding: compress\r\n")
        if path == "/reason":
            return plain(b"ok", status=f"200 Welcome {key}")
        if path == "/split":
            chunks = [secret[:1], secret[1:9], secret[9:20], secret[20:]]
            body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body
        if path == "/trailer":
            body = b"%x\r\n%s\r\n" % (len(b"body"), b"body") + f"0\r\nX-Key: {key}\r\n\r\n".encode()
            return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Key\r\nConnection: close\r\n\r\n"
                    + body)
        if path == "/early-hints":
            return b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + plain(b"final")
        if path == "/ws":
            nonce = ""
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "sec-websocket-key":
                    nonce = value.strip()
            accept = base64.b64encode(hashlib.sha1((nonce + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode())
                                      .digest()).decode()
            frame = bytes([0x81, len(secret)]) + secret
            return (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode() + frame
        return plain(b"ok")

    def close(self) -> None:
        self._stop = True
        self.sock.close()
