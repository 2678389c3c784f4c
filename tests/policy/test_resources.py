"""[resources]: parsing sizes and durations, layering, the plan operation, trust, and fuzzing."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blastwall.errors import PolicyError
from blastwall.policy import plan as P
from blastwall.policy.model import (
    format_duration,
    format_size,
    merge,
    parse_duration,
    parse_layer,
    parse_size,
)
from blastwall.policy.toml_out import dumps
from blastwall.trust.project import split
from tests.policy.test_plan import compile_

KiB, MiB, GiB = 1024, 1024 ** 2, 1024 ** 3


def resources(doc: dict):
    return merge([parse_layer({"resources": doc}, "policy.toml")]).resources


@pytest.mark.parametrize("text,size", [
    ("512M", 512 * MiB), ("2G", 2 * GiB), ("64k", 64 * KiB), ("64K", 64 * KiB), ("1T", 1024 * GiB),
    ("1.5G", 1536 * MiB), ("512MiB", 512 * MiB), ("512mb", 512 * MiB), ("0.5g", 512 * MiB),
    ("16777216", 16 * MiB), ("1048576k", GiB), ("0001G", GiB),
])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", [
    "", "M", "G1", "1.5", "1.5b", ".5G", "5.G", "1e3", "1_000", " 1G", "1G ", "1 G", "-1G", "+1G", "1GG", "1P",
    "0x10M", "1,5G", "١G", "²M", "1" * 40 + "M", "1.0000000001G", "inf", "nan",
])
def test_not_sizes(text):
    assert parse_size(text) is None


@pytest.mark.parametrize("text,seconds", [
    ("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("90s", 90), ("1d2h3m4s", 93784),
    ("0s", 0), ("10", 10), ("0", 0),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [
    "", "s", "1h30", "10s5", "1m1m", "1.5h", "-1s", "1 s", "1S", "1w", "10ms", "١s", "1" * 40 + "s", "h1",
])
def test_not_durations(text):
    assert parse_duration(text) is None


def test_values_are_normalised():
    res = resources({"memory": "512M", "cpus": 0.5, "pids": 256, "timeout": "10m"})
    assert (res.memory, res.cpus, res.pids, res.timeout) == (512 * MiB, 0.5, 256, 600)
    res = resources({"memory": 64 * MiB, "cpus": 2, "timeout": 30})
    assert (res.memory, res.cpus, res.pids, res.timeout) == (64 * MiB, 2, None, 30)


def test_unset_means_no_limit():
    res = merge([]).resources
    assert (res.memory, res.cpus, res.pids, res.timeout) == (None, None, None, None)


@pytest.mark.parametrize("key,value,message", [
    ("memory", "15M", "out of range"), ("memory", "2T", "out of range"), ("memory", 1024, "out of range"),
    ("memory", "lots", "not a size"), ("memory", 1.5, "expected a size"), ("memory", True, "expected a size"),
    ("memory", [], "expected a size"),
    ("cpus", 0, "out of range"), ("cpus", -1, "out of range"), ("cpus", 0.001, "out of range"),
    ("cpus", 1025, "out of range"), ("cpus", float("nan"), "out of range"), ("cpus", float("inf"), "out of range"),
    ("cpus", "1", "expected a number"), ("cpus", True, "expected a number"),
    ("pids", 7, "out of range"), ("pids", 1_000_001, "out of range"), ("pids", 64.0, "expected a whole number"),
    ("pids", "64", "expected a whole number"), ("pids", False, "expected a whole number"),
    ("timeout", 0, "out of range"), ("timeout", "0s", "out of range"), ("timeout", -5, "out of range"),
    ("timeout", "8d", "out of range"), ("timeout", 7 * 86400 + 1, "out of range"), ("timeout", "10x", "not a duration"),
    ("timeout", 1.5, "expected a duration"), ("timeout", True, "expected a duration"),
])
def test_invalid_values_name_the_key_and_source(key, value, message):
    with pytest.raises(PolicyError, match=message) as info:
        parse_layer({"resources": {key: value}}, "policy.toml")
    assert info.value.key == f"resources.{key}"
    assert str(info.value).startswith(f"policy.toml: resources.{key}: ")


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(PolicyError, match="did you mean 'memory'"):
        parse_layer({"resources": {"memroy": "1G"}}, "policy.toml")


def test_bounds_are_inclusive():
    res = resources({"memory": "16M", "cpus": 0.01, "pids": 8, "timeout": "7d"})
    assert (res.memory, res.cpus, res.pids, res.timeout) == (16 * MiB, 0.01, 8, 7 * 86400)
    res = resources({"memory": "1T", "cpus": 1024, "pids": 1_000_000, "timeout": 1})
    assert (res.memory, res.cpus, res.pids, res.timeout) == (1024 * GiB, 1024, 1_000_000, 1)


def test_a_later_layer_replaces_each_key_it_sets():
    user = parse_layer({"resources": {"memory": "512M", "pids": 256, "timeout": "10m"}}, "user")
    project = parse_layer({"resources": {"memory": "1G", "cpus": 1}}, "project")
    res = merge([user, project]).resources
    # Per key, not the whole section: pids and timeout stay the user's.
    assert (res.memory, res.cpus, res.pids, res.timeout) == (GiB, 1, 256, 600)


def test_command_line_layer_replaces_too():
    flags = parse_layer({"resources": {"timeout": "30s"}}, "command line", extend_lists=True)
    assert merge([parse_layer({"resources": {"timeout": "1h"}}, "user"), flags]).resources.timeout == 30


def test_plan_has_resources_only_when_a_limit_is_set():
    assert compile_().of(P.Resources) == []
    (op,) = compile_({"resources": {"memory": "128M", "timeout": "1m"}}).of(P.Resources)
    assert op == P.Resources(128 * MiB, None, None, 60)
    assert op.limits() == ["memory"]
    (op,) = compile_({"resources": {"timeout": 5}}).of(P.Resources)
    assert op.limits() == []  # A timeout alone needs no cgroup: every tier can keep it.


def test_policy_show_writes_readable_values_that_read_back():
    layer = parse_layer({"resources": {"memory": "1.5G", "cpus": 0.5, "timeout": 5401}}, "x")
    data = merge([layer]).as_dict()
    assert data["resources"] == {"memory": "1536M", "cpus": 0.5, "pids": None, "timeout": "1h30m1s"}
    text = dumps(data)
    assert 'memory = "1536M"' in text and "cpus = 0.5" in text and "# pids: not set" in text
    again = merge([parse_layer(tomllib.loads(text), "round-trip")]).as_dict()
    assert again == data


@pytest.mark.parametrize("size", [16 * MiB, 16 * MiB + 1, 1536 * MiB, GiB, 1024 * GiB, 123456789])
def test_format_size_reads_back(size):
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize("seconds", [1, 59, 60, 61, 3600, 5400, 86399, 86400, 7 * 86400])
def test_format_duration_reads_back(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


# --- trust: a project policy may lower a limit, not raise it ------------------------------------

def test_project_limits_narrow_when_lower_and_widen_when_higher():
    base = merge([parse_layer({"resources": {"memory": "1G", "timeout": "10m"}}, "user")])
    project = parse_layer({"resources": {"memory": "2G", "timeout": "1m", "pids": 64}}, "project")
    narrowing, widening = split(base, project, workspace="/w", home="/h")
    assert narrowing.values == {("resources", "timeout"): ("set", 60), ("resources", "pids"): ("set", 64)}
    assert widening == ["resources.memory: raises the limit from 1G to 2G"]


# --- fuzzing: whatever the input, an answer or a PolicyError, never a crash --------------------

@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=40), st.text(alphabet="0123456789.kKmMgGtTbBiIsShHdD ", max_size=12)))
def test_fuzz_size_and_duration_strings(text):
    size = parse_size(text)
    assert size is None or (isinstance(size, int) and size >= 0)
    seconds = parse_duration(text)
    assert seconds is None or (isinstance(seconds, int) and seconds >= 0)
    for key in ("memory", "timeout"):
        try:
            parse_layer({"resources": {key: text}}, "fuzz")
        except PolicyError as exc:
            assert str(exc).startswith(f"fuzz: resources.{key}: ")


values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                   st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(["memory", "cpus", "pids", "timeout", "bogus"]), values, max_size=5))
def test_fuzz_resources_section(doc):
    try:
        res = resources(doc)
    except PolicyError as exc:
        assert str(exc).startswith("policy.toml: resources.")
        return
    # Whatever was accepted is within bounds and survives policy show.
    assert res.memory is None or 16 * MiB <= res.memory <= 1024 * GiB
    assert res.cpus is None or 0.01 <= res.cpus <= 1024
    assert res.pids is None or 8 <= res.pids <= 1_000_000
    assert res.timeout is None or 0 < res.timeout <= 7 * 86400
    data = merge([parse_layer({"resources": doc}, "x")]).as_dict()
    assert merge([parse_layer(tomllib.loads(dumps(data)), "again")]).as_dict() == data
