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
    },
    "network": {
        "allow": (_allow_hosts, "set", ()),
        "deny": (_deny_hosts, "add", ()),
        "resolve": (_resolve_map, "set", ()),
        "trusted_addresses": (_networks, "set", ()),
    },
    "environment": {
        "pass": (_env_names, "set", ()),
        "deny": (_env_names, "add", ()),
        "set": (_env_map, "set", ()),
    },
    "sandbox": {
        "tier": (_tier, "set", "process"),
        "require": (_requirements, "add", ()),
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
            for key in keys:
                value = getattr(body, "pass_" if key == "pass" else key)
                if (section, key) in (("environment", "set"), ("network", "resolve")):
                    value = dict(value)  # type: ignore[arg-type]
                elif isinstance(value, tuple):
                    value = list(value)
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
