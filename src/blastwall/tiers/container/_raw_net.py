"""HAZMAT: a container session's network — namespace, veth, firewall — and nothing else.

Only the container tier may import this module.  Each session gets its own
network namespace ``bw-<id>`` holding one end of a veth pair (``eth0``,
10.201.x.y+2/30, default route via the host end); the host end ``bwh<id>``
(x.y+1) lives in the host's namespace, where the egress gateway listens on
that address for this session only.  gVisor's own network stack (runsc
``--network=sandbox``) takes ``eth0`` over, so the sandboxed program never
talks to the host kernel's network stack.

The firewall is one nftables table per session, ``inet bw_<id>``, in the host
namespace.  From the session's interface it accepts only TCP to the session's
gateway ports and UDP to its DNS port on the host end's address; TCP to 80 and
443 anywhere is redirected to the gateway's transparent listener (for tools
that ignore proxy variables; the gateway decides by SNI/Host); DNS anywhere is
redirected to the gateway's answerer; everything else is refused (TCP reset)
or dropped, and nothing from or to the interface is ever forwarded.  So a
session cannot reach the host's own services, another session's listeners
(the host accepts any local address on any interface: the rule names this
session's address *and* interface), another session's sandbox, or the
internet except through the gateway.

Misuse looks like: bringing the interface up before the table's drop rules
exist, a rule that names the address without the interface, forwarding
enabled for ``bwh*``, running runsc with ``--network=host``, or deleting the
table before the sandbox is gone.

runsc 0.0~20221219 decides "is this the root network namespace?" by checking
whether /proc/sys/net/core/rmem_default exists, which on kernels since that
sysctl became per-namespace is true everywhere.  ``runsc_wrapper`` starts
runsc in a private mount namespace where /proc/sys shows only ``vm``,
``kernel`` and ``fs`` (and an empty ``net``), which is what that check and
runsc's start-up need; the sandbox itself never sees the host's /proc.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess

__all__ = ["Net", "create", "destroy", "firewall", "leftovers", "runsc_wrapper", "sweep"]

NETWORK = ipaddress.ip_network("10.201.0.0/16")
# Machine-wide (addresses are), and on tmpfs: it forgets what a reboot forgets.
SLOTS_DIR = "/run/blastwall/net-slots"
SLOTS = NETWORK.num_addresses // 4
IP_CANDIDATES = ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip")
NFT_CANDIDATES = ("/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft")
UNSHARE_CANDIDATES = ("/usr/bin/unshare", "/bin/unshare")
SH = "/bin/sh"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

_HIDE_NET_SYSCTLS = r"""set -e
d=$1; shift
mkdir -p "$d/sys"
mount --bind /proc/sys "$d/sys"
mount -t tmpfs -o size=16k,mode=0555 blastwall-sysctl /proc/sys
for x in vm kernel fs; do mkdir /proc/sys/$x; mount --bind "$d/sys/$x" /proc/sys/$x; done
mkdir /proc/sys/net
umount -l "$d/sys"
rmdir "$d/sys"
mount -o remount,ro,bind /proc/sys
exec "$@"
"""


class NetError(OSError):
    pass


class Net:
    """What ``create`` made, enough for ``destroy`` (also from the record on disk)."""

    def __init__(self, name: str, slot: int, directory: str) -> None:
        self.name = name  # 12 hex digits
        self.slot = slot
        self.directory = directory
        base = NETWORK.network_address + 4 * slot
        self.host_ip = str(base + 1)
        self.guest_ip = str(base + 2)
        self.netns = f"bw-{name}"
        self.netns_path = f"/var/run/netns/{self.netns}"
        self.iface = f"bwh{name}"
        self.table = f"bw_{name}"


def _find(candidates, package: str) -> str:
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise NetError(2, f"{os.path.basename(candidates[0])} is missing (sudo apt-get install {package})")


def _run(argv: list[str], *, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=ENV, timeout=30)
    if check and result.returncode != 0:
        raise NetError(1, f"{' '.join(argv[:4])}: {result.stderr.strip()[:300]}")
    return result


def _slots_dir() -> str:
    os.makedirs(SLOTS_DIR, mode=0o700, exist_ok=True)
    return SLOTS_DIR


def _claim_slot(owner: str) -> int:
    """A free /30 for this session, claimed machine-wide with an exclusive file (released by ``destroy``).

    The file holds the session directory's path: the reaper frees a slot whose
    directory is gone.
    """
    import secrets

    directory = _slots_dir()
    start = secrets.randbelow(SLOTS)
    for step in range(SLOTS):
        slot = (start + step) % SLOTS
        try:
            fd = os.open(os.path.join(directory, str(slot)), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(owner)
        return slot
    raise NetError(28, "no free session network left")


def create(session_id: str, directory: str) -> Net:
    """The namespace, the veth pair and a table that drops everything; addresses and routes set."""
    ip = _find(IP_CANDIDATES, "iproute2")
    nft = _find(NFT_CANDIDATES, "nftables")
    name = session_id.rsplit("-", 1)[-1][:12]
    net = Net(name, _claim_slot(directory), directory)
    try:
        # Drop first: the interface exists only after its table refuses everything.
        _run([nft, "-f", "-"], stdin=_table(net, tcp_ports=(), dns_port=None, transparent=None))
        _run([ip, "netns", "add", net.netns])
        _run([ip, "link", "add", net.iface, "type", "veth", "peer", "name", "eth0", "netns", net.netns])
        _sysctl(f"/proc/sys/net/ipv6/conf/{net.iface}/disable_ipv6", "1")
        _run([ip, "addr", "add", f"{net.host_ip}/30", "dev", net.iface])
        _run([ip, "link", "set", net.iface, "up"])
        _run([ip, "-n", net.netns, "addr", "add", f"{net.guest_ip}/30", "dev", "eth0"])
        _run([ip, "-n", net.netns, "link", "set", "eth0", "up"])
        _run([ip, "-n", net.netns, "link", "set", "lo", "up"])
        _run([ip, "-n", net.netns, "route", "add", "default", "via", net.host_ip])
    except BaseException:
        destroy(net)
        raise
    return net


def _sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except FileNotFoundError:
        pass  # No IPv6 on this host: nothing to disable.


def _table(net: Net, *, tcp_ports, dns_port: int | None, transparent: int | None) -> str:
    """The session's nftables table (replacing any previous version of it)."""
    iface = net.iface
    lines = [
        f"table inet {net.table}",
        f"delete table inet {net.table}",
        f"table inet {net.table} {{",
        "  chain pre {",
        "    type nat hook prerouting priority -100; policy accept;",
    ]
    if transparent:
        lines.append(f'    iifname "{iface}" tcp dport {{ 80, 443 }} redirect to :{int(transparent)}')
    if dns_port:
        lines.append(f'    iifname "{iface}" udp dport 53 redirect to :{int(dns_port)}')
    lines += [
        "  }",
        "  chain input {",
        "    type filter hook input priority -10; policy accept;",
        f'    iifname "{iface}" jump from_session',
        "  }",
        "  chain from_session {",
    ]
    ports = sorted({int(p) for p in tcp_ports} | ({int(transparent)} if transparent else set()))
    if ports:
        lines.append(f"    ip daddr {net.host_ip} tcp dport {{ {', '.join(map(str, ports))} }} accept")
    if dns_port:
        lines.append(f"    ip daddr {net.host_ip} udp dport {int(dns_port)} accept")
    lines += [
        "    meta l4proto tcp reject with tcp reset",
        "    drop",
        "  }",
        "  chain forward {",
        "    type filter hook forward priority -10; policy accept;",
        f'    iifname "{iface}" drop',
        f'    oifname "{iface}" drop',
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def firewall(net: Net, *, tcp_ports: dict[str, int], dns_port: int | None) -> None:
    """Open exactly the session's gateway listeners (atomically replaces the drop-all table)."""
    nft = _find(NFT_CANDIDATES, "nftables")
    ports = dict(tcp_ports)
    transparent = ports.pop("transparent", None)
    _run([nft, "-f", "-"], stdin=_table(net, tcp_ports=ports.values(), dns_port=dns_port, transparent=transparent))


def destroy(net: Net) -> None:
    """Remove the table, the veth pair, the namespace and the slot claim; ignores what is already gone."""
    try:
        ip = _find(IP_CANDIDATES, "iproute2")
        _run([ip, "link", "del", net.iface], check=False)
        _run([ip, "netns", "del", net.netns], check=False)
    except NetError:
        pass
    try:
        nft = _find(NFT_CANDIDATES, "nftables")
        _run([nft, "delete", "table", "inet", net.table], check=False)
    except NetError:
        pass
    slot = os.path.join(SLOTS_DIR, str(net.slot))
    try:
        with open(slot) as f:
            mine = f.read().strip() == net.directory
        if mine:
            os.unlink(slot)
    except OSError:
        pass


def leftovers() -> list[Net]:
    """Every claimed network on this machine, as recorded by its slot (for the reaper).

    ``destroy`` releases the slot last, so a session that died half-way is
    still found by its slot.
    """
    nets = []
    try:
        entries = os.listdir(_slots_dir())
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) >= SLOTS:
            continue
        try:
            with open(os.path.join(SLOTS_DIR, entry)) as f:
                owner = f.read().strip()
        except OSError:
            continue
        name = os.path.basename(owner).rsplit("-", 1)[-1][:12]
        if _valid_name(name) and os.path.isabs(owner):
            nets.append(Net(name, int(entry), owner))
    return nets


def sweep() -> None:
    """Destroy the networks whose session directory is gone (its owner died and was reaped).

    A session makes its directory before it claims a slot and removes it only
    after ``destroy``, so a slot whose directory does not exist is orphaned.
    """
    for net in leftovers():
        if not os.path.isdir(net.directory):
            destroy(net)


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= 12 and all(c in "0123456789abcdef" for c in name)


def runsc_wrapper(directory: str) -> list[str]:
    """The argv prefix that runs ``runsc run`` with /proc/sys/net hidden (see the module docstring)."""
    unshare = _find(UNSHARE_CANDIDATES, "util-linux")
    return [unshare, "--mount", "--propagation", "private", SH, "-c", _HIDE_NET_SYSCTLS, "sh", directory]
