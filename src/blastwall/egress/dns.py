"""The gateway's DNS answerer for container sessions: every name is the gateway.

A program that ignores proxy variables resolves a name, then connects.  Its
query never leaves the host: the answer to any A query is the session's own
gateway address, so the connection that follows lands on the gateway's
transparent listener, which decides by the TLS SNI or the HTTP Host header
(the name, not the address).  Nothing is forwarded upstream, so DNS cannot
carry data out.  AAAA and other types get an empty answer, malformed queries
none at all.  Pure: bytes in, bytes out; fuzzed in tests.
"""

from __future__ import annotations

import struct

__all__ = ["answer"]

TYPE_A = 1
CLASS_IN = 1
TTL = 5
MAX_QUERY = 512


def _question(packet: bytes) -> tuple[int, int, int] | None:
    """(end offset of the question, qtype, qclass), or None when it is not one plain question."""
    offset = 12
    total = 0
    while True:
        if offset >= len(packet):
            return None
        length = packet[offset]
        if length & 0xC0:  # Compression (or reserved bits) has no place in a query's name.
            return None
        offset += 1
        if length == 0:
            break
        total += length + 1
        if total > 255 or offset + length > len(packet):
            return None
        offset += length
    if offset + 4 > len(packet):
        return None
    qtype, qclass = struct.unpack_from("!HH", packet, offset)
    return offset + 4, qtype, qclass


def answer(query: bytes, address: str) -> bytes | None:
    """The reply to ``query`` (an A record for ``address``, or an empty answer); None to stay silent."""
    if not 12 <= len(query) <= MAX_QUERY:
        return None
    ident, flags, qdcount, ancount, nscount, _arcount = struct.unpack_from("!HHHHHH", query)
    if flags & 0x8000 or (flags >> 11) & 0xF != 0 or qdcount != 1 or ancount or nscount:
        return None  # A response, not a standard query, or not exactly one question.
    parsed = _question(query)
    if parsed is None:
        return None
    end, qtype, qclass = parsed
    question = query[12:end]
    reply_flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080  # QR, AA, RD copied, RA
    if qtype == TYPE_A and qclass == CLASS_IN:
        octets = bytes(int(part) for part in address.split("."))
        record = struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, TTL, 4) + octets
        return struct.pack("!HHHHHH", ident, reply_flags, 1, 1, 0, 0) + question + record
    return struct.pack("!HHHHHH", ident, reply_flags, 1, 0, 0, 0) + question
