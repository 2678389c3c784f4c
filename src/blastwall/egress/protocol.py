"""The gateway's control protocol: one line per message, pure encode/decode.

A message is a verb (or ``ok``/``error``) followed by tab-separated
``key=value`` fields; a key may repeat (lists).  Values are percent-encoded so
that tabs, newlines, ``%``, ``=`` and ``|`` never appear raw.  Hand-written
rather than JSON because ``blastwall run`` sends and parses one of these on
every networked start, and importing ``json`` costs several milliseconds there.
``decode`` is total: any input gives a message or ProtocolError (fuzzed).
"""

from __future__ import annotations

__all__ = ["MAX_LINE", "ProtocolError", "decode", "encode", "pack", "unpack"]

MAX_LINE = 1 << 20
_SPECIAL = frozenset("%\t\n\r=|\x00")
_HEX = "0123456789ABCDEF"


class ProtocolError(ValueError):
    pass


def _quote(text: str) -> str:
    if not any(ch in _SPECIAL for ch in text):
        return text
    out = []
    for ch in text:
        if ch in _SPECIAL:
            out.append("%" + _HEX[ord(ch) >> 4] + _HEX[ord(ch) & 15])
        else:
            out.append(ch)
    return "".join(out)


def _unquote(text: str) -> str:
    if "%" not in text:
        return text
    out = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "%":
            pair = text[i + 1:i + 3]
            if len(pair) != 2 or any(c not in "0123456789ABCDEFabcdef" for c in pair):
                raise ProtocolError("bad percent-escape")
            out.append(chr(int(pair, 16)))
            i += 3
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def encode(verb: str, fields: list[tuple[str, str]]) -> bytes:
    """``verb`` and ``[(key, value), ...]`` as one line (keys may repeat)."""
    if not verb or any(ch in _SPECIAL or ch == " " for ch in verb):
        raise ProtocolError(f"bad verb {verb!r}")
    parts = [verb]
    for key, value in fields:
        if not key or any(ch in _SPECIAL for ch in key):
            raise ProtocolError(f"bad key {key!r}")
        parts.append(f"{key}={_quote(str(value))}")
    return ("\t".join(parts) + "\n").encode("utf-8")


def decode(line: bytes) -> tuple[str, dict[str, list[str]]]:
    """One line into ``(verb, {key: [values]})``; ProtocolError if malformed."""
    if len(line) > MAX_LINE:
        raise ProtocolError("line too long")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("not UTF-8") from None
    text = text.rstrip("\n")
    if not text or "\n" in text or "\r" in text:
        raise ProtocolError("empty or multi-line message")
    verb, *parts = text.split("\t")
    if not verb or any(ch in _SPECIAL for ch in verb):
        raise ProtocolError("bad verb")
    fields: dict[str, list[str]] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise ProtocolError(f"bad field {part[:40]!r}")
        fields.setdefault(key, []).append(_unquote(value))
    return verb, fields


def pack(items: list[str]) -> str:
    """Several strings as one field value ('|'-separated, each escaped)."""
    return "|".join(_quote(item) for item in items)


def unpack(value: str) -> list[str]:
    return [_unquote(item) for item in value.split("|")]
