"""The policy model: validation, layering, immutability, and fuzzing of the parsers."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blastwall.errors import PolicyError
from blastwall.policy.load import parse_toml
from blastwall.policy.model import SCHEMA, merge, parse_layer
from blastwall.policy.toml_out import dumps


def test_defaults():
    policy = merge([])
    assert policy.filesystem.allow_write == (".",)
    assert policy.filesystem.deny_read == ()
    assert policy.network.allow == ()
    assert policy.sandbox.tier == "process"
    assert policy.filesystem.private_tmp is True


def test_contract_keys_exist():
    # Tests outside the project rely on these keys.
    for section, key in [("filesystem", "deny_read"), ("filesystem", "allow_write"), ("filesystem", "deny_write"),
                         ("network", "allow"), ("network", "deny")]:
        assert key in SCHEMA[section]


def test_user_file_adds_to_deny_and_replaces_allow():
    user = parse_layer({"filesystem": {"deny_read": ["~/.secret"], "allow_write": []}}, "user")
    policy = merge([user])
    assert policy.filesystem.deny_read == ("~/.secret",)
    assert policy.filesystem.allow_write == ()


def test_deny_accumulates_across_layers_and_flags_extend():
    a = parse_layer({"network": {"deny": ["a.example.com"], "allow": ["x.example.com"]}}, "user")
    b = parse_layer({"network": {"deny": ["b.example.com"], "allow": ["y.example.com"]}}, "command line",
                    extend_lists=True)
    policy = merge([a, b])
    assert policy.network.deny == ("a.example.com", "b.example.com")
    assert policy.network.allow == ("x.example.com", "y.example.com")


def test_later_file_layer_cannot_drop_an_earlier_deny():
    a = parse_layer({"filesystem": {"deny_write": ["locked"]}}, "user")
    b = parse_layer({"filesystem": {"deny_write": []}}, "other")
    assert merge([a, b]).filesystem.deny_write == ("locked",)


def test_policy_is_immutable():
    policy = merge([])
    with pytest.raises(AttributeError):
        policy.network = None
    with pytest.raises(AttributeError):
        policy.network.allow = ("evil.com",)


def test_host_patterns_are_normalised():
    layer = parse_layer({"network": {"allow": ["GitHub.COM.", "*.Example.org:8443", "bücher.example"]}}, "x")
    assert merge([layer]).network.allow == ("github.com", "*.example.org:8443", "xn--bcher-kva.example")


@pytest.mark.parametrize("doc,key", [
    ({"filesystem": []}, "filesystem"),
    ({"filesystem": {"deny_read": [""]}}, "filesystem.deny_read[0]"),
    ({"filesystem": {"deny_read": ["~bob/.ssh"]}}, "filesystem.deny_read[0]"),
    ({"filesystem": {"deny_read": ["a\nb"]}}, "filesystem.deny_read[0]"),
    ({"filesystem": {"deny_read": ["/x/*"]}}, "filesystem.deny_read[0]"),
    ({"filesystem": {"private_tmp": "yes"}}, "filesystem.private_tmp"),
    ({"environment": {"pass": ["A-B"]}}, "environment.pass[0]"),
    ({"environment": {"set": {"X": 1}}}, "environment.set.X"),
    ({"sandbox": {"require": ["selinux"]}}, "sandbox.require[0]"),
    ({"network": {"deny": ["*.com"]}}, "network.deny[0]"),
])
def test_invalid_documents_name_the_key(doc, key):
    with pytest.raises(PolicyError) as info:
        parse_layer(doc, "policy.toml")
    assert info.value.key == key
    assert str(info.value).startswith(f"policy.toml: {key}: ")


def test_too_many_entries():
    with pytest.raises(PolicyError, match="too many"):
        parse_layer({"filesystem": {"deny_read": ["/x"] * 5000}}, "p")


def test_toml_round_trip_of_effective_policy():
    layer = parse_layer({"filesystem": {"deny_read": ['~/we"ird\\path'], "allow_write": [".", "/srv/x"]},
                         "network": {"allow": ["api.example.com:443"]},
                         "environment": {"set": {"A": "1 2"}}}, "x")
    data = merge([layer]).as_dict()
    again = merge([parse_layer(tomllib.loads(dumps(data)), "round-trip")]).as_dict()
    assert again == data


# --- fuzzing: whatever the input, the parsers answer with a value or a PolicyError ---------

toml_scalars = st.one_of(st.text(max_size=20), st.integers(), st.booleans(), st.floats(allow_nan=False))
toml_values = st.recursive(toml_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                               st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                           max_leaves=12)
sections = st.sampled_from([*SCHEMA, "bogus"])
keys = st.sampled_from(sorted({k for body in SCHEMA.values() for k in body} | {"nope"}))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(sections, st.dictionaries(keys, toml_values, max_size=4), max_size=4))
def test_fuzz_parse_layer(document):
    try:
        layer = parse_layer(document, "fuzz")
    except PolicyError as exc:
        assert str(exc).startswith("fuzz: ")
        return
    merge([layer])  # A valid layer always merges.


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_toml_text(text):
    try:
        document = parse_toml(text, "fuzz.toml")
        parse_layer(document, "fuzz.toml")
    except PolicyError:
        pass
