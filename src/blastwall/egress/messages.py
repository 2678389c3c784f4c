"""Every decision about an HTTP message the gateway can read, as pure functions: no sockets, no mitmproxy.

For each request on a connection the gateway decrypted or reads in plain:

1. ``check_form``: strict HTTP in.  What has more than one meaning is
   refused: control characters in any header name or value (on every
   protocol: an HTTP/2 value with CR or LF would become a second header, or a
   second request, on the HTTP/1.1 side), several or folded ``Host`` headers,
   a ``Host`` that is not ``name[:port]``, a request without one, a target
   with a fragment, non-ASCII or control characters.
2. ``normalize_path``: the one path rules are matched on and that is
   forwarded.  Unreserved characters written as percent-escapes are decoded
   (``%61`` is ``a``); on a ruled host what servers could read differently is
   refused: dot segments, encoded dots, slashes, backslashes or percent signs
   (double encoding), empty segments, ``;`` parameters, invalid UTF-8 (overlong
   forms) and characters that Unicode normalisation would change (fullwidth
   dots).
3. ``check_request``: the host's ``[[network.rules]]``: method, path, body size.
4. ``check_binding``: on a host whose rule binds a credential, the request
   carries that credential and nothing that could serve as another one:
   headers only from ``SAFE_HEADERS`` plus what the rule names, query keys and
   cookies only what the rule names.  Never a list of dangerous names: it
   would never be complete.

``Scrubber`` puts placeholders back wherever a real credential value would
reach the sandbox in a response body, across chunk boundaries.
"""

from __future__ import annotations

import unicodedata

from blastwall.egress.decide import Verdict, _matches, _split, normalize_target_host
from blastwall.egress.reasons import EgressReason as R
from blastwall.policy.hosts import HostPatternError

__all__ = ["METHOD_OVERRIDES", "SAFE_HEADERS", "Credential", "HttpRule", "Scrubber", "check_binding", "check_form",
           "check_request", "cookie_names", "host_of", "normalize_path", "path_matches", "query_keys"]

# Request headers that carry no credential and no routing of their own: what
# passes to a host whose rule binds a credential, besides the rule's own
# ``headers``.  Content negotiation, caching, ranges, framing, tracing.
SAFE_HEADERS = frozenset({
    "accept", "accept-charset", "accept-encoding", "accept-language", "cache-control", "connection",
    "content-encoding", "content-language", "content-length", "content-type", "date", "expect", "host",
    "if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "keep-alive", "pragma",
    "priority", "proxy-connection", "range", "te", "trailer", "transfer-encoding", "upgrade", "user-agent",
    "traceparent", "tracestate", "x-request-id",
    # A WebSocket handshake: a version and a nonce.  Sec-WebSocket-Protocol is not here: tokens ride in it.
    "sec-websocket-version", "sec-websocket-key", "sec-websocket-extensions",
})
# Ways to make a server run another method than the one the rule granted.
METHOD_OVERRIDES = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
METHOD_OVERRIDE_QUERY = frozenset({"_method"})

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~")  # Not '.': refused.
# What a path on a ruled host may hold literally: RFC 3986's pchar and '/', less ';' (a path parameter).
_PATH_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/:@!$&'()*+,=")
_HEX_CHARS = frozenset("0123456789ABCDEFabcdef")


def _bad_value(value: str) -> bool:
    return any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value)


def host_of(value: str) -> tuple[str, int | None] | None:
    """``name[:port]`` from a Host header or an authority: (canonical name, port or None), or None.

    Refused: userinfo (``a:@b``), several hosts, spaces, empty parts, a port
    that is not 1-65535, anything ``normalize_target_host`` refuses.
    """
    if not value or value != value.strip() or any(c in value for c in "@, \t/\\?#"):
        return None
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            return None
        name, rest = value[:close + 1], value[close + 1:]
    elif value.count(":") > 1:
        return None
    else:
        name, _, port_text = value.partition(":")
        rest = ":" + port_text if ":" in value else ""
    port = None
    if rest:
        if not rest.startswith(":") or not rest[1:].isdigit() or not rest[1:].isascii() or len(rest) > 6:
            return None
        port = int(rest[1:])
        if not 0 < port < 65536:
            return None
    try:
        return normalize_target_host(name), port
    except HostPatternError:
        return None


def check_form(*, method: str, http_version: str, headers: list[tuple[str, str]], target: str,
               authority: str = "") -> Verdict:
    """Strict HTTP in: refuse every request form that different servers could read differently.

    ``headers``: every (name, value) as received; ``target``: the request
    target as received (``/path?query``, or the path of an absolute form);
    ``authority``: HTTP/2's ``:authority`` or the host of an absolute-form
    target ("" when absent).
    """
    if not method or not set(method) <= _TCHAR:
        return Verdict(False, R.BAD_REQUEST, detail="the method is not a token")
    hosts = []
    for name, value in headers:
        if not name or not set(name) <= _TCHAR:
            return Verdict(False, R.CONTROL_CHARACTER, detail=f"header name {name[:40]!r}")
        if _bad_value(value):
            return Verdict(False, R.CONTROL_CHARACTER, detail=f"header {name[:40]}")
        if name.lower() == "host":
            hosts.append(value)
    if len(hosts) > 1:
        return Verdict(False, R.DUPLICATE_HOST, detail=f"{len(hosts)} Host headers")
    for value in hosts:
        if host_of(value) is None:
            return Verdict(False, R.BAD_HOST_HEADER, detail=value[:100])
    if authority and host_of(authority) is None:
        return Verdict(False, R.BAD_HOST_HEADER, detail=f"authority {authority[:100]}")
    if hosts and authority and host_of(hosts[0]) != host_of(authority):
        return Verdict(False, R.HOST_MISMATCH, detail=f"Host {hosts[0][:60]} beside {authority[:60]}")
    if not hosts and not authority:
        return Verdict(False, R.MISSING_HOST, detail=f"{http_version} request without a Host")
    if "#" in target or not target.isascii() or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in target):
        return Verdict(False, R.BAD_TARGET, detail=target[:100])
    return Verdict(True, R.ALLOWED)


def normalize_path(target: str) -> tuple[str, str] | None:
    """(path, query) of a request target on a ruled host, the path in its one normal form; None if ambiguous.

    Unreserved characters written as percent-escapes are decoded, the other
    escapes upper-cased; refused is what a server might resolve differently
    from the rule: dot segments, encoded dots, slashes, backslashes, percent
    signs (double encoding) or semicolons, empty segments, ``;`` parameters
    in the path or the query, escapes that are not valid UTF-8 (overlong
    forms) or that NFKC would change (fullwidth dots).
    """
    path, _, query = target.partition("?")
    if not path.startswith("/") or "#" in target or not target.isascii() \
            or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in target):
        return None
    out: list[str] = []
    pending = bytearray()  # A run of escapes of bytes above 0x7f: one UTF-8 sequence or more.
    i = 0
    while i < len(path):
        char = path[i]
        if char == "%":
            pair = path[i + 1:i + 3]
            if len(pair) != 2 or not all(c in _HEX_CHARS for c in pair):
                return None
            value = int(pair, 16)
            i += 3
            if value >= 0x80:
                pending.append(value)
                out.append("%" + pair.upper())
                continue
            if pending and not _clean_utf8(pending):
                return None
            pending.clear()
            if chr(value) in _UNRESERVED:
                out.append(chr(value))
            elif chr(value) in "./\\%;?#" or value < 0x20 or value == 0x7F:
                return None
            else:
                out.append("%" + pair.upper())
            continue
        if pending and not _clean_utf8(pending):
            return None
        pending.clear()
        if char not in _PATH_CHARS:
            return None
        out.append(char)
        i += 1
    if pending and not _clean_utf8(pending):
        return None
    normal = "".join(out)
    if "//" in normal or any(seg in (".", "..") for seg in normal.split("/")[1:]):
        return None
    if ";" in query or "\\" in query:
        return None
    return normal, query


def _clean_utf8(data: bytes) -> bool:
    """Valid UTF-8 (no overlong forms), unchanged by NFKC (no fullwidth dots)."""
    try:
        text = bytes(data).decode("utf-8", "strict")
    except UnicodeDecodeError:
        return False
    return unicodedata.normalize("NFKC", text) == text


def query_keys(query: str) -> list[str] | None:
    """The decoded keys of a query string (``&``-separated), or None when one does not decode."""
    from urllib.parse import unquote_to_bytes

    keys = []
    for part in query.split("&") if query else []:
        key = part.split("=", 1)[0]
        try:
            keys.append(unquote_to_bytes(key.replace("+", " ")).decode("utf-8", "strict"))
        except UnicodeDecodeError:
            return None
    return keys


def cookie_names(value: str) -> list[str]:
    return [item.split("=", 1)[0].strip() for item in value.split(";") if item.strip()]


class HttpRule:
    """One ``[[network.rules]]`` entry: which methods and paths a host grants, and what a request may carry."""

    __slots__ = ("host", "methods", "paths", "max_body_bytes", "credential", "headers", "query", "cookies")

    def __init__(self, *, host: str, methods=None, paths=None, max_body_bytes=None, credential=None, headers=(),
                 query=(), cookies=()) -> None:
        self.host = _split(host)
        self.methods = tuple(methods) if methods else None
        self.paths = tuple(paths) if paths else None
        self.max_body_bytes = max_body_bytes
        self.credential = credential or None
        self.headers = frozenset(h.lower() for h in headers)
        self.query = frozenset(query)
        self.cookies = frozenset(cookies)

    def applies_to(self, host: str, port: int) -> bool:
        try:
            return _matches(self.host, normalize_target_host(host), port)
        except HostPatternError:
            return False


class Credential:
    """A secret the gateway holds for a session; the sandbox only ever sees ``placeholder``."""

    __slots__ = ("name", "value", "placeholder", "hosts", "header", "template")

    def __init__(self, *, name: str, value: str, placeholder: str, hosts, header: str, template: str) -> None:
        if not value:
            raise ValueError(f"credential {name} is empty")
        self.name, self.value, self.placeholder = name, value, placeholder
        self.hosts = tuple(_split(h) for h in hosts)
        self.header, self.template = header.lower(), template

    def bound_to(self, host: str, port: int) -> bool:
        try:
            canonical = normalize_target_host(host)
        except HostPatternError:
            return False
        return any(_matches(p, canonical, port) for p in self.hosts)


def path_matches(pattern: str, path: str) -> bool:
    """'*' is one whole segment, '**' any number (also none) of trailing segments."""
    want = pattern.split("/")[1:]
    have = path.split("/")[1:]
    for i, seg in enumerate(want):
        if seg == "**":
            return True
        if i >= len(have):
            return False
        if seg != "*" and seg != have[i]:
            return False
        if seg == "*" and not have[i]:
            return False
    return len(have) == len(want)


def check_request(rules: list[HttpRule], host: str, port: int, method: str, path: str,
                  content_length: int | None) -> tuple[Verdict, HttpRule | None]:
    """May this request (``path`` already normal) go to a ruled host?  The verdict and the granting rule."""
    applicable = [r for r in rules if r.applies_to(host, port)]
    if not applicable:
        return Verdict(True, R.ALLOWED, rule="no HTTP rules for this host"), None
    for rule in applicable:
        if rule.methods is not None and method.upper() not in rule.methods:
            continue
        if rule.paths is not None and not any(path_matches(p, path) for p in rule.paths):
            continue
        if rule.max_body_bytes is not None and content_length is not None and content_length > rule.max_body_bytes:
            return Verdict(False, R.BODY_TOO_LARGE, detail=f"{content_length} > {rule.max_body_bytes} bytes"), rule
        return Verdict(True, R.ALLOWED, rule=f"network.rules host {rule.host[2]!r}"), rule
    return Verdict(False, R.NOT_GRANTED, detail=f"{method} {path}"), None


def check_overrides(headers: list[tuple[str, str]], keys: list[str]) -> Verdict:
    """On a ruled host, no header or parameter may make the server run another method."""
    for name, _ in headers:
        if name.lower() in METHOD_OVERRIDES:
            return Verdict(False, R.METHOD_OVERRIDE, detail=f"header {name[:40]}")
    for key in keys:
        if key.lower() in METHOD_OVERRIDE_QUERY:
            return Verdict(False, R.METHOD_OVERRIDE, detail=f"query {key[:40]}")
    return Verdict(True, R.ALLOWED)


def check_binding(rule: HttpRule, credential: Credential, headers: list[tuple[str, str]],
                  keys: list[str]) -> Verdict:
    """The request carries ``credential`` (its placeholder, in its header) and nothing that could be another one."""
    expected = credential.template.replace("{}", credential.placeholder)
    for name, value in headers:
        lowered = name.lower()
        if lowered == credential.header:
            if value.strip() != expected:
                return Verdict(False, R.FOREIGN_CREDENTIAL, detail=f"header {name[:40]} is not {credential.name}")
            continue
        if lowered == "cookie":
            extra = [c for c in cookie_names(value) if c not in rule.cookies]
            if extra:
                return Verdict(False, R.COOKIE_NOT_GRANTED, detail=f"cookie {extra[0][:40]} (rule key: cookies)")
            continue
        if lowered not in SAFE_HEADERS and lowered not in rule.headers:
            return Verdict(False, R.HEADER_NOT_GRANTED, detail=f"header {name[:40]} (rule key: headers)")
    extra = [k for k in keys if k not in rule.query]
    if extra:
        return Verdict(False, R.QUERY_NOT_GRANTED, detail=f"query key {extra[0][:40]} (rule key: query)")
    return Verdict(True, R.ALLOWED)


class Scrubber:
    """Replaces secrets by placeholders in a streamed body, across chunk boundaries.

    Returns a list of chunks to send: never an empty chunk before the end (an
    empty chunk ends a chunked HTTP/1.1 body).
    """

    def __init__(self, pairs: list[tuple[str, str]], decoder=None) -> None:
        self.pairs = [(s.encode(), p.encode()) for s, p in pairs]
        self.keep = max((len(s) for s, _ in self.pairs), default=1) - 1
        self.buffer = b""
        self.decoder = decoder

    def __call__(self, chunk: bytes) -> list[bytes]:
        end = not chunk
        if self.decoder is not None:
            chunk = self.decoder.flush() if end else self.decoder.decompress(chunk)
        data = self.buffer + chunk
        for secret, placeholder in self.pairs:
            data = data.replace(secret, placeholder)
        if end:
            self.buffer = b""
            return [data] if data else []
        cut = max(0, len(data) - self.keep)
        self.buffer = data[cut:]
        return [data[:cut]] if cut else []


def decoder_for(encoding: str):
    """A streaming decoder for a Content-Encoding (``decompress``/``flush``), or None if it is not one we read."""
    import zlib

    coding = encoding.strip().lower()
    if coding in ("gzip", "x-gzip"):
        return _Zlib(zlib.decompressobj(16 + zlib.MAX_WBITS))
    if coding == "deflate":
        return _Deflate()
    if coding == "br":
        import brotli

        return _Brotli(brotli.Decompressor())
    if coding == "zstd":
        import zstandard

        return _Zstd(zstandard.ZstdDecompressor().decompressobj())
    return None


class _Zlib:
    def __init__(self, obj) -> None:
        self.obj = obj

    def decompress(self, data: bytes) -> bytes:
        return self.obj.decompress(data)

    def flush(self) -> bytes:
        out = self.obj.flush()
        if not self.obj.eof:
            raise ValueError("the compressed body ended early")
        return out


class _Deflate(_Zlib):
    """``deflate`` is zlib-wrapped by the standard, raw by many servers: the first bytes tell."""

    def __init__(self) -> None:
        self.obj = None
        self.head = b""

    def decompress(self, data: bytes) -> bytes:
        import zlib

        if self.obj is None:
            self.head += data
            if len(self.head) < 2:
                return b""
            wrapped = (self.head[0] & 0x0F) == 8 and (self.head[0] * 256 + self.head[1]) % 31 == 0
            self.obj = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            data, self.head = self.head, b""
        return self.obj.decompress(data)

    def flush(self) -> bytes:
        if self.obj is None:
            raise ValueError("the compressed body ended early")
        return super().flush()


class _Brotli:
    def __init__(self, obj) -> None:
        self.obj = obj

    def decompress(self, data: bytes) -> bytes:
        return self.obj.process(data)

    def flush(self) -> bytes:
        if not self.obj.is_finished():
            raise ValueError("the compressed body ended early")
        return b""


class _Zstd:
    def __init__(self, obj) -> None:
        self.obj = obj

    def decompress(self, data: bytes) -> bytes:
        return self.obj.decompress(data)

    def flush(self) -> bytes:
        if not self.obj.eof:
            raise ValueError("the compressed body ended early")
        return b""
