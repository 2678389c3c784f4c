"""The gateway's decisions, as tables of tricky forms, plus fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blastwall.egress.decide import Rules, Verdict, check_addresses, classify_address, decide, names_agree

RULES = Rules(allow=["github.com", "*.githubusercontent.com", "api.example.com:443", "192.0.2.7", "[2001:db8::7]"],
              deny=["evil.githubusercontent.com"])


@pytest.mark.parametrize("host,port", [
    ("github.com", 443), ("GitHub.COM", 443), ("github.com.", 443), ("raw.githubusercontent.com", 443),
    ("a.b.githubusercontent.com", 80), ("api.example.com", 443), ("192.0.2.7", 80), ("2001:db8::7", 443),
    ("[2001:DB8::7]", 443),
])
def test_allowed(host, port):
    assert decide(RULES, host, port).allowed


@pytest.mark.parametrize("host,port,reason", [
    ("evil.githubusercontent.com", 443, "denied"),  # deny wins over the wildcard
    ("githubusercontent.com", 443, "not-allowed"),  # *. means subdomains only
    ("github.com.evil.test", 443, "not-allowed"),
    ("evilgithub.com", 443, "not-allowed"),
    ("github.co", 443, "not-allowed"),
    ("api.example.com", 8443, "not-allowed"),  # port-bound rule
    ("github.com@evil.test", 443, "bad-host"),
    ("evil.test#github.com", 443, "bad-host"),
    ("0xc0.0.2.7", 80, "bad-host"),  # hex
    ("0300.0.2.7", 80, "bad-host"),  # octal
    ("3221225991", 80, "bad-host"),  # decimal 192.0.2.7
    ("192.0.2.07", 80, "bad-host"),
    ("192.0.2.8", 80, "not-allowed"),
    ("::ffff:192.0.2.7", 80, "not-allowed"),  # a different spelling is a different host
    ("*.github.com", 443, "bad-host"),
    ("", 443, "bad-host"),
    ("github.com", 0, "bad-port"),
    ("github.com", 70000, "bad-port"),
])
def test_refused(host, port, reason):
    verdict = decide(RULES, host, port)
    assert not verdict.allowed and verdict.reason == reason


def test_deny_star_blocks_everything():
    assert not decide(Rules(allow=["github.com"], deny=["*"]), "github.com", 443).allowed


@pytest.mark.parametrize("target,other,agree", [
    ("github.com", "github.com", True), ("github.com", "GITHUB.com.", True), ("github.com", "github.com:443", True),
    ("github.com", None, True), ("github.com", "evil.test", False), ("github.com", "github.com.evil.test", False),
    ("github.com", "user@github.com", False), ("[::1]", "[::1]:80", True),
])
def test_names_agree(target, other, agree):
    assert names_agree(target, other) is agree


@pytest.mark.parametrize("addr,why", [
    ("8.8.8.8", None), ("2606:4700::1111", None),
    ("127.0.0.1", "loopback"), ("127.5.5.5", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fd12::1", "private"),
    ("169.254.169.254", "cloud-metadata"), ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("100.64.0.1", "cgnat"), ("100.100.100.200", "cloud-metadata"), ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("240.0.0.1", ""),
    ("::ffff:127.0.0.1", "ipv4-in-ipv6 loopback"), ("::ffff:169.254.169.254", "cloud-metadata"),
    ("::127.0.0.1", "ipv4-in-ipv6 loopback"), ("64:ff9b::a00:1", "ipv4-in-ipv6 private"),
    ("2002:7f00:1::", "ipv4-in-ipv6 loopback"), ("::ffff:8.8.8.8", None),
])
def test_classify_address(addr, why):
    result = classify_address(addr)
    assert (result is None) == (why is None) and (not why or why in result), result


def test_trusted_addresses_and_mixed_answers():
    trusting = Rules(allow=["api.test"], trusted=["127.0.0.0/8"])
    verdict, chosen = check_addresses(trusting, ["127.0.0.1"])
    assert verdict.allowed and chosen == "127.0.0.1"
    assert check_addresses(trusting, ["::ffff:127.0.0.1"])[0].allowed
    verdict, chosen = check_addresses(RULES, ["93.184.216.34", "10.0.0.1"])
    assert not verdict.allowed and chosen is None  # one bad address refuses the name
    verdict, _ = check_addresses(RULES, ["127.0.0.1"])
    assert verdict.reason == "forbidden-address"
    assert not check_addresses(RULES, [])[0].allowed


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=60), st.integers(min_value=-5, max_value=70000))
def test_fuzz_decide_is_total(host, port):
    verdict = decide(RULES, host, port)
    assert isinstance(verdict.allowed, bool) and verdict.reason


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_fuzz_every_address_is_classified_or_public(addr):
    why = classify_address(addr)
    if why is None:
        assert addr.is_global or (addr.version == 6 and addr.ipv4_mapped is not None)


def test_verdicts_carry_only_the_stable_reason_codes():
    from blastwall.egress.reasons import EgressReason

    assert Verdict(False, "not-allowed").reason is EgressReason.NOT_ALLOWED
    assert f"{Verdict(False, 'denied').reason}" == "denied"  # As the refusal bodies and the audit log print it.
    with pytest.raises(ValueError):
        Verdict(False, "made-up-reason")
    values = [member.value for member in EgressReason]
    assert len(values) == len(set(values))
