"""Importing an srt (Anthropic sandbox-runtime) settings file as a blastwall policy.

srt settings are JSON.  Keys with a blastwall equivalent are converted; keys
that would weaken the sandbox beyond what blastwall offers, or that have no
equivalent yet, are reported and left out, never silently approximated.  The
result is validated with the same schema as any policy file.
"""

from __future__ import annotations

from blastwall.errors import PolicyError
from blastwall.policy.load import read_text
from blastwall.policy.model import parse_layer
from blastwall.policy.toml_out import dumps

__all__ = ["convert_srt", "import_srt_file"]

# srt key path -> (section, key) in blastwall.
_MAPPED = {
    ("network", "allowedDomains"): ("network", "allow"),
    ("network", "deniedDomains"): ("network", "deny"),
    ("network", "allowUnixSockets"): ("filesystem", "allow_unix_sockets"),
    ("filesystem", "denyRead"): ("filesystem", "deny_read"),
    ("filesystem", "allowWrite"): ("filesystem", "allow_write"),
    ("filesystem", "denyWrite"): ("filesystem", "deny_write"),
}

# Keys deliberately not imported, with the reason shown to the user.
_REFUSED = {
    ("network", "allowAllUnixSockets"): "blastwall never allows every unix socket; list them in allowUnixSockets",
    ("network", "allowLocalBinding"): "not needed: a blastwall sandbox can always listen on its own loopback",
    ("network", "httpProxyPort"): "blastwall runs its own egress gateway",
    ("network", "socksProxyPort"): "blastwall runs its own egress gateway",
    ("network", "mitmProxy"): "use [[network.rules]] and [credentials] instead (egress gateway)",
    ("network", "tlsTerminate"): "blastwall's gateway makes its own CA and decrypts only hosts with "
                                 "[[network.rules]] or [credentials]; nothing to import",
    ("network", "strictAllowlist"): "blastwall's allowlist is always strict",
    ("network", "deniedDomainReasons"): "not supported yet",
    ("filesystem", "allowGitConfig"): "blastwall always keeps .git/config read-only",
    ("network", "parentProxy"): "upstream proxies are not supported yet",
    ("filesystem", "allowRead"): "blastwall allows reads everywhere except denied paths",
    (None, "enableWeakerNestedSandbox"): "blastwall has no weaker mode",
    (None, "ignoreViolations"): "blastwall does not ignore violations",
    (None, "ripgrep"): "not applicable",
}


def convert_srt(settings: object, source: str) -> tuple[dict, list[str]]:
    """The blastwall policy document for srt ``settings`` and the warnings."""
    if not isinstance(settings, dict):
        raise PolicyError("expected a JSON object at the top level", source=source)
    document: dict[str, dict[str, object]] = {}
    warnings: list[str] = []
    for top, body in settings.items():
        if (None, top) in _REFUSED:
            warnings.append(f"{top} not imported: {_REFUSED[(None, top)]}")
            continue
        if top == "credentials" and isinstance(body, dict):
            _convert_credentials(body, settings, document, warnings)
            continue
        if top not in ("network", "filesystem") or not isinstance(body, dict):
            warnings.append(f"{top} not imported: no blastwall equivalent")
            continue
        for key, value in body.items():
            slot = (top, key)
            if slot in _MAPPED:
                section, name = _MAPPED[slot]
                if isinstance(value, list):
                    globbed = [v for v in value if isinstance(v, str) and any(c in v for c in "*?[")
                               and not (section == "network")]
                    if globbed:
                        warnings.append(f"{top}.{key}: glob patterns not imported (list paths instead): "
                                        + ", ".join(globbed))
                        value = [v for v in value if v not in globbed]
                document.setdefault(section, {})[name] = value
            elif slot in _REFUSED:
                warnings.append(f"{top}.{key} not imported: {_REFUSED[slot]}")
            else:
                warnings.append(f"{top}.{key} not imported: no blastwall equivalent")
    parse_layer(document, source)  # Validates whole; raises PolicyError naming the key.
    return document, warnings


def _convert_credentials(body: dict, settings: dict, document: dict, warnings: list[str]) -> None:
    """srt's ``credentials.envVars`` / ``credentials.files`` where blastwall has an equivalent."""
    allowed = (settings.get("network") or {}).get("allowedDomains") or []
    for entry in body.get("envVars") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            warnings.append("credentials.envVars: an entry without a name was not imported")
            continue
        name, mode = entry["name"], entry.get("mode")
        if mode == "deny":
            document.setdefault("environment", {}).setdefault("deny", []).append(name)
        elif mode == "mask" and not any(k in entry for k in ("extract", "decode", "maskClaims")):
            hosts = entry.get("injectHosts") or allowed
            document.setdefault("credentials", {})[name] = {"from": f"env:{name}", "hosts": list(hosts)}
            warnings.append(f"credentials.envVars {name}: imported as [credentials.{name}]; blastwall swaps the "
                            "placeholder in request headers (default header: authorization: Bearer {}) — check "
                            "'header' and add [[network.rules]] to bind it to paths")
        else:
            warnings.append(f"credentials.envVars {name}: mode {mode!r} with extract/decode is not supported; "
                            "not imported")
    for entry in body.get("files") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            warnings.append("credentials.files: an entry without a path was not imported")
            continue
        document.setdefault("filesystem", {}).setdefault("deny_read", []).append(entry["path"])
        if entry.get("mode") == "mask":
            warnings.append(f"credentials.files {entry['path']}: masking files is not supported; "
                            "the file is hidden instead (filesystem.deny_read)")
    for key in ("awsPairs", "sigv4", "allowPlaintextInject"):
        if key in body:
            warnings.append(f"credentials.{key} not imported: no blastwall equivalent yet")


def import_srt_file(path: str) -> tuple[str, list[str]]:
    """Read an srt settings file; return the TOML text of the policy and the warnings."""
    import json

    text = read_text(path, "srt settings file")
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", source=path) from None
    except RecursionError:
        raise PolicyError("not valid JSON: nested too deeply", source=path) from None
    document, warnings = convert_srt(settings, path)
    header = f"# blastwall policy imported from srt settings {path}\n\n"
    return header + dumps(document), warnings
