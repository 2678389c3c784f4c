"""Text chosen inside a sandbox, made safe for a terminal before blastwall shows it.

Host names, paths, commands and reasons reach the user's terminal in
``run``'s summary, in questions, in ``audit tail``.  Raw, a control sequence
in them could erase a warning and print a fake "all good", or a bidirectional
override could reorder what the user reads.  ``shown`` keeps what is
printable and spells out everything else.  Allowed by name: printable
characters, and nothing of the categories Cc (controls), Cf (formats: bidi
overrides, zero-width joiners), Cs, Co, Cn, Zl, Zp.
"""

from __future__ import annotations

__all__ = ["shown"]


def shown(text: object) -> str:
    """``text`` with every non-printable character written as ``\\xNN``/``\\uNNNN``; printable text unchanged."""
    import unicodedata

    value = text if isinstance(text, str) else str(text)
    if value.isprintable():
        return value
    out = []
    for char in value:
        if char.isprintable() and unicodedata.category(char) not in ("Cf", "Zl", "Zp"):
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)
