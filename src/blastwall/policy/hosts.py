"""Host patterns for ``network.allow`` / ``network.deny``: parsing and normalising.

Pure functions, no I/O.  A pattern is one of

* ``example.com``          exactly that name;
* ``*.example.com``        any subdomain of example.com (not example.com itself);
* ``192.0.2.7`` / ``[2001:db8::1]``   an IP literal, in canonical form only;
* any of the above with ``:PORT``;
* ``*`` (deny lists only): every host.

Names are lower-cased, one trailing dot is dropped and non-ASCII labels are
converted to their IDNA (punycode) form, so ``GitHub.COM.`` and ``github.com``
are the same rule.  Anything ambiguous is refused rather than guessed: numeric
IPv4 spellings (``0x7f.1``, ``017700000001``, ``2130706433``), unbracketed IPv6,
empty labels, wildcards anywhere but the leftmost label, over-broad wildcards
(``*.com``).
"""

from __future__ import annotations

__all__ = ["HostPatternError", "covers", "matches", "normalize_host_pattern", "patterns_overlap", "split_pattern"]

_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_MAX_NAME = 253


class HostPatternError(ValueError):
    """The pattern is not a valid host pattern; the message says why."""


def normalize_host_pattern(raw: str, *, allow_star: bool = False) -> str:
    """Return the canonical spelling of ``raw`` or raise ``HostPatternError``."""
    if not isinstance(raw, str):
        raise HostPatternError("expected a string")
    text = raw.strip()
    if not text:
        raise HostPatternError("empty host pattern")
    if len(text) > _MAX_NAME + 8:
        raise HostPatternError("host pattern is too long")
    if any(ch in text for ch in "/@?#\\ \t\r\n\x00") or "://" in text:
        raise HostPatternError(
            f"{raw!r} is not a host name: give the bare host, such as 'api.example.com'"
        )
    host, port = _split_port(text)
    if host == "*":
        if not allow_star:
            raise HostPatternError("'*' would allow every host; list the hosts instead")
        return "*" if port is None else f"*:{port}"
    if host.startswith("["):
        name = _normalize_ipv6(host)
    else:
        name = _normalize_name(host)
    return name if port is None else f"{name}:{port}"


def _split_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise HostPatternError(f"{text!r}: unclosed '[' in IPv6 literal")
        host, rest = text[: close + 1], text[close + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise HostPatternError(f"{text!r}: unexpected text after ']'")
        return host, _parse_port(rest[1:], text)
    if text.count(":") > 1:
        raise HostPatternError(f"{text!r}: write IPv6 addresses in brackets, e.g. '[::1]'")
    if ":" in text:
        host, _, port = text.partition(":")
        return host, _parse_port(port, text)
    return text, None


def _parse_port(port: str, text: str) -> int:
    if not port.isascii() or not port.isdigit() or len(port) > 5:
        raise HostPatternError(f"{text!r}: port must be a number from 1 to 65535")
    value = int(port)
    if not 1 <= value <= 65535:
        raise HostPatternError(f"{text!r}: port must be a number from 1 to 65535")
    return value


def _normalize_ipv6(host: str) -> str:
    import ipaddress  # Only IP literals pay for this import.

    inner = host[1:-1]
    if "%" in inner:
        raise HostPatternError(f"{host!r}: zone identifiers are not allowed")
    try:
        addr = ipaddress.IPv6Address(inner)
    except ValueError as exc:
        raise HostPatternError(f"{host!r} is not a valid IPv6 address") from exc
    return f"[{addr.compressed}]"


def _normalize_name(host: str) -> str:
    wildcard = host.startswith("*.")
    body = host[2:] if wildcard else host
    if body.endswith("."):
        body = body[:-1]
    if "*" in body:
        raise HostPatternError(f"{host!r}: '*' is allowed only as the whole leftmost label ('*.example.com')")
    if not body:
        raise HostPatternError(f"{host!r}: empty host name")
    if not body.isascii():
        try:
            body = body.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise HostPatternError(f"{host!r}: not a valid internationalised domain name") from exc
    body = body.lower()
    labels = body.split(".")
    for label in labels:
        if not label:
            raise HostPatternError(f"{host!r}: empty label")
        if len(label) > 63:
            raise HostPatternError(f"{host!r}: a label is longer than 63 characters")
        if not set(label) <= _LABEL_CHARS or label.startswith("-") or label.endswith("-"):
            raise HostPatternError(f"{host!r}: invalid character in label {label!r}")
    if len(body) > _MAX_NAME:
        raise HostPatternError(f"{host!r}: name is longer than {_MAX_NAME} characters")
    if labels[-1].isdigit() or _looks_numeric(labels[-1]):
        # Every spelling of an IPv4 address ends in a numeric label.  Only the
        # canonical dotted quad is accepted, so one address has one spelling.
        if wildcard:
            raise HostPatternError(f"{host!r}: wildcards do not apply to IP addresses")
        return _canonical_ipv4(host, labels)
    if wildcard:
        if len(labels) < 2:
            raise HostPatternError(f"{host!r}: wildcard is too broad; name at least 'example.com'")
        return "*." + body
    return body


def _looks_numeric(label: str) -> bool:
    return label.startswith("0x") and all(c in "0123456789abcdef" for c in label[2:])


def _canonical_ipv4(host: str, labels: list[str]) -> str:
    if len(labels) != 4 or not all(label.isdigit() for label in labels):
        raise HostPatternError(
            f"{host!r}: numeric hosts must be a canonical dotted-quad IPv4 address like '192.0.2.7'"
        )
    for label in labels:
        if len(label) > 1 and label.startswith("0"):
            raise HostPatternError(f"{host!r}: leading zeros are not allowed in an IPv4 address")
        if int(label) > 255:
            raise HostPatternError(f"{host!r}: IPv4 octet out of range")
    return ".".join(labels)


def split_pattern(pattern: str) -> tuple[str, int | None]:
    """A canonical pattern's host and port (None: any): ``"*.example.com:443"`` -> ``("*.example.com", 443)``."""
    return _split_port(pattern)


def _name_covers(pattern: str, name: str) -> bool:
    """Does host part ``pattern`` match every name ``name`` (a name, or a ``*.`` pattern) matches?"""
    if pattern in ("*", name):
        return True
    if pattern.startswith("*.") and not name.startswith("["):
        suffix = pattern[1:]  # ".example.com"
        return name.endswith(suffix) and len(name) > len(suffix)
    return False


def matches(pattern: tuple[str, int | None], host: str, port: int) -> bool:
    """Does a split canonical pattern match the canonical ``host`` at ``port``?"""
    name, want_port = pattern
    return (want_port is None or want_port == port) and _name_covers(name, host)


def covers(grant: str, wanted: str) -> bool:
    """True when pattern ``grant`` allows at least everything pattern ``wanted`` does (both canonical).

    ``*.example.com`` covers ``a.example.com`` and ``*.a.example.com`` but not
    ``example.com``; a grant without a port covers every port, one with a port
    only that port.
    """
    grant_host, grant_port = _split_port(grant)
    wanted_host, wanted_port = _split_port(wanted)
    if grant_port is not None and grant_port != wanted_port:
        return False
    return _name_covers(grant_host, wanted_host)


def patterns_overlap(a: str, b: str) -> bool:
    """True when canonical host patterns ``a`` and ``b`` can match one same host and port."""
    host_a, port_a = _split_port(a)
    host_b, port_b = _split_port(b)
    if port_a is not None and port_b is not None and port_a != port_b:
        return False
    return _name_covers(host_a, host_b) or _name_covers(host_b, host_a) or (
        host_a.startswith("*.") and host_b.startswith("*.") and (host_a.endswith(host_b[1:]) or host_b.endswith(host_a[1:])))
