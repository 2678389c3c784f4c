"""The guest agent: pid 1 of a blastwall VM, and the framing both ends of the control channel share.

This file is copied into the guest's initramfs and run there by the guest's
own Python (``python3 -I``), so it imports nothing but the standard library.
The host imports it only for ``pack`` and ``Reader``.

The control channel is one virtio-serial port (``/dev/vport*``, name
``blastwall``): a byte stream of frames, each ``u32 header length, u32 data
length, JSON header, data``.  The guest has no network service for control,
and nothing in the guest can change the VM's network: that lives in QEMU's
command line and the host's egress gateway.

Host -> guest: ``hello`` (first: from then on, the host end closing powers the guest off),
``exec`` {id, argv, env, cwd, user: "user"|"root", stdin: bool},
``stdin`` {id} + data (empty data: end of input), ``signal`` {id, sig},
``read`` {id, path}, ``write`` {id, path} + data, ``shutdown``.
Guest -> host: ``ready`` {kernel}, ``out`` {id, fd} + data, ``exit`` {id, status},
``result`` {id, error?} + data.

The guest is not trusted by the host: a root process in the guest could
write anything to the port's other end (it cannot open the port itself: it
is single-open and the agent holds it), so the host's reader bounds every
frame and treats what it gets as data.
"""

from __future__ import annotations

import json
import os
import struct

MAX_HEADER = 64 * 1024
MAX_DATA = 16 * 1024 * 1024
HEAD = struct.Struct(">II")
PORT_NAME = "blastwall"
USER = "user"


def pack(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    return HEAD.pack(len(raw), len(data)) + raw + data


class FrameError(Exception):
    pass


class Reader:
    """Frames from a byte stream; ``feed`` bytes, iterate over (header, data)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[tuple[dict, bytes]]:
        self._buf += chunk
        frames = []
        while len(self._buf) >= HEAD.size:
            hlen, dlen = HEAD.unpack_from(self._buf)
            if hlen > MAX_HEADER or dlen > MAX_DATA:
                raise FrameError(f"frame too large ({hlen}, {dlen})")
            end = HEAD.size + hlen + dlen
            if len(self._buf) < end:
                break
            try:
                header = json.loads(bytes(self._buf[HEAD.size:HEAD.size + hlen]))
            except ValueError as exc:
                raise FrameError(f"bad header: {exc}") from None
            if not isinstance(header, dict):
                raise FrameError("bad header: not an object")
            frames.append((header, bytes(self._buf[HEAD.size + hlen:end])))
            del self._buf[:end]
        return frames


# -- everything below runs only in the guest --------------------------------------------------------


def _cmdline() -> dict[str, str]:
    with open("/proc/cmdline") as f:
        words = f.read().split()
    return {k[3:]: v for k, _, v in (w.partition("=") for w in words) if k.startswith("bw.")}


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _mount(libc, source: str, target: str, fstype: str, flags: int, data: str) -> None:
    import ctypes

    if libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def _setup(conf: dict[str, str]) -> tuple[int, int, str]:
    """Mount the workspace, make the unprivileged user; returns (uid, gid, home)."""
    libc = _libc()
    uid, gid = int(conf.get("uid", "1000")), int(conf.get("gid", "1000"))
    mount_at = bytes.fromhex(conf.get("ws", "")).decode() if conf.get("ws") else ""
    for target, fstype in (("/tmp", "tmpfs"), ("/run", "tmpfs"), ("/dev/shm", "tmpfs")):
        os.makedirs(target, exist_ok=True)
        _mount(libc, fstype, target, fstype, 0x2 | 0x4 | 0x8 if target != "/tmp" else 0x2 | 0x4,
               "mode=1777" if target != "/run" else "mode=755")  # nosuid, nodev (noexec for /run and /dev/shm)
    os.makedirs("/dev/pts", exist_ok=True)
    try:
        _mount(libc, "devpts", "/dev/pts", "devpts", 0x2 | 0x8, "mode=620,ptmxmode=666")
    except OSError:
        pass
    if mount_at:
        os.makedirs(mount_at, exist_ok=True)
        # msize: 512 KiB frames; cache=none keeps the host's view and the guest's the same.
        _mount(libc, "ws", mount_at, "9p", 0x2 | 0x4, "trans=virtio,version=9p2000.L,msize=524288,access=user,cache=none")
    _loopback_up()
    if conf.get("net"):
        _eth_up(conf["net"])
    home = mount_at or "/tmp"
    with open("/etc/passwd", "a") as f:
        f.write(f"{USER}:x:{uid}:{gid}::{home}:/bin/sh\n")
    with open("/etc/group", "a") as f:
        f.write(f"{USER}:x:{gid}:\n")
    if conf.get("hostname"):
        import socket

        socket.sethostname(conf["hostname"])
    return uid, gid, home


def _loopback_up() -> None:
    """Bring up ``lo`` (the guest's own; there is no other interface): programs expect localhost to work."""
    import fcntl
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), 0x8913, ifreq))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s.fileno(), 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1 | 0x40))  # SIOCSIFFLAGS: UP, RUNNING


def _eth_up(address: str) -> None:
    """eth0 at ``address``/24 and no route beyond: the gateway's forwards are on that network, nothing else is."""
    import fcntl
    import socket

    def sockaddr(ip: str) -> bytes:
        return struct.pack("HH4s8x", socket.AF_INET, 0, socket.inet_aton(ip))

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), 0x8916, struct.pack("16s", b"eth0") + sockaddr(address))  # SIOCSIFADDR
        fcntl.ioctl(s.fileno(), 0x891C, struct.pack("16s", b"eth0") + sockaddr("255.255.255.0"))  # SIOCSIFNETMASK
        fcntl.ioctl(s.fileno(), 0x8914, struct.pack("16sH14x", b"eth0", 0x1 | 0x40))  # SIOCSIFFLAGS: UP, RUNNING


def _find_port() -> str:
    base = "/sys/class/virtio-ports"
    for name in sorted(os.listdir(base)):
        try:
            with open(os.path.join(base, name, "name")) as f:
                if f.read().strip() == PORT_NAME:
                    return "/dev/" + name
        except OSError:
            continue
    raise OSError("no control port")


class Agent:
    def __init__(self, port: int, uid: int, gid: int, home: str) -> None:
        import threading

        self.port = port
        self.uid, self.gid, self.home = uid, gid, home
        self.lock = threading.Lock()
        self.procs: dict[int, object] = {}  # id -> Popen
        # Pids of our own children (commands, file helpers): the orphan reaper leaves them alone.
        # Held while spawning so that a child is registered before the reaper can see it exit.
        self.spawn_lock = threading.Lock()
        self.own: set[int] = set()

    def send(self, header: dict, data: bytes = b"") -> None:
        frame = pack(header, data)
        with self.lock:
            view = memoryview(frame)
            while view:
                view = view[os.write(self.port, view):]

    def _demote(self, user: str):
        """The unprivileged user's set-up, run in the child before exec.

        A non-zero uid loses every capability at setresuid.  uid 0 (a one-shot
        run of a host root, whose workspace is root's) keeps the uid but no
        capability: the bounding set is emptied and the securebits make
        execve grant root nothing, locked.  Both: no new privileges.
        """
        if user == "root":
            return None
        uid, gid = self.uid, self.gid

        def demote() -> None:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            if uid == 0:
                for cap in range(64):
                    libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP (unknown caps: EINVAL, ignored)
                # PR_SET_SECUREBITS: NOROOT, NO_SETUID_FIXUP, KEEP_CAPS off, NO_CAP_AMBIENT_RAISE, each locked.
                if libc.prctl(28, 0x1 | 0x2 | 0x4 | 0x8 | 0x20 | 0x80, 0, 0, 0) != 0:
                    os._exit(125)
            else:
                os.setresuid(uid, uid, uid)  # From root to a non-zero uid: every capability is dropped.
            if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
                os._exit(125)

        return demote

    def mounts(self, h: dict) -> None:
        """Read-only and hidden paths inside the workspace (the plan's mandatory denies), before any command."""
        libc = _libc()
        error = None
        try:
            for path in h.get("ro", []):
                if os.path.lexists(path) and not os.path.islink(path):
                    _mount(libc, path, path, "", 0x1000, "")  # MS_BIND
                    _mount(libc, "", path, "", 0x1000 | 0x20 | 0x1 | 0x2 | 0x4, "")  # remount bind ro,nosuid,nodev
            for path in h.get("hide_dir", []):
                if os.path.isdir(path) and not os.path.islink(path):
                    _mount(libc, "hidden", path, "tmpfs", 0x1 | 0x2 | 0x4 | 0x8, "mode=555,size=4k")
            for path in h.get("hide_file", []):
                if os.path.isfile(path) and not os.path.islink(path):
                    _mount(libc, "/.blastwall/empty", path, "", 0x1000, "")
                    _mount(libc, "", path, "", 0x1000 | 0x20 | 0x1 | 0x2 | 0x4, "")
        except OSError as exc:
            error = str(exc)
        self.send({"ev": "result", "id": h.get("id", 0), **({"error": error} if error else {})})

    def exec(self, h: dict) -> None:
        import subprocess
        import threading

        cid = h["id"]
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": self.home,
               "USER": USER, "LOGNAME": USER}
        if h.get("user") == "root":
            env.update(HOME="/root", USER="root", LOGNAME="root")
        env.update(h.get("env") or {})
        env["BLASTWALL_SANDBOX"] = "vm"
        try:
            self.spawn_lock.acquire()
            kwargs: dict = {}
            if h.get("user") != "root" and self.uid != 0:
                # setgroups, setresgid, setresuid done by the child's C code (vfork: much cheaper than a
                # Python preexec_fn under emulation); no-new-privileges is the agent's own, inherited.
                kwargs = {"user": self.uid, "group": self.gid, "extra_groups": []}
            elif h.get("user") != "root":
                kwargs = {"preexec_fn": self._demote("user")}
            proc = subprocess.Popen(h["argv"], env=env, cwd=h.get("cwd") or self.home,
                                    stdin=subprocess.PIPE if h.get("stdin") else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                    close_fds=True, **kwargs)
        except OSError as exc:
            self.send({"ev": "out", "id": cid, "fd": 2}, f"blastwall: Can't run {h['argv'][0]}: {exc.strerror}\n".encode())
            self.send({"ev": "exit", "id": cid, "status": 127 if isinstance(exc, FileNotFoundError) else 126})
            return
        else:
            self.own.add(proc.pid)
        finally:
            self.spawn_lock.release()
        self.procs[cid] = proc
        pumps = [threading.Thread(target=self._pump, args=(cid, fd, pipe), daemon=True)
                 for fd, pipe in ((1, proc.stdout), (2, proc.stderr))]
        for t in pumps:
            t.start()

        def finish() -> None:
            status = proc.wait()
            self.own.discard(proc.pid)
            for t in pumps:
                t.join()
            self.procs.pop(cid, None)
            self.send({"ev": "exit", "id": cid, "status": 128 - status if status < 0 else status})

        threading.Thread(target=finish, daemon=True).start()

    def _pump(self, cid: int, fd: int, pipe) -> None:
        raw = pipe.fileno()
        while True:
            data = os.read(raw, 65536)
            if not data:
                break
            self.send({"ev": "out", "id": cid, "fd": fd}, data)
        pipe.close()

    def stdin(self, h: dict, data: bytes) -> None:
        proc = self.procs.get(h["id"])
        if proc is None or proc.stdin is None:
            return
        try:
            if data:
                proc.stdin.write(data)
                proc.stdin.flush()
            else:
                proc.stdin.close()
        except (OSError, ValueError):
            pass

    def signal(self, h: dict) -> None:
        proc = self.procs.get(h["id"])
        if proc is not None:
            try:
                os.killpg(proc.pid, int(h["sig"]))
            except OSError:
                pass

    def file(self, h: dict, data: bytes) -> None:
        """Read or write a file as the unprivileged user (a child that drops privileges first)."""
        r, w = os.pipe()
        with self.spawn_lock:
            pid = os.fork()
            if pid:
                self.own.add(pid)
        if pid == 0:
            os.close(r)
            try:
                if h.get("user") != "root":  # Root only for the host's own set-up (the gateway's CA).
                    self._demote("user")()
                if h["op"] == "read":
                    with open(h["path"], "rb") as f:
                        out = f.read(MAX_DATA)
                    os.write(w, b"\0")
                    view = memoryview(out)
                    while view:
                        view = view[os.write(w, view):]
                else:
                    with open(h["path"], "wb") as f:
                        f.write(data)
                    os.write(w, b"\0")
            except OSError as exc:
                os.write(w, b"\1" + (exc.strerror or str(exc)).encode())
            os._exit(0)
        os.close(w)
        chunks = []
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(r)
        os.waitpid(pid, 0)
        self.own.discard(pid)
        out = b"".join(chunks)
        if out[:1] == b"\0":
            self.send({"ev": "result", "id": h["id"]}, out[1:])
        else:
            self.send({"ev": "result", "id": h["id"], "error": out[1:].decode("utf-8", "replace") or "failed"})

    def serve(self) -> None:
        import threading

        reader = Reader()
        attached = False
        while True:
            chunk = os.read(self.port, 65536)
            if not chunk:
                if attached:
                    # The host end closed: its session is over or its owner died.  Nothing may outlive it.
                    _power_off()
                import time

                time.sleep(0.01)  # The host end is not connected yet.
                continue
            attached = True
            for h, data in reader.feed(chunk):
                op = h.get("op")
                if op == "exec":
                    self.exec(h)
                elif op == "stdin":
                    self.stdin(h, data)
                elif op == "mounts":
                    self.mounts(h)
                elif op == "signal":
                    self.signal(h)
                elif op in ("read", "write"):
                    threading.Thread(target=self.file, args=(h, data), daemon=True).start()
                elif op == "shutdown":
                    _power_off()


def _power_off() -> None:
    os.sync()
    _libc().reboot(0x4321FEDC)  # RB_POWER_OFF; with -no-reboot QEMU exits.


def _reap_orphans(agent: Agent) -> None:
    """As pid 1, reap orphans (a command's background children whose parent ended).

    Only pids that are none of our commands are reaped: a command's own status
    belongs to its Popen.  WNOWAIT peeks without reaping.
    """
    import time

    while True:
        with agent.spawn_lock:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
            if info is not None and info.si_pid not in agent.own:
                try:
                    os.waitpid(info.si_pid, 0)
                except ChildProcessError:
                    pass
                continue
        time.sleep(0.2)


def main() -> None:
    import sys

    conf = _cmdline()
    debug = (lambda msg: sys.stderr.write(f"blastwall-agent: {msg}\n")) if conf.get("debug") else (lambda msg: None)
    uid, gid, home = _setup(conf)
    debug("set up")
    port = os.open(_find_port(), os.O_RDWR)
    debug("port open")
    agent = Agent(port, uid, gid, home)
    if conf.get("pids"):
        # The guest user's processes and threads at once (RLIMIT_NPROC counts per user, all of them):
        # inherited by every command; root (the agent, its helpers) is exempt.
        import resource

        limit = int(conf["pids"])
        resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
    # No process the agent starts, root's included, can gain privileges through exec (setuid, file caps).
    if _libc().prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError("can't set no-new-privileges")
    import threading

    threading.Thread(target=_reap_orphans, args=(agent,), daemon=True).start()
    agent.send({"ev": "ready", "kernel": os.uname().release})
    debug("ready sent")
    agent.serve()


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:  # noqa: BLE001 - pid 1: say why, then power off.
        import sys
        import traceback

        traceback.print_exc()
        sys.stderr.write(f"blastwall-agent: {exc}\n")
        sys.stderr.flush()
        _libc().reboot(0x4321FEDC)
