"""HTTP rules and credential checks: tables of tricky requests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blastwall.egress.decide import Rules, inspects
from blastwall.egress.messages import (Credential, HttpRule, check_binding, check_request, normalize_path,
                                       path_matches)

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
    ("GET", "/v1/mess%61ges", None, True, "allowed"),  # One normal form: %61 is 'a'.
])
def test_check_request(method, path, length, allowed, reason):
    normal = normalize_path(path)
    verdict, _ = check_request(RULES, "api.example.com", 443, method, normal[0], length)
    assert (verdict.allowed, verdict.reason) == (allowed, reason)


@pytest.mark.parametrize("raw", ["/v1/messages/../admin", "/v1/%2e%2e/admin", "/v1/messages%2f..%2fadmin",
                                 "//v1/messages", "/v1\\messages", "/v1/..;/admin", "/v1/%252e%252e/admin",
                                 "/v1/%c0%ae%c0%ae/admin", "/v1/%EF%BC%8E%EF%BC%8E/admin", "/v1/messages#frag",
                                 "/v1/messages;key=x", "/v1/messages?a=1;key=x", "/v1/m\u00e9", "/v1/%00",
                                 "/v1/messages\r\nX: y", "v1/messages", "/v1/%zz"])
def test_ambiguous_paths_are_refused(raw):
    assert normalize_path(raw) is None


def test_deep_wildcard_and_unruled_hosts():
    assert check_request(RULES, "files.example.com", 443, "GET", "/public/a/b/c", None)[0].allowed
    assert not check_request(RULES, "files.example.com", 443, "GET", "/private", None)[0].allowed
    assert check_request(RULES, "other.example.com", 443, "DELETE", "/anything", None)[0].allowed


def test_a_session_with_grants_reads_every_host_but_passthrough():
    assert inspects(Rules(grants=True), "github.com", 443)
    assert not inspects(Rules(grants=True, passthrough=["pinned.example.com"]), "pinned.example.com", 443)
    assert not inspects(Rules(grants=False), "github.com", 443)


BOUND = HttpRule(host="api.example.com", credential="KEY", headers=["anthropic-version"], query=["page"],
                 cookies=["region"])


@pytest.mark.parametrize("headers,query,reason", [
    ([("x-api-key", "bw-placeholder-1")], [], "allowed"),
    ([("X-Api-Key", "sk-attacker-key")], [], "foreign-credential"),
    ([("x-api-key", "bw-placeholder-1"), ("Authorization", "Bearer sk-attacker")], [], "header-not-granted"),
    ([("x-api-key", "bw-placeholder-1"), ("Cookie", "session=attacker")], [], "cookie-not-granted"),
    ([("x-api-key", "bw-placeholder-1"), ("Cookie", "region=eu")], [], "allowed"),
    ([("x-api-key", "bw-placeholder-1")], ["key"], "query-not-granted"),
    ([("x-api-key", "bw-placeholder-1")], ["page"], "allowed"),
    # Names nobody thought of: refused because they are not named, not because they were listed.
    *[([("x-api-key", "bw-placeholder-1"), (name, "sk-attacker")], [], "header-not-granted")
      for name in ("apikey", "x-apikey", "X-Authorization", "Authentication", "Token", "X-Custom-Token")],
    *[([("x-api-key", "bw-placeholder-1")], [key], "query-not-granted")
      for key in ("private_token", "api-key", "access_key", "auth_token")],
    ([("x-api-key", "bw-placeholder-1"), ("anthropic-version", "2023-06-01"), ("content-type", "a/b")], [],
     "allowed"),
])
def test_credential_binding_is_an_allowlist(headers, query, reason):
    assert check_binding(BOUND, CRED, headers, query).reason == reason


@pytest.mark.parametrize("pattern,path,match", [
    ("/a", "/a", True), ("/a", "/a/", False), ("/a/*", "/a/b", True), ("/a/*", "/a/b/c", False),
    ("/a/**", "/a", True), ("/a/**", "/a/b/c", True), ("/a/*/c", "/a/b/c", True), ("/a/*/c", "/a//c", False),
])
def test_path_matches(pattern, path, match):
    assert path_matches(pattern, path) is match


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=60))
def test_fuzz_path_normalization(raw):
    normal = normalize_path(raw)
    if normal is not None:
        path, _query = normal
        assert path.startswith("/") and ".." not in path.split("/") and "." not in path.split("/")
        assert "%2E" not in path.upper() and "%2F" not in path.upper() and "%25" not in path and ";" not in path
        assert normalize_path(path) == (path, "")  # The normal form is a fixed point.
        check_request(RULES, "api.example.com", 443, "GET", path, None)
