"""The VM control channel's framing, attacked without a VM: the host reads what an untrusted guest writes.

A guest that took over its agent could write anything to the port.  The
host's ``Reader`` must turn every byte stream into frames or a FrameError
(which ends the session like a dead VM), bound what it buffers, and never
raise anything else; ``VmSession._dispatch`` must treat every header as data.
"""

from __future__ import annotations

import json
import os
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from blastwall.tiers._spawner import HEAD, MAX_DATA, MAX_HEADER, FrameError, Reader, pack

def _containers(inner):
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           _containers, max_leaves=20)
headers = st.dictionaries(st.text(max_size=10), json_values, max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(headers, st.binary(max_size=300)), max_size=6), st.lists(st.integers(1, 64), min_size=1))
def test_frames_survive_any_chunking(frames, cuts):
    stream = b"".join(pack(h, d) for h, d in frames)
    reader = Reader()
    got = []
    position, i = 0, 0
    while position < len(stream):
        step = cuts[i % len(cuts)]
        got += reader.feed(stream[position:position + step])
        position += step
        i += 1
    assert got == [(json.loads(json.dumps(h)), d) for h, d in frames]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_garbage_is_frames_or_a_frame_error(data):
    reader = Reader()
    try:
        for header, payload in reader.feed(data):
            assert isinstance(header, dict) and isinstance(payload, bytes)
    except FrameError:
        pass


def test_hostile_frames_are_frame_errors():
    def raw(header: bytes, data: bytes = b"") -> bytes:
        return HEAD.pack(len(header), len(data)) + header + data

    for stream in (HEAD.pack(MAX_HEADER + 1, 0),  # Refused from the lengths alone, before anything is buffered.
                   HEAD.pack(16, MAX_DATA + 1),
                   raw(b"[1, 2]"), raw(b"\xff\xfe{}"), raw(b"{\"a\": "),
                   raw(b"[" * 100000 + b"]" * 100000)):  # Too deep for the parser: not a crash of the reader.
        try:
            Reader().feed(stream)
        except FrameError:
            continue
        raise AssertionError(f"accepted {stream[:40]!r}")


def test_hostile_headers_are_only_data():
    """Every event the guest may send, with wrong types and unknown ids: no exception, no effect on others."""
    from blastwall.tiers.vm.session import Command, VmSession

    session = VmSession.__new__(VmSession)  # Only its dispatch: no VM.
    session._commands = {}
    session._results = {}
    r, w = os.pipe()
    command = Command(session, 7, w, w)
    os.close(w)
    session._commands[7] = command
    ready = threading.Event()
    for header in ({"ev": "out", "id": "7", "fd": 1}, {"ev": "out", "id": 8}, {"ev": "exit", "id": [7]},
                   {"ev": "result", "id": 7, "error": {"x": 1}}, {"ev": "ready", "kernel": None}, {"ev": None},
                   {"ev": "out", "id": 7, "fd": "x"}, {"ev": "exit", "id": 7, "status": 10 ** 30}):
        session._dispatch(header, b"data", ready)
    assert ready.is_set()
    assert command.wait(1) == 255  # An exit status that is not a status is 255, not an exception.
    assert os.read(r, 100) == b"data"  # One frame was for command 7 (an fd that is not 1 is stderr); "7" is not 7.
    os.close(r)
