"""Importing an srt (Anthropic sandbox-runtime) settings file as a blastwall policy.

srt settings are JSON.  Keys with a blastwall equivalent are converted; keys
that would weaken the sandbox beyond what blastwall offers, or that have no
equivalent yet, are reported and left out, never silently approximated.  The
result is validated with the same schema as any policy file.

An import never yields a policy weaker than the srt settings it came from:
what srt itself rejects (a missing required section, a domain pattern it
would refuse) is refused here too, and a deny that blastwall cannot express
(a glob in ``denyRead`` or ``denyWrite``: blastwall denies paths, not
patterns) refuses the whole import instead of being dropped.  Only grants
may be left out (that narrows), with a warning.
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


# What srt's own schema requires: each of these lists must be present.
_REQUIRED = (("network", "allowedDomains"), ("network", "deniedDomains"), ("filesystem", "denyRead"),
             ("filesystem", "allowWrite"), ("filesystem", "denyWrite"))
_DENIES = (("filesystem", "denyRead"), ("filesystem", "denyWrite"))


def srt_domain_ok(pattern: object) -> bool:
    """True for a domain pattern srt accepts: ``example.com``, ``*.example.com``, ``localhost``."""
    if not isinstance(pattern, str) or any(bad in pattern for bad in ("://", "/", ":")):
        return False
    if pattern == "localhost":
        return True
    name = pattern[2:] if pattern.startswith("*.") else pattern
    labels = name.split(".")
    return "*" not in name and len(labels) >= 2 and all(labels)


def _check_srt(settings: dict, source: str) -> None:
    """Refuse what srt itself would refuse, naming the key."""
    for section, key in _REQUIRED:
        body = settings.get(section)
        if not isinstance(body, dict) or not isinstance(body.get(key), list):
            raise PolicyError(f"srt requires the list {section}.{key} (srt itself refuses this file)",
                              source=source, fix="add it, even empty: \"%s\": []" % key)
    for key in ("allowedDomains", "deniedDomains"):
        for pattern in settings["network"][key]:
            if not srt_domain_ok(pattern):
                raise PolicyError(f"network.{key}: {pattern!r} is not a domain pattern srt accepts "
                                  "(example.com, *.example.com or localhost)", source=source)
    for section, key in _DENIES:
        for path in settings[section][key]:
            if isinstance(path, str) and any(c in path for c in "*?["):
                raise PolicyError(f"{section}.{key}: {path!r} is a glob; blastwall denies paths, not patterns, so "
                                  "importing it would hide or protect less than your srt settings do",
                                  source=source, fix="replace the glob by the paths it should cover, then import")


def convert_srt(settings: object, source: str) -> tuple[dict, list[str]]:
    """The blastwall policy document for srt ``settings`` and the warnings."""
    if not isinstance(settings, dict):
        raise PolicyError("expected a JSON object at the top level", source=source)
    _check_srt(settings, source)
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
                if isinstance(value, list) and section != "network":
                    # Denies with globs were refused above; a globbed *grant* left out only narrows.
                    globbed = [v for v in value if isinstance(v, str) and any(c in v for c in "*?[")]
                    if globbed:
                        warnings.append(f"{top}.{key}: glob patterns not imported, which grants less "
                                        "(list paths instead): " + ", ".join(globbed))
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
