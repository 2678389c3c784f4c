"""The control protocol: round trips and fuzzing of the decoder."""

from hypothesis import given, settings
from hypothesis import strategies as st

from blastwall.egress.protocol import ProtocolError, decode, encode, pack, unpack

texts = st.text(max_size=30)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.text(alphabet="abcdefgh_", min_size=1, max_size=8), texts), max_size=8))
def test_round_trip(fields):
    verb, decoded = decode(encode("register", fields))
    assert verb == "register"
    expected: dict = {}
    for key, value in fields:
        expected.setdefault(key, []).append(value)
    assert decoded == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(texts, min_size=1, max_size=5))
def test_pack_round_trip(items):
    assert unpack(pack(items)) == items


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_decode_is_total(line):
    try:
        decode(line)
    except ProtocolError:
        pass
