"""The policy model: one schema, validated layers, an immutable merged ``Policy``.

A *layer* is what one source says: the built-in defaults, the user's file, the
command line.  ``parse_layer`` validates a raw document (a dict, as decoded from
TOML) against ``SCHEMA`` and returns a ``Layer``; ``merge`` folds layers, lowest
first, into a ``Policy``.  Bad input is rejected whole with a ``PolicyError``
naming the key and the problem; nothing is half applied.

Merging: a layer that *sets* an allow-list replaces the lower layers' value
(so a user can make the workspace read-only with ``allow_write = []``), while
deny-lists always accumulate (deny wins, whichever layer said it).  Command-line
flags always *add* to lists.

Everything here is pure; the hot path of ``blastwall run`` imports this module,
so it avoids heavy imports (no dataclasses, typing, re or pydantic: on this
class of machine each costs several milliseconds of start-up).
"""

from __future__ import annotations

from blastwall.errors import PolicyError
from blastwall.policy.hosts import HostPatternError, normalize_host_pattern
from blastwall.policy.units import format_duration, format_size, parse_duration, parse_size  # noqa: F401 (re-exported)

__all__ = [
    "SCHEMA",
    "Layer",
    "Policy",
    "merge",
    "parse_layer",
]

MAX_LIST = 4096
MAX_STRING = 4096
TIERS = ("process", "container", "vm")
REQUIREMENTS = ("landlock",)


# --- value kinds -------------------------------------------------------------
# Each validator takes (value, key, source) and returns the normalised value or
# raises PolicyError.


def _string_list(value: object, key: str, source: str) -> list[str]:
    if not isinstance(value, list):
        raise PolicyError(
            f"expected a list of strings, got {_type_name(value)}", key=key, source=source
        )
    if len(value) > MAX_LIST:
        raise PolicyError(f"too many entries (at most {MAX_LIST})", key=key, source=source)
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise PolicyError(
                f"expected a string, got {_type_name(item)}", key=f"{key}[{index}]", source=source
            )
    return value


def _paths(value: object, key: str, source: str) -> tuple[str, ...]:
    out: list[str] = []
    for index, item in enumerate(_string_list(value, key, source)):
        out.append(check_path(item, f"{key}[{index}]", source))
    return _dedupe(out)


def check_path(item: str, key: str, source: str) -> str:
    """Validate one path as written in a policy; return it unchanged."""
    if not item:
        raise PolicyError("empty path", key=key, source=source)
    if len(item) > MAX_STRING:
        raise PolicyError("path is too long", key=key, source=source)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in item):
        raise PolicyError("path contains a control character", key=key, source=source)
    if item.startswith("~") and not (item == "~" or item.startswith("~/")):
        raise PolicyError(
            f"{item!r}: only '~' and '~/...' are supported, not '~user'", key=key, source=source
        )
    if "*" in item or "?" in item:
        raise PolicyError(
            f"{item!r}: wildcards are not supported in paths; list each path",
            key=key,
            source=source,
        )
    return item


def _hosts(value: object, key: str, source: str, *, allow_star: bool) -> tuple[str, ...]:
    out: list[str] = []
    for index, item in enumerate(_string_list(value, key, source)):
        try:
            out.append(normalize_host_pattern(item, allow_star=allow_star))
        except HostPatternError as exc:
            raise PolicyError(str(exc), key=f"{key}[{index}]", source=source) from None
    return _dedupe(out)


def _allow_hosts(value: object, key: str, source: str) -> tuple[str, ...]:
    return _hosts(value, key, source, allow_star=False)


def _deny_hosts(value: object, key: str, source: str) -> tuple[str, ...]:
    return _hosts(value, key, source, allow_star=True)


def _resolve_map(value: object, key: str, source: str) -> tuple[tuple[str, str], ...]:
    import ipaddress  # Only when the policy pins names.

    if not isinstance(value, dict):
        raise PolicyError(f"expected a table of name = address, got {_type_name(value)}", key=key, source=source)
    out = []
    for name, addr in value.items():
        try:
            canonical = normalize_host_pattern(name)
        except HostPatternError as exc:
            raise PolicyError(str(exc), key=f"{key}.{name}", source=source) from None
        if canonical.startswith("*") or ":" in canonical.rpartition("]")[2]:
            raise PolicyError("give a plain host name, without wildcard or port", key=f"{key}.{name}", source=source)
        if not isinstance(addr, str):
            raise PolicyError(f"expected an IP address, got {_type_name(addr)}", key=f"{key}.{name}", source=source)
        try:
            parsed = ipaddress.ip_address(addr)
        except ValueError:
            raise PolicyError(f"{addr!r} is not an IP address", key=f"{key}.{name}", source=source) from None
        if str(parsed) != addr:
            raise PolicyError(f"{addr!r}: write the address canonically ({parsed})", key=f"{key}.{name}", source=source)
        out.append((canonical, addr))
    return tuple(sorted(out))


def _networks(value: object, key: str, source: str) -> tuple[str, ...]:
    import ipaddress  # Only when the policy trusts address ranges.

    out = []
    for index, item in enumerate(_string_list(value, key, source)):
        try:
            out.append(str(ipaddress.ip_network(item, strict=True)))
        except ValueError as exc:
            raise PolicyError(f"{item!r} is not an address range like '10.1.0.0/16' ({exc})",
                              key=f"{key}[{index}]", source=source) from None
    return _dedupe(out)


_METHOD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/*:@!$&'()+,;=")


def check_url_path(item: object, key: str, source: str) -> str:
    """A path pattern for [[network.rules]]: '/v1/messages', '/v1/models/*', '/files/**'."""
    if not isinstance(item, str) or not item.startswith("/"):
        raise PolicyError("a path must start with '/'", key=key, source=source)
    if len(item) > 2048 or not set(item) <= _PATH_CHARS:
        raise PolicyError(f"{item!r}: unsupported character (no query strings, percent-escapes or spaces)",
                          key=key, source=source)
    segments = item.split("/")[1:]
    if any(seg in (".", "..") for seg in segments) or "//" in item:
        raise PolicyError(f"{item!r}: no '.', '..' or empty segments", key=key, source=source)
    for seg in segments:
        if "*" in seg and seg not in ("*", "**"):
            raise PolicyError(f"{item!r}: '*' must be a whole segment ('*' one segment, '**' any depth)",
                              key=key, source=source)
    return item


def _rules(value: object, key: str, source: str) -> tuple:
    if not isinstance(value, list):
        raise PolicyError(f"expected a list of tables ([[network.rules]]), got {_type_name(value)}",
                          key=key, source=source)
    out = []
    for index, rule in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(rule, dict):
            raise PolicyError(f"expected a table, got {_type_name(rule)}", key=where, source=source)
        known = ["host", "methods", "paths", "max_body_bytes", "credential", "headers", "query", "cookies"]
        unknown = set(rule) - set(known)
        if unknown:
            raise PolicyError(_unknown("key", sorted(unknown)[0], known), key=where, source=source)
        if "host" not in rule:
            raise PolicyError("a rule needs a host", key=where, source=source)
        try:
            host = normalize_host_pattern(rule["host"]) if isinstance(rule["host"], str) else None
        except HostPatternError as exc:
            raise PolicyError(str(exc), key=f"{where}.host", source=source) from None
        if host is None:
            raise PolicyError("expected a string", key=f"{where}.host", source=source)
        methods = None
        if "methods" in rule:
            methods = []
            for i, method in enumerate(_string_list(rule["methods"], f"{where}.methods", source)):
                upper = method.upper()
                if not upper or not set(upper) <= _METHOD_CHARS or len(upper) > 20:
                    raise PolicyError(f"{method!r} is not an HTTP method", key=f"{where}.methods[{i}]", source=source)
                methods.append(upper)
            methods = tuple(_dedupe(methods))
        paths = None
        if "paths" in rule:
            paths = tuple(check_url_path(p, f"{where}.paths[{i}]", source)
                          for i, p in enumerate(_string_list(rule["paths"], f"{where}.paths", source)))
        limit = rule.get("max_body_bytes")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise PolicyError("expected a number of bytes >= 0", key=f"{where}.max_body_bytes", source=source)
        credential = rule.get("credential")
        if credential is not None and (not isinstance(credential, str) or not is_env_name(credential)):
            raise PolicyError("expected a credential name", key=f"{where}.credential", source=source)
        # What a request to a credential's host may carry besides the safe headers (egress/messages.py).
        allowed = {}
        for name in ("headers", "query", "cookies"):
            if name not in rule:
                allowed[name] = None
                continue
            items = _string_list(rule[name], f"{where}.{name}", source)
            for i, item in enumerate(items):
                bad = not item or len(item) > 200 or (name == "query" and any(c in item for c in "&=#;")) \
                    or (name != "query" and not all(c.isalnum() or c in "-_." for c in item))
                if bad:
                    raise PolicyError(f"{item!r} is not a {name[:-1] if name != 'query' else 'query key'} name",
                                      key=f"{where}.{name}[{i}]", source=source)
            allowed[name] = tuple(_dedupe([i.lower() for i in items] if name == "headers" else items))
        out.append((("host", host), ("methods", methods), ("paths", paths), ("max_body_bytes", limit),
                    ("credential", credential), ("headers", allowed["headers"]), ("query", allowed["query"]),
                    ("cookies", allowed["cookies"])))
    return tuple(out)


def _ca_path(value: object, key: str, source: str) -> str:
    if value == "":
        return ""
    if not isinstance(value, str):
        raise PolicyError(f"expected a path to a PEM file, got {_type_name(value)}", key=key, source=source)
    return check_path(value, key, source)


def _credential(name: str, value: object, source: str) -> tuple:
    where = f"credentials.{name}"
    if not is_env_name(name):
        raise PolicyError(f"{name!r} is not a valid credential name (letters, digits, _)", key=where, source=source)
    if not isinstance(value, dict):
        raise PolicyError(f"expected a table, got {_type_name(value)}", key=where, source=source)
    unknown = set(value) - {"from", "hosts", "header"}
    if unknown:
        raise PolicyError(_unknown("key", sorted(unknown)[0], ["from", "hosts", "header"]), key=where, source=source)
    origin = value.get("from")
    if not isinstance(origin, str) or not origin.startswith(("env:", "file:", "keyring:")):
        raise PolicyError("'from' must be env:NAME, file:PATH or keyring:SERVICE/NAME", key=f"{where}.from",
                          source=source)
    kind, _, ref = origin.partition(":")
    if kind == "env" and not is_env_name(ref):
        raise PolicyError(f"{ref!r} is not an environment variable name", key=f"{where}.from", source=source)
    if kind == "file":
        check_path(ref, f"{where}.from", source)
    if kind == "keyring" and (ref.count("/") != 1 or not all(ref.split("/"))):
        raise PolicyError("keyring:SERVICE/NAME", key=f"{where}.from", source=source)
    hosts = _allow_hosts(value.get("hosts", []), f"{where}.hosts", source)
    if not hosts:
        raise PolicyError("a credential must be bound to at least one host", key=f"{where}.hosts", source=source)
    header = value.get("header", "authorization: Bearer {}")
    if not isinstance(header, str) or not header:
        raise PolicyError("expected a header name or 'name: template {}'", key=f"{where}.header", source=source)
    hname, colon, template = header.partition(":")
    hname = hname.strip().lower()
    template = template.strip() if colon else "{}"
    if not hname or not all(c.isalnum() or c == "-" for c in hname) or template.count("{}") != 1:
        raise PolicyError(f"{header!r}: expected 'x-api-key' or 'authorization: Bearer {{}}'", key=f"{where}.header",
                          source=source)
    return (("name", name), ("from", origin), ("hosts", hosts), ("header", hname), ("template", template))


def is_env_name(name: str) -> bool:
    """True for a POSIX environment variable name."""
    if not name or len(name) > 256 or not name.isascii():
        return False
    if not (name[0].isalpha() or name[0] == "_"):
        return False
    return all(ch.isalnum() or ch == "_" for ch in name)


def _env_names(value: object, key: str, source: str) -> tuple[str, ...]:
    items = _string_list(value, key, source)
    for index, item in enumerate(items):
        if not is_env_name(item):
            raise PolicyError(
                f"{item!r} is not an environment variable name", key=f"{key}[{index}]", source=source
            )
    return _dedupe(items)


def _env_map(value: object, key: str, source: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise PolicyError(f"expected a table, got {_type_name(value)}", key=key, source=source)
    out = []
    for name, item in value.items():
        if not is_env_name(name):
            raise PolicyError(f"{name!r} is not an environment variable name", key=key, source=source)
        if not isinstance(item, str):
            raise PolicyError(f"expected a string, got {_type_name(item)}", key=f"{key}.{name}", source=source)
        if "\x00" in item or len(item) > 65536:
            raise PolicyError("value contains NUL or is too long", key=f"{key}.{name}", source=source)
        out.append((name, item))
    return tuple(sorted(out))


def _bool(value: object, key: str, source: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"expected true or false, got {_type_name(value)}", key=key, source=source)
    return value


def _tier(value: object, key: str, source: str) -> str:
    if value not in TIERS:
        raise PolicyError(
            f"expected one of {', '.join(TIERS)}, got {value!r}", key=key, source=source
        )
    return value  # type: ignore[return-value]


def _image_name(value: object, key: str, source: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 64 or value.startswith(".") or \
            not all(c.isalnum() or c in "-_." for c in value):
        raise PolicyError(f"{value!r} is not an image name", key=key, source=source)
    return value


def _unlisted(value: object, key: str, source: str) -> str:
    if value not in ("deny", "ask"):
        raise PolicyError(f"expected 'deny' or 'ask', got {value!r}", key=key, source=source)
    return value  # type: ignore[return-value]


def _requirements(value: object, key: str, source: str) -> tuple[str, ...]:
    items = _string_list(value, key, source)
    for index, item in enumerate(items):
        if item not in REQUIREMENTS:
            raise PolicyError(
                f"unknown requirement {item!r} (known: {', '.join(REQUIREMENTS)})",
                key=f"{key}[{index}]",
                source=source,
            )
    return _dedupe(items)


# --- [resources]: sizes, CPU counts, pids, durations ---------------------------
# Hand-written, ASCII-only parsers: str.isdigit() would accept "²" and int()
# would accept Arabic-Indic digits, and a huge digit string is refused by
# length before int() ever sees it.

_KiB = 1024
MEMORY_MIN = 16 * _KiB * _KiB  # gVisor itself needs more than this; below it nothing can run.
MEMORY_MAX = _KiB ** 4  # 1T
CPUS_MIN = 0.01  # A CFS quota of 1 ms per 100 ms period: the kernel's own minimum.
CPUS_MAX = 1024
PIDS_MIN = 8
PIDS_MAX = 1_000_000
TIMEOUT_MAX = 7 * 24 * 3600  # a week
def _memory(value: object, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PolicyError(f'expected a size like "512M" or "2G", or a whole number of bytes, got {_type_name(value)}',
                          key=key, source=source)
    size = value if isinstance(value, int) else parse_size(value)
    if size is None:
        raise PolicyError(f'{value!r} is not a size: write it like "512M", "2G" or "64k" (binary units: 1K = 1024 '
                          f'bytes), or as a whole number of bytes', key=key, source=source)
    if not MEMORY_MIN <= size <= MEMORY_MAX:
        raise PolicyError(f"{value!r} is out of range: at least 16M, at most 1T", key=key, source=source)
    return size


def _cpus(value: object, key: str, source: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(f"expected a number of CPUs like 0.5, 1 or 2, got {_type_name(value)}", key=key,
                          source=source)
    if not CPUS_MIN <= value <= CPUS_MAX:  # Also refuses NaN, which compares false with everything.
        raise PolicyError(f"{value!r} is out of range: at least {CPUS_MIN}, at most {CPUS_MAX}", key=key,
                          source=source)
    return value


def _pids(value: object, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"expected a whole number of processes, got {_type_name(value)}", key=key, source=source)
    if not PIDS_MIN <= value <= PIDS_MAX:
        raise PolicyError(f"{value!r} is out of range: at least {PIDS_MIN}, at most {PIDS_MAX:_}", key=key,
                          source=source)
    return value


def _timeout(value: object, key: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PolicyError(f'expected a duration like "30s", "10m" or "2h", or a whole number of seconds, '
                          f"got {_type_name(value)}", key=key, source=source)
    seconds = value if isinstance(value, int) else parse_duration(value)
    if seconds is None:
        raise PolicyError(f'{value!r} is not a duration: write it like "30s", "10m", "2h" or "1h30m" (units s, m, h, '
                          f"d), or as a whole number of seconds", key=key, source=source)
    if not 0 < seconds <= TIMEOUT_MAX:
        raise PolicyError(f"{value!r} is out of range: more than 0 seconds, at most a week", key=key, source=source)
    return seconds


# --- the schema ----------------------------------------------------------------
# section -> key -> (validator, merge rule, default).  "set": a layer replaces
# the value below it; "add": values accumulate across layers (deny wins).

SCHEMA: dict[str, dict[str, tuple]] = {
    "filesystem": {
        "deny_read": (_paths, "add", ()),
        "allow_write": (_paths, "set", (".",)),
        "deny_write": (_paths, "add", ()),
        "reveal": (_paths, "set", ()),
        "allow_unix_sockets": (_paths, "set", ()),
        "private_tmp": (_bool, "set", True),
        "allow_git_writes": (_bool, "set", False),
    },
    "network": {
        "allow": (_allow_hosts, "set", ()),
        "deny": (_deny_hosts, "add", ()),
        "resolve": (_resolve_map, "set", ()),
        "trusted_addresses": (_networks, "set", ()),
        "rules": (_rules, "set", ()),
        "passthrough": (_allow_hosts, "set", ()),
        "upstream_ca": (_ca_path, "set", ""),
        "unlisted": (_unlisted, "set", "deny"),
    },
    "credentials": {},  # Keys are credential names; see _credential.
    "environment": {
        "pass": (_env_names, "set", ()),
        "deny": (_env_names, "add", ()),
        "set": (_env_map, "set", ()),
    },
    "sandbox": {
        "tier": (_tier, "set", "process"),
        "image": (_image_name, "set", "default"),
        "require": (_requirements, "add", ()),
    },
    # Limits, normalised to bytes, CPUs, processes and seconds; None: no limit.
    # A layer replaces each key it sets (a tenant's ceiling is the service's
    # to enforce, not the merge's).
    "resources": {
        "memory": (_memory, "set", None),
        "cpus": (_cpus, "set", None),
        "pids": (_pids, "set", None),
        "timeout": (_timeout, "set", None),
    },
}


class Layer:
    """One validated source: ``values[(section, key)] = (op, value)``."""

    __slots__ = ("source", "values")

    def __init__(self, source: str, values: dict[tuple[str, str], tuple[str, object]]) -> None:
        self.source = source
        self.values = values

    def __repr__(self) -> str:
        return f"Layer({self.source!r}, {self.values!r})"


def parse_layer(document: object, source: str, *, extend_lists: bool = False) -> Layer:
    """Validate a raw document (as decoded from TOML) into a ``Layer``.

    ``extend_lists`` makes every list *add* to the layers below (command-line
    flags); otherwise each key follows its merge rule in ``SCHEMA``.
    """
    if not isinstance(document, dict):
        raise PolicyError(f"expected a table at the top level, got {_type_name(document)}", source=source)
    values: dict[tuple[str, str], tuple[str, object]] = {}
    for section, body in document.items():
        if section not in SCHEMA:
            raise PolicyError(_unknown("section", section, SCHEMA), key=str(section), source=source)
        if not isinstance(body, dict):
            raise PolicyError(
                f"expected a table ([{section}]), got {_type_name(body)}", key=section, source=source
            )
        if section == "credentials":
            entries = tuple(_credential(str(name), raw, source) for name, raw in body.items())
            values[("credentials", "entries")] = ("set", entries)
            continue
        keys = SCHEMA[section]
        for key, raw in body.items():
            if key not in keys:
                raise PolicyError(_unknown("key", key, keys), key=f"{section}.{key}", source=source)
            validator, rule, _default = keys[key]
            value = validator(raw, f"{section}.{key}", source)
            op = "add" if extend_lists and isinstance(value, tuple) else rule
            values[(section, key)] = (op, value)
    return Layer(source, values)


class _Section:
    """An immutable bag of settings, one attribute per schema key."""

    __slots__ = ("_section", "_values")

    def __init__(self, section: str, values: dict[str, object]) -> None:
        object.__setattr__(self, "_section", section)
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> object:
        values = object.__getattribute__(self, "_values")
        key = "pass" if name == "pass_" else name
        try:
            return values[key]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("policy settings are immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Section) and (self._section, self._values) == (
            other._section,
            other._values,
        )

    def __hash__(self) -> int:
        return hash((self._section, tuple(sorted(self._values.items()))))

    def items(self) -> list[tuple[str, object]]:
        return list(self._values.items())

    def __repr__(self) -> str:
        return f"<[{self._section}] {self._values!r}>"


class Policy:
    """The merged, validated, immutable policy.

    ``policy.filesystem.deny_read``, ``policy.network.allow`` and so on; lists
    are tuples.  ``sources`` names the layers it was merged from.
    """

    __slots__ = ("_sections", "sources")

    def __init__(self, sections: dict[str, dict[str, object]], sources: tuple[str, ...]) -> None:
        object.__setattr__(
            self, "_sections", {name: _Section(name, body) for name, body in sections.items()}
        )
        object.__setattr__(self, "sources", sources)

    def __getattr__(self, name: str) -> _Section:
        try:
            return object.__getattribute__(self, "_sections")[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Policy is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self._sections == other._sections

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, hash(v)) for k, v in self._sections.items())))

    def as_dict(self) -> dict[str, dict[str, object]]:
        """A plain nested dict (lists for tuples) in schema order."""
        out: dict[str, dict[str, object]] = {}
        for section, keys in SCHEMA.items():
            body = self._sections[section]
            out[section] = {}
            if section == "credentials":
                for entry in body.entries:
                    data = dict(entry)
                    header = data["header"] if data["template"] == "{}" else f"{data['header']}: {data['template']}"
                    out[section][data["name"]] = {"from": data["from"], "hosts": list(data["hosts"]),
                                                  "header": header}
                continue
            for key in keys:
                value = getattr(body, "pass_" if key == "pass" else key)
                if (section, key) in (("environment", "set"), ("network", "resolve")):
                    value = dict(value)  # type: ignore[arg-type]
                elif (section, key) == ("network", "rules"):
                    value = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in rule if v is not None}
                             for rule in value]  # type: ignore[union-attr]
                elif isinstance(value, tuple):
                    value = list(value)
                elif value is not None and (section, key) == ("resources", "memory"):
                    value = format_size(value)  # type: ignore[arg-type]
                elif value is not None and (section, key) == ("resources", "timeout"):
                    value = format_duration(value)  # type: ignore[arg-type]
                out[section][key] = value
        return out

    def __repr__(self) -> str:
        return f"Policy({self.as_dict()!r}, sources={self.sources!r})"


def defaults() -> Layer:
    """The built-in defaults as the lowest layer."""
    values = {}
    for section, keys in SCHEMA.items():
        for key, (_validator, _rule, default) in keys.items():
            values[(section, key)] = ("set", default)
    values[("credentials", "entries")] = ("set", ())
    return Layer("built-in defaults", values)


def merge(layers: list[Layer] | tuple[Layer, ...]) -> Policy:
    """Fold ``layers`` (lowest first) over the built-in defaults into a Policy."""
    current: dict[tuple[str, str], object] = {k: v for k, (_op, v) in defaults().values.items()}
    sources = []
    for layer in layers:
        sources.append(layer.source)
        for slot, (op, value) in layer.values.items():
            if op == "add":
                current[slot] = _dedupe([*current[slot], *value])  # type: ignore[misc]
            else:
                current[slot] = value
    sections: dict[str, dict[str, object]] = {name: {} for name in SCHEMA}
    for (section, key), value in current.items():
        sections[section][key] = value
    return Policy(sections, tuple(sources))


# --- helpers ----------------------------------------------------------------------


def _dedupe(items) -> tuple:
    seen = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return tuple(out)


def _type_name(value: object) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a table",
    }
    return names.get(type(value), type(value).__name__)


def _unknown(kind: str, name: object, known) -> str:
    import difflib  # Error path only.

    message = f"unknown {kind} {name!r}"
    close = difflib.get_close_matches(str(name), list(known), n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    else:
        message += f" (known: {', '.join(known)})"
    return message
