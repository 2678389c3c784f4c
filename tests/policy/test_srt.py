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


def srt(network=None, filesystem=None, **rest) -> dict:
    """A minimal settings file srt itself accepts, with these sections merged in."""
    return {"network": {"allowedDomains": [], "deniedDomains": [], **(network or {})},
            "filesystem": {"denyRead": [], "allowWrite": [], "denyWrite": [], **(filesystem or {})}, **rest}


def test_refuses_invalid_values_whole():
    with pytest.raises(PolicyError, match="allowedDomains"):
        convert_srt(srt({"allowedDomains": ["*"]}), "srt.json")


@pytest.mark.parametrize("pattern", ["not-a-domain", "*", "*.com", "https://example.com", "example.com:443",
                                     "example.com/path", "a.*.example.com", "example..com", ".example.com"])
def test_domain_patterns_srt_rejects_are_refused(pattern):
    with pytest.raises(PolicyError, match="not a domain pattern srt accepts"):
        convert_srt(srt({"allowedDomains": [pattern]}), "srt.json")


@pytest.mark.parametrize("section, key", [("network", "allowedDomains"), ("network", "deniedDomains"),
                                          ("filesystem", "denyRead"), ("filesystem", "allowWrite"),
                                          ("filesystem", "denyWrite")])
def test_missing_required_sections_are_refused(section, key):
    settings = srt()
    del settings[section][key]
    with pytest.raises(PolicyError, match=f"{section}.{key}"):
        convert_srt(settings, "srt.json")
    with pytest.raises(PolicyError):
        convert_srt({k: v for k, v in srt().items() if k != section}, "srt.json")


@pytest.mark.parametrize("key", ["denyRead", "denyWrite"])
def test_glob_denies_refuse_the_import_instead_of_weakening_it(key, tmp_path):
    path = tmp_path / "srt.json"
    path.write_text(json.dumps(srt(filesystem={key: ["~/.ssh", "~/.secret*"]})))
    with pytest.raises(PolicyError, match="glob") as info:
        import_srt_file(str(path))
    assert "~/.secret*" in str(info.value) and info.value.fix


def test_glob_grants_are_left_out_which_only_narrows():
    document, warnings = convert_srt(srt(filesystem={"allowWrite": [".", "/tmp/*"]}), "srt.json")
    assert document["filesystem"]["allow_write"] == ["."]
    assert any("/tmp/*" in w and "grants less" in w for w in warnings)


@pytest.mark.parametrize("text", ["{", "[]", '{"network": 5}', "null", "{}"])
def test_bad_json(tmp_path, text):
    path = tmp_path / "srt.json"
    path.write_text(text)
    with pytest.raises(PolicyError):
        import_srt_file(str(path))


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
