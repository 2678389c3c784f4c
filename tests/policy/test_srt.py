"""Importing srt settings."""

from __future__ import annotations

import json
import tomllib

import pytest

from blastwall.errors import PolicyError
from blastwall.policy.model import merge, parse_layer
from blastwall.policy.srt import convert_srt, import_srt_file


def test_converts_the_common_keys(tmp_path):
    settings = {
        "network": {"allowedDomains": ["github.com", "*.npmjs.org"], "deniedDomains": ["evil.example.com"],
                    "allowUnixSockets": ["/run/user/1000/ssh-agent.sock"], "allowLocalBinding": True},
        "filesystem": {"denyRead": ["~/.ssh"], "allowWrite": [".", "/tmp/build"], "denyWrite": [".env"]},
        "enableWeakerNestedSandbox": True,
    }
    path = tmp_path / "srt.json"
    path.write_text(json.dumps(settings))
    text, warnings = import_srt_file(str(path))
    policy = merge([parse_layer(tomllib.loads(text), "imported")])
    assert policy.network.allow == ("github.com", "*.npmjs.org")
    assert policy.network.deny == ("evil.example.com",)
    assert policy.filesystem.deny_read == ("~/.ssh",)
    assert policy.filesystem.allow_write == (".", "/tmp/build")
    assert policy.filesystem.deny_write == (".env",)
    assert policy.filesystem.allow_unix_sockets == ("/run/user/1000/ssh-agent.sock",)
    assert any("enableWeakerNestedSandbox" in w for w in warnings)
    assert any("allowLocalBinding" in w for w in warnings)


def test_refuses_invalid_values_whole():
    with pytest.raises(PolicyError, match="network.allow"):
        convert_srt({"network": {"allowedDomains": ["*"]}}, "srt.json")


def test_glob_paths_are_reported_not_guessed():
    document, warnings = convert_srt({"filesystem": {"denyRead": ["~/.ssh", "**/*.pem"]}}, "srt.json")
    assert document["filesystem"]["deny_read"] == ["~/.ssh"]
    assert any("*.pem" in w for w in warnings)


@pytest.mark.parametrize("text", ["{", "[]", '{"network": 5}', "null"])
def test_bad_json(tmp_path, text):
    path = tmp_path / "srt.json"
    path.write_text(text)
    try:
        import_srt_file(str(path))
    except PolicyError:
        return
    # '{"network": 5}' is valid JSON with an unusable section: warned, not fatal.
    assert text == '{"network": 5}'


def test_credentials_and_tls_keys():
    settings = {
        "network": {"allowedDomains": ["api.example.com"], "deniedDomains": [],
                    "tlsTerminate": {"excludeDomains": ["pinned.example.com"]}},
        "filesystem": {"denyRead": [], "allowWrite": ["."], "denyWrite": [], "allowGitConfig": True},
        "credentials": {"envVars": [{"name": "API_KEY", "mode": "mask", "injectHosts": ["api.example.com"]},
                                    {"name": "OTHER_TOKEN", "mode": "deny"},
                                    {"name": "JWT", "mode": "mask", "decode": "jwt"}],
                        "files": [{"path": "~/.config/tool/token", "mode": "mask"}]},
    }
    document, warnings = convert_srt(settings, "srt.json")
    policy = merge([parse_layer(document, "imported")])
    (cred,) = policy.credentials.entries
    assert dict(cred)["name"] == "API_KEY" and dict(cred)["hosts"] == ("api.example.com",)
    assert policy.environment.deny == ("OTHER_TOKEN",)
    assert policy.filesystem.deny_read == ("~/.config/tool/token",)
    text = " ".join(warnings)
    assert "JWT" in text and "tlsTerminate" in text and "allowGitConfig" in text and "hidden instead" in text
