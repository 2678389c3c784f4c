"""Writing a policy dict back as TOML (the subset our schema uses).  Pure."""

from __future__ import annotations

__all__ = ["dumps", "quote"]


def quote(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _key(name: str) -> str:
    if name and all(c.isascii() and (c.isalnum() or c in "_-") for c in name):
        return name
    return quote(name)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise TypeError("cannot write a non-finite number as TOML")
        return repr(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        items = [_value(v) for v in value]
        one_line = "[" + ", ".join(items) + "]"
        if len(one_line) <= 80:
            return one_line
        return "[\n" + "".join(f"    {item},\n" for item in items) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dumps(document: dict[str, dict[str, object]]) -> str:
    """``{section: {key: value}}`` as TOML text."""
    blocks = []
    for section, body in document.items():
        lines = [f"[{_key(section)}]"]
        for key, value in body.items():
            if value is None:
                # TOML has no null: an unset key (no limit) is shown as a comment.
                lines.append(f"# {_key(key)}: not set")
                continue
            lines.append(f"{_key(key)} = {_value(value)}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)
