"""Host patterns: the tricky spellings, as a table, plus fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blastwall.policy.hosts import HostPatternError, normalize_host_pattern

VALID = [
    ("example.com", "example.com"),
    ("EXAMPLE.com.", "example.com"),
    ("*.example.com", "*.example.com"),
    ("api.example.com:443", "api.example.com:443"),
    ("192.0.2.7", "192.0.2.7"),
    ("192.0.2.7:8080", "192.0.2.7:8080"),
    ("[2001:DB8::1]", "[2001:db8::1]"),
    ("[::ffff:127.0.0.1]:443", "[::ffff:7f00:1]:443"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("localhost", "localhost"),
]

INVALID = [
    "", " ", "https://example.com", "example.com/path", "user@example.com", "example.com?x",
    "*", "*.com", "a.*.example.com", "exa*mple.com", "*example.com",
    "example..com", ".example.com", "-bad.example.com", "bad-.example.com", "exa mple.com",
    "0x7f.1", "0x7f000001", "2130706433", "017700000001", "127.1", "127.0.0.01", "256.1.1.1", "1.2.3.4.5",
    "::1", "2001:db8::1", "[::1", "[fe80::1%eth0]", "[zz::1]",
    "example.com:0", "example.com:65536", "example.com:http", "example.com:",
    "a" * 64 + ".com", ("a" * 60 + ".") * 5 + "com",
]


@pytest.mark.parametrize("raw,expected", VALID)
def test_valid(raw, expected):
    assert normalize_host_pattern(raw) == expected


@pytest.mark.parametrize("raw", INVALID)
def test_invalid(raw):
    with pytest.raises(HostPatternError):
        normalize_host_pattern(raw)


def test_star_only_where_allowed():
    assert normalize_host_pattern("*", allow_star=True) == "*"
    assert normalize_host_pattern("*:443", allow_star=True) == "*:443"


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_normalize_is_total_and_idempotent(raw):
    try:
        once = normalize_host_pattern(raw, allow_star=True)
    except HostPatternError:
        return
    assert normalize_host_pattern(once, allow_star=True) == once
    assert once == once.strip().lower() or once.startswith("[")


_NAMES = ["example.com", "a.example.com", "b.a.example.com", "example.org", "[2001:db8::1]", "192.0.2.7"]
_PATTERNS = _NAMES + ["*.example.com", "*.a.example.com", "*", "example.com:443", "*.example.com:8443", "[2001:db8::1]:443"]


@pytest.mark.parametrize("pattern", _PATTERNS)
def test_one_meaning_of_a_pattern_for_the_gateway_the_service_and_trust(pattern):
    """The gateway's match (a host at a port) and the ceiling's and trust's cover (pattern over pattern) agree."""
    from blastwall.policy.hosts import covers, matches, split_pattern

    for name in _NAMES:
        for port in (443, 8443):
            assert matches(split_pattern(pattern), name, port) == covers(pattern, f"{name}:{port}"), (name, port)
        # A pattern covering every port of a name matches it at each port.
        if covers(pattern, name):
            assert all(matches(split_pattern(pattern), name, port) for port in (80, 443, 8443))
    assert not covers("*.example.com", "example.com") and covers("*.example.com", "*.a.example.com")
    assert not covers("example.com:443", "example.com")  # One port does not cover all of them.
