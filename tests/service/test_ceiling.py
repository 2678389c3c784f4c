"""Ceilings and tenant layers (pure): what a tenant may set, and how much of it."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from blastwall.policy.model import merge
from blastwall.service.ceiling import (Ceiling, CeilingExceeded, Resources, TenantPolicyError, covers, parse_duration,
                                       parse_size, tenant_layer)

DEFAULTS = Resources(512 << 20, 1.0, 512)


@pytest.mark.parametrize("grant, wanted, ok", [
    ("example.com", "example.com", True),
    ("example.com", "example.com:443", True),          # no port in the grant: every port
    ("example.com:443", "example.com:443", True),
    ("example.com:443", "example.com", False),         # the policy would allow every port
    ("example.com:443", "example.com:80", False),
    ("*.example.com", "api.example.com", True),
    ("*.example.com", "*.api.example.com", True),
    ("*.example.com", "*.example.com", True),
    ("*.example.com", "example.com", False),           # the wildcard does not include the apex
    ("*.example.com", "evil-example.com", False),
    ("*.example.com", "example.com.evil.net", False),
    ("api.example.com", "*.api.example.com", False),
    ("api.example.com", "example.com", False),
    ("[2001:db8::1]", "[2001:db8::1]:443", True),
    ("*.example.com", "[2001:db8::1]", False),
])
def test_covers_table(grant, wanted, ok):
    assert covers(grant, wanted) is ok


@pytest.mark.parametrize("document, key", [
    ({"filesystem": {"allow_write": ["/etc"]}}, "filesystem.allow_write"),
    ({"filesystem": {"allow_unix_sockets": ["/run/docker.sock"]}}, "filesystem.allow_unix_sockets"),
    ({"filesystem": {"reveal": ["~/.aws"]}}, "filesystem.reveal"),
    ({"filesystem": {"allow_git_writes": True}}, "filesystem.allow_git_writes"),
    ({"credentials": {"GH": {"from": "env:AWS_SECRET_ACCESS_KEY", "hosts": ["api.github.com"]}}}, "credentials"),
    ({"credentials": {"GH": {"from": "file:/etc/shadow", "hosts": ["api.github.com"]}}}, "credentials"),
    ({"environment": {"pass": ["AWS_SECRET_ACCESS_KEY"]}}, "environment.pass"),
    ({"network": {"trusted_addresses": ["10.0.0.0/8"]}}, "network.trusted_addresses"),
    ({"network": {"resolve": {"api.example.com": "169.254.169.254"}}}, "network.resolve"),
    ({"network": {"upstream_ca": "/etc/ssl/private/key.pem"}}, "network.upstream_ca"),
    ({"network": {"unlisted": "ask"}}, "network.unlisted"),
])
def test_tenant_cannot_set_host_facing_keys(document, key):
    with pytest.raises(TenantPolicyError) as info:
        tenant_layer(document)
    assert key in str(info.value)


def test_tenant_may_narrow_and_ask_for_hosts():
    layer = tenant_layer({"network": {"allow": ["api.example.com"], "deny": ["*"]},
                          "filesystem": {"deny_read": ["secret.txt"]}, "environment": {"set": {"A": "1"}},
                          "sandbox": {"image": "default"}})
    assert ("network", "allow") in layer.values


def test_invalid_policy_is_a_tenant_policy_error():
    with pytest.raises(TenantPolicyError):
        tenant_layer({"network": {"allow": ["0x7f.1"]}})
    with pytest.raises(TenantPolicyError):
        tenant_layer(["not", "a", "table"])
    with pytest.raises(TenantPolicyError):
        tenant_layer({"nonsense": {}})


def ceiling(**fields) -> Ceiling:
    return Ceiling.from_dict(fields)


def policy(document=None):
    from blastwall.policy.model import parse_layer

    layers = [tenant_layer(document)] if document else []
    if not (document or {}).get("sandbox", {}).get("tier"):
        layers.append(parse_layer({"sandbox": {"tier": "container"}}, "service"))
    return merge(layers)


@pytest.mark.parametrize("document, resources, ttl, field", [
    ({"network": {"allow": ["evil.com"]}}, DEFAULTS, 60, "network.allow"),
    ({"network": {"allow": ["example.com"]}}, DEFAULTS, 60, "network.allow"),  # apex not under *.example.com
    ({"network": {"rules": [{"host": "evil.com", "methods": ["GET"]}]}}, DEFAULTS, 60, "network.rules"),
    ({"sandbox": {"image": "other"}}, DEFAULTS, 60, "sandbox.image"),
    (None, Resources(8 << 30, 1.0, 512), 60, "resources.memory"),
    (None, Resources(512 << 20, 4.0, 512), 60, "resources.cpus"),
    (None, DEFAULTS, 7200, "ttl"),
    ({"sandbox": {"tier": "vm"}}, DEFAULTS, 60, "sandbox.tier"),  # Not in the default ceiling's tiers.
])
def test_ceiling_refuses_more(document, resources, ttl, field):
    with pytest.raises(CeilingExceeded) as info:
        ceiling(allow_domains=["*.example.com"], max_memory="1G", max_cpus=2, max_ttl=3600).check(
            policy(document), resources, ttl)
    assert info.value.field == field


def test_ceiling_allows_what_it_grants():
    ceiling(allow_domains=["*.example.com", "pypi.org:443"], max_memory="1G").check(
        policy({"network": {"allow": ["api.example.com", "pypi.org:443"]}}), DEFAULTS, 300)
    ceiling(tiers=["container", "vm"]).check(policy({"sandbox": {"tier": "vm"}}), DEFAULTS, 300)
    ceiling(tiers=["vm"]).check(policy({"sandbox": {"tier": "vm"}}), DEFAULTS, 300)


@pytest.mark.parametrize("tiers", ["vm", ["process"], ["container", 1], {"container": True}])
def test_ceiling_tiers_are_service_tiers(tiers):
    with pytest.raises(ValueError, match="tiers"):
        Ceiling.from_dict({"tiers": tiers})


def test_ceiling_from_dict_refuses_nonsense():
    for bad in ({"max_sessions": -1}, {"max_memory": "lots"}, {"allow_domains": ["http://x"]}, {"images": ["../x"]},
                {"whatever": 1}, {"max_cpus": 0}, {"max_ttl": "0s"}):
        with pytest.raises(ValueError):
            Ceiling.from_dict(bad)


@pytest.mark.parametrize("text, size", [("512M", 512 << 20), ("2G", 2 << 30), ("1GiB", 1 << 30), ("64k", 64 << 10),
                                        (1024, 1024), ("100", 100)])
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_the_service_and_the_policy_read_one_grammar():
    from blastwall.policy import model

    for text in ("512M", "1.5G", "64KiB", "100", "2T"):
        assert parse_size(text) == model.parse_size(text)
    for text in ("300", "5m", "1h30m", "1d2h3m4s"):
        assert parse_duration(text) == model.parse_duration(text)


@pytest.mark.parametrize("text", ["", "M", "1.5", "-1G", "1Q", "１G", "²G", True, None, "9" * 40, 0, " 1G", "1 G"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("text, seconds", [("300", 300), ("5m", 300), ("12h", 43200), ("30d", 2592000), (60, 60),
                                           ("1h30m", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@given(st.one_of(st.text(max_size=40), st.integers(), st.none(), st.booleans(), st.floats()))
def test_parsers_never_crash(value):
    for parse in (parse_size, parse_duration):
        try:
            parse(value)
        except ValueError:
            pass


@given(st.dictionaries(st.sampled_from(["memory", "cpus", "pids", "other"]),
                       st.one_of(st.integers(), st.text(max_size=10), st.floats(), st.booleans()), max_size=4))
def test_resources_merge_never_crashes(requested):
    try:
        merged = DEFAULTS.merged(requested)
    except ValueError:
        return
    assert merged.memory >= 32 << 20 and merged.cpus > 0 and merged.pids >= 16


@pytest.mark.parametrize("pid_limit", [4096, 32768, 192729, 4194304])
def test_one_sandbox_holds_at_most_a_quarter_of_the_machines_pids(pid_limit):
    from blastwall.service.ceiling import machine_max_pids
    from blastwall.tiers.container import host_pids_for

    most = machine_max_pids(pid_limit)
    assert host_pids_for(most) <= pid_limit // 4 < host_pids_for(most + 1)


def test_default_sandbox_fits_the_machine():
    from blastwall.service.sessions import Config

    config = Config(data_dir="/nonexistent-blastwall-test", pid_limit=32768)
    assert config.default_resources.pids == config.max_pids == 160  # A quarter of 32768 host tasks, not 77%.
    assert Config(data_dir="/nonexistent-blastwall-test", pid_limit=4194304).default_resources.pids == 256


def test_ceiling_max_pids_is_validated():
    from blastwall.service.ceiling import Ceiling

    assert Ceiling.from_dict({}).max_pids == 1024
    for bad in (True, "64", 8, 10**7):
        with pytest.raises(ValueError, match="max_pids"):
            Ceiling.from_dict({"max_pids": bad})
