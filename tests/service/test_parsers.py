"""The service's request parsers (pure), fuzzed: paths, working directories, keys, listen addresses."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given, settings, strategies as st

from blastwall.service.errors import ServiceError
from blastwall.service.server import parse_listen
from blastwall.service.commands import _argv, _cwd, _envs
from blastwall.service.sessions import _workspace_path
from blastwall.service.store import AuthFailure, split_key

PATHS = st.lists(st.sampled_from(list("ab./\x00\\~ é%") + ["..", "/home/user", "/home/user/", "/home/userx"]),
                 max_size=12).map("".join)


@given(PATHS)
@settings(max_examples=500)
def test_workspace_paths_stay_inside(path):
    try:
        relative = _workspace_path(path)
    except ServiceError as exc:
        assert exc.status == 400 and exc.code == "invalid_path"
        return
    assert relative and not relative.startswith("/") and "\x00" not in relative
    assert ".." not in relative.split("/") and "" not in relative.split("/")
    resolved = posixpath.normpath(posixpath.join("/home/user", relative))
    assert resolved.startswith("/home/user/")


@pytest.mark.parametrize("path, relative", [
    ("a.txt", "a.txt"), ("./a//b/", "a/b"), ("/home/user/x/y", "x/y"), ("/home/user//x", "x"),
])
def test_workspace_paths_table(path, relative):
    assert _workspace_path(path) == relative


@given(PATHS)
def test_cwd_is_absolute_and_without_dotdot(cwd):
    try:
        result = _cwd(cwd)
    except ServiceError as exc:
        assert exc.status == 422
        return
    assert result.startswith("/") and ".." not in result.split("/") and "\x00" not in result


@given(st.one_of(st.text(max_size=20), st.lists(st.one_of(st.text(max_size=5), st.integers()), max_size=3),
                 st.none(), st.integers(), st.dictionaries(st.text(max_size=3), st.text(max_size=3))))
def test_argv_parser_never_crashes(cmd):
    try:
        argv = _argv(cmd)
    except ServiceError as exc:
        assert exc.status == 422
        return
    assert argv and all(isinstance(a, str) and "\x00" not in a for a in argv)


@given(st.one_of(st.none(), st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=8), st.integers()),
                                            max_size=4), st.lists(st.text())))
def test_envs_parser_never_crashes(envs):
    try:
        _envs(envs)
    except ServiceError as exc:
        assert exc.status == 422


@given(st.text(max_size=120))
def test_split_key_never_crashes(key):
    try:
        key_id, secret = split_key(key)
    except AuthFailure:
        return
    assert len(key_id) == 12 and len(secret) >= 32


@pytest.mark.parametrize("text, expected", [("127.0.0.1:8700", ("127.0.0.1", 8700)), (":9000", ("127.0.0.1", 9000)),
                                            ("[::1]:8700", ("::1", 8700))])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8700", "host:", "host:0", "host:65536", "host:http", ""])
def test_parse_listen_refuses(text):
    with pytest.raises(ValueError):
        parse_listen(text)
