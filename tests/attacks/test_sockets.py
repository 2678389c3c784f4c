"""Socket families are an allowlist, compared the way the kernel reads them.

socket(2) takes an ``int`` family: the kernel drops the upper half of the
64-bit register.  A filter that compared all 64 bits let
``socket(0x1_00000001, ...)`` through a rule for AF_UNIX, and the kernel made a
unix socket.  Netlink (routes, audit, uevents, sock_diag), packet and vsock
sockets are refused because they are not on the list, not because they are
on a list of bad ones.
"""

from __future__ import annotations

import json
import platform
import socket
import sys

import pytest

from tests.attacks.tiers import tier_run, tiers_for
from tests.conftest import blastwall, in_sandbox, needs_bwrap

pytestmark = [needs_bwrap, pytest.mark.skipif(platform.machine() != "x86_64", reason="socket(2) is 41 on x86_64")]

PROBE = r"""
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {}
for name, family, kind, proto in json.loads(sys.argv[1]):
    ctypes.set_errno(0)
    fd = libc.syscall(ctypes.c_long(41), ctypes.c_long(family), ctypes.c_long(kind), ctypes.c_long(proto))
    out[name] = "made" if fd >= 0 else ctypes.get_errno()
print(json.dumps(out))
"""

CASES = [
    # name, family, type, protocol
    ("inet", 2, 1, 0),  # The control: what the tools use.
    ("inet6", 10, 1, 0),
    ("unix", 1, 1, 0),
    ("unix-upper-half", 0x1_00000001, 1, 0),
    ("unix-all-upper", 0xFFFFFFFF_00000001, 1, 0),
    ("netlink-route", 16, 3, 0),
    ("netlink-audit", 16, 3, 9),
    ("netlink-uevent", 16, 3, 15),
    ("netlink-sock-diag", 16, 3, 4),
    ("netlink-upper-half", 0x1_00000010, 3, 0),
    ("packet", 17, 3, 0),
    ("vsock", 40, 1, 0),
    ("bluetooth", 31, 1, 0),
    ("family-45", 45, 1, 0),
    ("inet-upper-half", 0x1_00000002, 1, 0),
]


def test_socket_family_upper_half_bypass(home, workspace):
    r = blastwall(["run", "--", sys.executable, "-c", PROBE, json.dumps(CASES)], home=home, cwd=workspace)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["inet"] == "made" and got["inet6"] == "made", got  # The control.
    refused = {name: code for name, code in got.items() if name not in ("inet", "inet6")}
    assert refused == {name: 1 for name in refused}, got  # Every other one: exactly EPERM.


def test_netlink_listing_tools_fail_closed(home, workspace):
    # `ip` needs netlink for everything it does: refused, not a view of the host's interfaces.
    r = in_sandbox("import socket\ntry:\n    socket.if_nameindex()\nexcept OSError as e:\n    print('refused', e.errno)",
                   home=home, cwd=workspace)
    assert r.stdout.strip() == "refused 1", (r.stdout, r.stderr)


@pytest.mark.parametrize("tier", tiers_for("socket-family-allowlist"))
def test_everyday_clients_resolve_without_netlink(tier, home, workspace, tier_env):
    """glibc's getaddrinfo asks netlink which address families are configured; refused, it assumes both."""
    r = tier_run(tier, "python3 -c \"import socket; print(len(socket.getaddrinfo('localhost', 80, "
                       "flags=socket.AI_ADDRCONFIG)) > 0)\"; getent hosts localhost >/dev/null && echo resolved",
                 home=home, workspace=workspace, env=tier_env)
    assert r.stdout.split() == ["True", "resolved"], (r.stdout, r.stderr)


DATAGRAM_PAIR = r"""
import ctypes, json, os, socket, stat, sys
path = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {"visible": stat.S_ISSOCK(os.stat(path).st_mode)}
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)  # The control: an anonymous stream pair.
a.sendall(b"x"); out["stream-pair"] = b.recv(1).decode()
for name, kind in (("dgram", 2), ("dgram-nonblock-cloexec", 2 | 0o4000 | 0o2000000), ("dgram-upper-half", 0x1_00000002),
                   ("raw", 3), ("rdm", 4), ("packet", 10)):  # The kernel makes a unix SOCK_RAW a datagram socket.
    fds = (ctypes.c_int * 2)()
    ctypes.set_errno(0)
    if libc.syscall(ctypes.c_long(53), ctypes.c_long(1), ctypes.c_long(kind), ctypes.c_long(0), fds) < 0:
        out[name] = ctypes.get_errno()
        continue
    s = socket.socket(fileno=fds[0])
    try:
        s.sendto(name.encode(), path)
        out[name] = "sent"
    except OSError as exc:
        out[name] = exc.errno
# A seqpacket pair ignores the address it is given: the datagram goes to its peer.
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
a.sendto(b"seqpacket", path)
out["seqpacket-peer"] = b.recv(16).decode()
print(json.dumps(out))
"""


def test_datagram_pair_reaches_no_host_socket(home, workspace, scratch):
    """socketpair(AF_UNIX, SOCK_DGRAM) -- or SOCK_RAW, which the kernel makes a datagram socket -- then sendto(path)
    delivered to any datagram socket the sandbox could see (/run/systemd/journal/socket, /dev/log).  Pairs are
    allowed by type, stream and seqpacket only, and the host's listener gets nothing."""
    path = str(scratch / "journal.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.setblocking(False)
    try:
        r = blastwall(["run", "--", sys.executable, "-c", DATAGRAM_PAIR, path], home=home, cwd=workspace)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        assert got["visible"] is True and got["stream-pair"] == "x" and got["seqpacket-peer"] == "seqpacket", got
        kinds = ("dgram", "dgram-nonblock-cloexec", "dgram-upper-half", "raw", "rdm", "packet")
        assert {k: got[k] for k in kinds} == {k: 1 for k in kinds}, got  # Exactly EPERM, from the filter.
        with pytest.raises(BlockingIOError):
            listener.recv(64)
        # The positive control: a policy naming the socket lets the same sandbox reach this listener.
        policy = scratch / "policy.toml"
        policy.write_text(f'[filesystem]\nallow_unix_sockets = ["{path}"]\n')
        send = f"import socket; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'allowed', {path!r})"
        r = blastwall(["run", "--policy", str(policy), "--", sys.executable, "-c", send], home=home, cwd=workspace)
        assert r.returncode == 0, r.stderr
        assert listener.recv(64) == b"allowed"
    finally:
        listener.close()
