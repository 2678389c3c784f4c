"""HTTP rules and credential checks: tables of tricky requests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blastwall.egress.decide import (Credential, HttpRule, check_request, foreign_credentials, needs_interception,
                                     normalize_request_path, path_matches)

RULES = [HttpRule(host="api.example.com", methods=["GET", "POST"], paths=["/v1/messages", "/v1/models/*"],
                  max_body_bytes=1000, credential="KEY"),
         HttpRule(host="files.example.com", paths=["/public/**"])]
CRED = Credential(name="KEY", value="real-secret", placeholder="bw-placeholder-1", hosts=["api.example.com"],
                  header="x-api-key", template="{}")


@pytest.mark.parametrize("method,path,length,allowed,reason", [
    ("GET", "/v1/messages", None, True, "allowed"),
    ("POST", "/v1/messages?x=1", 10, True, "allowed"),
    ("GET", "/v1/models/claude", None, True, "allowed"),
    ("GET", "/v1/models/claude/extra", None, False, "not-granted"),
    ("GET", "/v1/models/", None, False, "not-granted"),
    ("DELETE", "/v1/messages", None, False, "not-granted"),
    ("GET", "/v1/files", None, False, "not-granted"),
    ("POST", "/v1/messages", 5000, False, "body-too-large"),
    ("GET", "/v1/messages/../admin", None, False, "ambiguous-path"),
    ("GET", "/v1/%2e%2e/admin", None, False, "ambiguous-path"),
    ("GET", "/v1/messages%2f..%2fadmin", None, False, "ambiguous-path"),
    ("GET", "//v1/messages", None, False, "ambiguous-path"),
    ("GET", "/v1\\messages", None, False, "ambiguous-path"),
])
def test_check_request(method, path, length, allowed, reason):
    verdict, _ = check_request(RULES, "api.example.com", 443, method, path, length)
    assert (verdict.allowed, verdict.reason) == (allowed, reason)


def test_deep_wildcard_and_unruled_hosts():
    assert check_request(RULES, "files.example.com", 443, "GET", "/public/a/b/c", None)[0].allowed
    assert not check_request(RULES, "files.example.com", 443, "GET", "/private", None)[0].allowed
    assert check_request(RULES, "other.example.com", 443, "DELETE", "/anything", None)[0].allowed


def test_interception_only_where_needed():
    assert needs_interception(RULES, [CRED], "api.example.com", 443)
    assert not needs_interception(RULES, [CRED], "github.com", 443)


@pytest.mark.parametrize("headers,query,foreign", [
    ([("x-api-key", "bw-placeholder-1")], [], []),
    ([("X-Api-Key", "sk-attacker-key")], [], ["header X-Api-Key"]),
    ([("x-api-key", "bw-placeholder-1"), ("Authorization", "Bearer sk-attacker")], [], ["header Authorization"]),
    ([("x-api-key", "bw-placeholder-1"), ("Cookie", "session=attacker")], [], ["header Cookie"]),
    ([("x-api-key", "bw-placeholder-1")], ["key"], ["query key"]),
    ([("x-api-key", "bw-placeholder-1"), ("X-Custom-Token", "t")], [], ["header X-Custom-Token"]),
    ([("content-type", "application/json"), ("accept", "*/*")], ["page"], []),
])
def test_foreign_credentials(headers, query, foreign):
    assert foreign_credentials(headers, query, CRED) == foreign


@pytest.mark.parametrize("pattern,path,match", [
    ("/a", "/a", True), ("/a", "/a/", False), ("/a/*", "/a/b", True), ("/a/*", "/a/b/c", False),
    ("/a/**", "/a", True), ("/a/**", "/a/b/c", True), ("/a/*/c", "/a/b/c", True), ("/a/*/c", "/a//c", False),
])
def test_path_matches(pattern, path, match):
    assert path_matches(pattern, path) is match


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=60))
def test_fuzz_path_normalization(raw):
    path = normalize_request_path(raw)
    if path is not None:
        assert path.startswith("/") and ".." not in path.split("/") and "%2e" not in path.lower()
    check_request(RULES, "api.example.com", 443, "GET", raw, None)
