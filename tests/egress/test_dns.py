"""The container sessions' DNS answerer: every name is the gateway; garbage gets silence."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from blastwall.egress.dns import answer

GATEWAY = "10.201.3.5"


def query(name: str, qtype: int = 1, ident: int = 0x1234, flags: int = 0x0100) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\x00"
    return struct.pack("!HHHHHH", ident, flags, 1, 0, 0, 0) + labels + struct.pack("!HH", qtype, 1)


def test_a_query_gets_the_gateway_address():
    reply = answer(query("pypi.org"), GATEWAY)
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", reply)
    assert (ident, qd, an, ns, ar) == (0x1234, 1, 1, 0, 0)
    assert flags & 0x8000 and flags & 0x000F == 0  # A response, no error.
    assert reply.endswith(bytes([10, 201, 3, 5]))


def test_other_types_get_an_empty_answer():
    for qtype in (28, 16, 15, 255):  # AAAA, TXT (tunnels), MX, ANY
        reply = answer(query("data.exfil.example", qtype), GATEWAY)
        assert struct.unpack_from("!HHHHHH", reply)[3] == 0


def test_responses_and_compressed_names_are_ignored():
    assert answer(query("x.test", flags=0x8100), GATEWAY) is None  # Already a response: no reflection loops.
    bad = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack("!HH", 1, 1)
    assert answer(bad, GATEWAY) is None
    assert answer(b"\x00" * 11, GATEWAY) is None
    assert answer(query("a." * 200 + "test"), GATEWAY) is None  # Longer than 255 octets.


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_never_raises_and_replies_only_to_queries(data):
    reply = answer(data, GATEWAY)
    if reply is not None:
        assert reply[:2] == data[:2] and reply[2] & 0x80
        assert len(reply) <= len(data) + 16


@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=63),
                min_size=1, max_size=4), st.integers(0, 0xFFFF))
def test_any_plain_name_resolves_to_the_gateway(labels, ident):
    reply = answer(query(".".join(labels), ident=ident), GATEWAY)
    assert reply is not None and reply.endswith(bytes([10, 201, 3, 5]))
