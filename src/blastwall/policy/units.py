"""The one grammar of sizes and durations: the policy's ``[resources]``, the service's ceilings and flags.

Pure.  Sizes are binary (``512M`` = 512 MiB, as docker and the kernel's
cgroup files read them), may have a fraction (``1.5G``) and a unit in any
case (``k``, ``K``, ``KB``, ``KiB``...); a whole number alone is bytes.
Durations are whole numbers with units ``s m h d``, combined largest first
(``1h30m``); a whole number alone is seconds.  Nothing else is read: no
spaces, signs, exponents, underscores or non-ASCII digits.
"""

from __future__ import annotations

__all__ = ["format_duration", "format_size", "parse_duration", "parse_size"]

_DIGITS = frozenset("0123456789")
_KiB = 1024
# Binary units, as docker and the kernel's cgroup files read them: 1K = 1024 bytes.
_SIZE_UNITS = {"": 1, "b": 1, **{letter + suffix: _KiB ** power for power, letter in enumerate("kmgt", start=1)
                                  for suffix in ("", "b", "ib")}}
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _split_number(text: str) -> tuple[str, str, str] | None:
    """'1.5G' -> ('1', '5', 'G'); None unless it starts with ASCII digits."""
    end = 0
    while end < len(text) and (text[end] in _DIGITS or text[end] == "."):
        end += 1
    number, rest = text[:end], text[end:]
    whole, dot, fraction = number.partition(".")
    if not whole or (dot and not fraction) or not set(whole + fraction) <= _DIGITS:
        return None
    return whole, fraction, rest


def parse_size(text: str) -> int | None:
    """'512M' -> 536870912 (binary units, rounded down to a byte); None if it is not a size."""
    if len(text) > 32:
        return None
    parts = _split_number(text)
    if parts is None:
        return None
    whole, fraction, unit = parts
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None or len(fraction) > 9 or (fraction and factor == 1):
        return None
    value = int(whole) * factor
    if fraction:
        value += int(fraction) * factor // 10 ** len(fraction)
    return value


def parse_duration(text: str) -> int | None:
    """'10m' -> 600, '1h30m' -> 5400, '300' -> 300 (whole numbers, units s m h d); None if it is not a duration."""
    if not text or len(text) > 32:
        return None
    if set(text) <= _DIGITS:
        return int(text)  # Seconds, as a whole number alone is bytes for a size.
    total, start, seen = 0, 0, set()
    for index, ch in enumerate(text):
        if ch in _DIGITS:
            continue
        unit = _DURATION_UNITS.get(ch)
        if unit is None or index == start or ch in seen:
            return None
        seen.add(ch)
        total += int(text[start:index]) * unit
        start = index + 1
    if start != len(text):
        return None  # Digits without a unit after others with one ("1h30").
    return total


def format_size(size: int) -> str:
    """536870912 -> '512M': the largest binary unit that is exact (parse_size reads it back)."""
    for letter, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        if size % _KiB ** power == 0:
            return f"{size // _KiB ** power}{letter}"
    return str(size)


def format_duration(seconds: int) -> str:
    """5400 -> '1h30m' (parse_duration reads it back)."""
    parts = []
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= length:
            parts.append(f"{seconds // length}{unit}")
            seconds %= length
    return "".join(parts) or "0s"
