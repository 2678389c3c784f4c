"""Every network decision, as pure functions: no sockets, no mitmproxy.

The gateway addon asks three questions, in this order, for each connection:

1. ``decide(rules, host, port)``: may this session reach this name and port?
   Deny wins; a name must be canonical (no ``0x7f.1``, no ``user@host``).
2. ``names_agree(target, other)``: does the Host header / TLS SNI name the same
   host as the CONNECT target or absolute URI?  (No domain fronting.)
3. ``check_addresses(rules, addresses)``: the gateway resolved the name itself;
   is every address acceptable?  Loopback, private, link-local, cloud metadata,
   CGNAT, multicast, unspecified and reserved ranges are refused unless listed
   in ``trusted_addresses``, including when hidden in an IPv4-mapped,
   IPv4-translated, IPv4-compatible, NAT64 or 6to4 IPv6 address.  The connection then goes to
   the address that was checked.
"""

from __future__ import annotations

import ipaddress

from blastwall.egress.reasons import EgressReason as R
from blastwall.policy.hosts import HostPatternError, matches, normalize_host_pattern, split_pattern

__all__ = ["Rules", "Verdict", "check_addresses", "classify_address", "decide", "inspects", "names_agree",
           "normalize_target_host", "pinned_address"]

_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
             ipaddress.ip_address("100.100.100.200")}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_COMPAT = ipaddress.ip_network("::/96")
_6TO4 = ipaddress.ip_network("2002::/16")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765's IPv4-translated addresses.
_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))


class Verdict:
    """The answer to one question: ``allowed``, a stable ``reason`` code and the deciding ``rule``."""

    __slots__ = ("allowed", "reason", "rule", "detail")

    def __init__(self, allowed: bool, reason: R, rule: str = "", detail: str = "") -> None:
        # Only the stable codes (egress/reasons.py): an unknown one fails here, where it is made.
        self.allowed, self.reason, self.rule, self.detail = allowed, R(reason), rule, detail

    def __repr__(self) -> str:
        return f"Verdict({self.allowed}, {self.reason!r}, rule={self.rule!r})"


class Rules:
    """One session's network policy, compiled once when the session registers.

    ``grants``: the session has HTTP rules or credentials, so every connection
    it makes is decrypted and read (a grant is only as strong as the weakest
    tunnel beside it), but for the ``passthrough`` hosts.
    """

    __slots__ = ("allow", "deny", "resolve", "trusted", "passthrough", "grants")

    def __init__(self, *, allow=(), deny=(), resolve=None, trusted=(), passthrough=(), grants=False) -> None:
        self.allow = tuple(_split(p) for p in allow)
        self.deny = tuple(_split(p) for p in deny)
        self.resolve = {normalize_host_pattern(k): ipaddress.ip_address(v) for k, v in (resolve or {}).items()}
        self.trusted = tuple(ipaddress.ip_network(n, strict=False) for n in trusted)
        self.passthrough = tuple(_split(p) for p in passthrough)
        self.grants = grants

    @classmethod
    def from_dict(cls, data: dict) -> "Rules":
        return cls(allow=data.get("allow", ()), deny=data.get("deny", ()), resolve=data.get("resolve") or {},
                   trusted=data.get("trusted_addresses", ()), passthrough=data.get("passthrough", ()),
                   grants=bool(data.get("rules") or data.get("credentials")))


def _split(pattern: str) -> tuple[str, int | None, str]:
    """'*.example.com:443' -> ('*.example.com', 443, original)."""
    return (*split_pattern(pattern), pattern)


def normalize_target_host(host: str) -> str:
    """The canonical form of a host as a client named it, or HostPatternError."""
    if not isinstance(host, str) or not host:
        raise HostPatternError("empty host")
    if "*" in host:
        raise HostPatternError("wildcards are not host names")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # mitmproxy gives IPv6 literals without brackets.
    return normalize_host_pattern(host)


def _matches(pattern: tuple[str, int | None, str], host: str, port: int) -> bool:
    return matches(pattern[:2], host, port)


def decide(rules: Rules, host: str, port: int) -> Verdict:
    """May a session with ``rules`` connect to ``host:port``?  Deny wins."""
    try:
        canonical = normalize_target_host(host)
    except HostPatternError as exc:
        return Verdict(False, R.BAD_HOST, detail=str(exc))
    if not isinstance(port, int) or not 0 < port < 65536:
        return Verdict(False, R.BAD_PORT)
    for pattern in rules.deny:
        if _matches(pattern, canonical, port):
            return Verdict(False, R.DENIED, rule=f"network.deny {pattern[2]!r}")
    for pattern in rules.allow:
        if _matches(pattern, canonical, port):
            return Verdict(True, R.ALLOWED, rule=f"network.allow {pattern[2]!r}")
    return Verdict(False, R.NOT_ALLOWED)


def inspects(rules: Rules, host: str, port: int) -> bool:
    """Must the gateway decrypt and read this connection?  In a session with grants, all but passthrough hosts."""
    if not rules.grants:
        return False
    try:
        canonical = normalize_target_host(host)
    except HostPatternError:
        return True
    return not any(_matches(p, canonical, port) for p in rules.passthrough)


def names_agree(target: str, other: str | None) -> bool:
    """True when ``other`` (Host header or SNI; port ignored) names ``target``'s host."""
    if not other:
        return True  # Absent (no SNI, HTTP/1.0 without Host): nothing to disagree.
    try:
        a = normalize_target_host(_strip_port(target))
        b = normalize_target_host(_strip_port(other))
    except HostPatternError:
        return False
    return a == b


def _strip_port(text: str) -> str:
    if text.startswith("["):
        return text[: text.index("]") + 1] if "]" in text else text
    if text.count(":") == 1:
        return text.split(":")[0]
    return text


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in _NAT64 or addr in _NAT64_LOCAL or addr in _TRANSLATED or (addr in _COMPAT and int(addr) > 1):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def classify_address(addr) -> str | None:
    """None for an ordinary public address, else why it is special.

    ``private`` is only what RFC 1918 and RFC 4193 (unique local) say;
    documentation, benchmarking and other special-purpose ranges are
    ``reserved``.
    """
    addr = ipaddress.ip_address(addr)
    if addr in _METADATA:
        return "cloud-metadata"
    if addr.version == 6:
        inner = _embedded_v4(addr)
        if inner is not None:
            why = classify_address(inner)
            return f"ipv4-in-ipv6 {why}" if why else None
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_multicast:
        return "multicast"
    if addr.version == 4 and addr in _CGNAT:
        return "cgnat"
    if any(addr in net for net in _PRIVATE if net.version == addr.version):
        return "private"
    if not addr.is_global:
        return "reserved"
    return None


def _trusted(rules: Rules, addr) -> bool:
    candidates = [addr]
    if addr.version == 6:
        inner = _embedded_v4(addr)
        if inner is not None:
            candidates.append(inner)
    return any(a in net for a in candidates for net in rules.trusted if a.version == net.version)


def check_addresses(rules: Rules, addresses) -> tuple[Verdict, str | None]:
    """Check every resolved address; return the verdict and the address to connect to.

    One bad address refuses the whole name: a resolver answer that mixes a
    public and a private address is how rebinding attacks are staged.
    """
    checked = []
    for raw in addresses:
        try:
            addr = ipaddress.ip_address(raw.split("%")[0] if isinstance(raw, str) else raw)
        except ValueError:
            return Verdict(False, R.BAD_ADDRESS, detail=str(raw)), None
        why = classify_address(addr)
        if why and not _trusted(rules, addr):
            return Verdict(False, R.FORBIDDEN_ADDRESS, detail=f"{addr} is {why}"), None
        checked.append(addr)
    if not checked:
        return Verdict(False, R.NO_ADDRESS), None
    return Verdict(True, R.ALLOWED), str(checked[0])


def pinned_address(rules: Rules, host: str) -> str | None:
    """The address ``network.resolve`` pins ``host`` to, if any."""
    try:
        canonical = normalize_target_host(host)
    except HostPatternError:
        return None
    addr = rules.resolve.get(canonical)
    return str(addr) if addr is not None else None
