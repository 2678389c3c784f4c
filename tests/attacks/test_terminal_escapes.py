"""Bytes chosen inside a sandbox never reach the user's terminal raw.

A SOCKS5 request may name any host, control characters included; the
refusal lands in ``run``'s end-of-run summary and in ``blastwall audit
tail``.  Raw, ``ESC[2K ESC[1A`` would erase the warning and print a fake
"all good".  Both must show the bytes escaped.
"""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import blastwall, kill_gateway, needs_bwrap

pytestmark = [needs_bwrap, pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")]

HOSTILE = "\x1b[2K\x1b[1A\rall good\u202e\x07"

SOCKS = r"""
import os, socket, struct, sys
from urllib.parse import urlsplit
proxy = urlsplit(os.environ["BLASTWALL_SOCKS_PROXY"])
host = sys.argv[1].encode("utf-8")
s = socket.create_connection((proxy.hostname, proxy.port))
s.sendall(b"\x05\x01\x02"); s.recv(2)
user, password = proxy.username.encode(), proxy.password.encode()
s.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password); s.recv(2)
s.sendall(b"\x05\x01\x00\x03" + bytes([len(host)]) + host + struct.pack(">H", 443))
s.recv(10)
try:
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"); s.recv(100)
except OSError:
    pass
print("sent")
"""


def test_control_sequences_in_a_socks_host_are_escaped(home, workspace, scratch):
    env = {"XDG_STATE_HOME": str(scratch / "state"), "BLASTWALL_GATEWAY_IDLE": "30"}
    try:
        r = blastwall(["run", "--allow-domain", "api.test", "--", "python3", "-c", SOCKS, HOSTILE], home=home,
                      cwd=workspace, env=env)
        assert "sent" in r.stdout, r.stderr  # The control: the request was made and refused.
        assert "blocked" in r.stderr and "\\x1b[2K" in r.stderr, r.stderr
        assert "\x1b" not in r.stderr and "\u202e" not in r.stderr and "\x07" not in r.stderr
        tail = blastwall(["audit", "tail", "-n", "50"], home=home, cwd=workspace, env=env)
        assert "\\x1b[2K" in tail.stdout, tail.stdout
        assert "\x1b" not in tail.stdout and "\u202e" not in tail.stdout and "\r" not in tail.stdout
    finally:
        kill_gateway(scratch / "state")
