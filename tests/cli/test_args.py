"""The hand-written argument parser: a table of cases and a fuzzer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blastwall.cli.args import COMMANDS, UsageError, parse


@pytest.mark.parametrize("argv,command,options,args", [
    (["run", "--", "ls", "-la"], "run", {}, ["ls", "-la"]),
    (["run", "ls", "-la"], "run", {}, ["ls", "-la"]),
    (["run", "--allow-domain", "a.com", "--allow-domain=b.com", "--", "curl", "--allow-domain"],
     "run", {"--allow-domain": ["a.com", "b.com"]}, ["curl", "--allow-domain"]),
    (["run", "--read-only", "--workspace", "/w", "true"], "run", {"--read-only": True, "--workspace": "/w"}, ["true"]),
    (["policy", "show", "--plan"], "policy show", {"--plan": True}, []),
    (["policy", "import-srt", "f.json", "--output", "p.toml"], "policy import-srt", {"--output": "p.toml"}, ["f.json"]),
    (["doctor", "--json"], "doctor", {"--json": True}, []),
    ([], "help", {}, []),
    (["--version"], "version", {}, []),
])
def test_cases(argv, command, options, args):
    parsed = parse(argv)
    assert (parsed.command, parsed.options, parsed.args) == (command, options, args)


@pytest.mark.parametrize("argv", [
    ["run"], ["run", "--"], ["run", "--workspace"], ["run", "--workspace", "a", "--workspace", "b", "true"],
    ["run", "--read-only=yes", "true"], ["run", "-x", "true"], ["policy"], ["policy", "frob"],
    ["shell", "extra"], ["policy", "import-srt"], ["doctor", "--nope"], ["nope"],
])
def test_usage_errors(argv):
    with pytest.raises(UsageError):
        parse(argv)


words = st.one_of(st.sampled_from(["run", "shell", "policy", "show", "import-srt", "doctor", "--", "-", "--json",
                                   "--policy", "--allow-domain", "--env", "--read-only", "--plan", "-h", "x=y"]),
                  st.text(max_size=12))


@settings(max_examples=2000, deadline=None)
@given(st.lists(words, max_size=8))
def test_fuzz_parse_is_total(argv):
    try:
        parsed = parse(argv)
    except UsageError:
        return
    assert parsed.command in COMMANDS or parsed.command == "help"
