"""The guest agent: pid 1 of a blastwall VM.

This file is copied into the guest's initramfs, with ``tiers/_spawner.py``
(the framing and the command starter it shares with the process tier), and
run there by the guest's own Python (``python3 -I``), so it imports nothing
but the standard library and that file.

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

In the guest, the agent is pid 1 and root: one thread runs one loop over the
control port, the commands' pipes and their ends.  The unprivileged user's
commands are started by a *spawner*, a child of the agent that already is
that user (so Python can vfork; a fork of the agent costs more than the
command under emulation) and is not dumpable (the user's commands cannot
trace it).  The user can kill it; the agent then adopts its commands and
starts another.  A command's exit is sent once its output is in, or after
QUIET_AFTER_EXIT if a process it left behind holds its pipes.

The guest is not trusted by the host: a root process in the guest could
write anything to the port's other end (it cannot open the port itself: it
is single-open and the agent holds it), so the host's reader bounds every
frame and treats what it gets as data.
"""

from __future__ import annotations

import os
import struct

PORT_NAME = "blastwall"
USER = "user"

try:
    from blastwall.tiers._spawner import (MAX_DATA, MAX_HEADER, FrameError, Reader, drain as _drain,
                                          ended_children as _ended_children, pack, serve,
                                          shell_status as _status)
except ImportError:  # In the guest, where this file runs alone (python3 -I): the spawner's copy sits beside it.
    import sys as _sys

    _sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _spawner import (MAX_DATA, MAX_HEADER, FrameError, Reader, drain as _drain,  # type: ignore[no-redef]
                          ended_children as _ended_children, pack, serve, shell_status as _status)

__all__ = ["FrameError", "MAX_DATA", "MAX_HEADER", "Reader", "main", "pack"]


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
    if uid == 0 or gid == 0:
        # Root in the guest owns the overlay, the agent's channel and the kernel's helpers (modprobe).
        raise OSError(1, "Refusing to run the user's commands as root")
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
        # A root caller's workspace keeps its host path (/root/...), and the image's /root is root's alone:
        # the user may pass through each directory above it (this is the guest's throw-away overlay).
        parent = os.path.dirname(mount_at)
        while parent != "/":
            os.chmod(parent, os.stat(parent).st_mode & 0o7777 | 0o111)
            parent = os.path.dirname(parent)
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


SIGKILL = 9
QUIET_AFTER_EXIT = 0.5  # Seconds a finished command's pipes may stay open (a child it left) before its exit is sent.


def _close_all_but(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


class _Running:
    """A command of the agent's: its pipes, its pid once known, its status once it ended."""

    __slots__ = ("cid", "name", "pid", "proc", "outs", "stdin", "pending", "stdin_eof", "status", "ended_at",
                 "signals")

    def __init__(self, cid: int, name: str) -> None:
        self.cid = cid
        self.name = name
        self.pid: int | None = None
        self.proc = None  # The Popen, for commands the agent starts itself.
        self.outs: dict[int, int] = {}  # read end -> 1 or 2
        self.stdin = -1
        self.pending = bytearray()
        self.stdin_eof = False
        self.status: int | None = None
        self.ended_at = 0.0
        self.signals: list[int] = []  # Asked for before the spawner said which pid it is.


def _spawner(sock_fd: int, uid: int, gid: int) -> None:
    """The unprivileged user's process starter (a child of the agent; never returns).

    It is the user already (and not dumpable: the user's commands can neither
    trace it nor read its memory), so starting a command needs no change of
    ids, and Python can vfork: under software emulation a fork of the agent
    costs more than the command.  It gets ``exec`` frames and the command's
    three descriptors (SCM_RIGHTS) from the agent over a socketpair, answers
    ``spawned`` {id, pid} or ``failed`` {id, errno, message}, and reports each
    ``exit`` {pid, status}.  The agent is pid 1: a command's orphans are
    its to reap, and the commands of a killed spawner become its children.
    """
    import signal

    libc = _libc()
    _close_all_but({sock_fd})
    signal.set_wakeup_fd(-1)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # Every capability is gone.
    if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE 0
        os._exit(125)
    serve(sock_fd)


class Agent:
    """pid 1 of the guest: one thread and one loop for the control port, the commands' pipes and their ends."""

    def __init__(self, port: int, uid: int, gid: int, home: str) -> None:
        import selectors
        import threading

        self.port = port
        self.uid, self.gid, self.home = uid, gid, home
        self.lock = threading.Lock()  # Frames are written by the loop and by file threads.
        self.sel = selectors.DefaultSelector()
        self.running: dict[int, _Running] = {}
        self.by_pid: dict[int, _Running] = {}
        self.reader = Reader()
        self.attached = False
        self.spawner_sock = None
        self.spawner_pid = 0
        self.spawner_reader = Reader()

    def send(self, header: dict, data: bytes = b"") -> None:
        frame = pack(header, data)
        with self.lock:
            view = memoryview(frame)
            while view:
                view = view[os.write(self.port, view):]

    # -- the spawner ----------------------------------------------------------------------------
    def start_spawner(self) -> None:
        import selectors
        import socket

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            try:
                _spawner(theirs.fileno(), self.uid, self.gid)
            finally:
                os._exit(125)
        theirs.close()
        ours.setblocking(True)
        self.spawner_sock, self.spawner_pid = ours, pid
        self.spawner_reader = Reader()
        self.sel.register(ours, selectors.EVENT_READ, ("spawner", None))

    def _spawner_lost(self) -> None:
        """The spawner died (the user can kill it): its commands are ours now; the next command starts another."""
        self.sel.unregister(self.spawner_sock)
        self.spawner_sock.close()
        self.spawner_sock = None
        for command in list(self.running.values()):
            if command.status is not None or command.proc is not None:
                continue
            if command.pid is None:
                self._failed(command, 125, "the command's starter was killed")
            else:
                try:
                    os.kill(command.pid, 0)  # Alive, or a zombie that is now ours to reap.
                except ProcessLookupError:
                    self._ended(command, 128 + SIGKILL)  # Reaped by the dead spawner before it could tell.

    def _from_spawner(self) -> None:
        try:
            data = self.spawner_sock.recv(65536)
        except OSError:
            data = b""
        try:
            frames = self.spawner_reader.feed(data) if data else None
        except FrameError:
            frames = None
        if frames is None:
            if self.spawner_pid:
                try:
                    os.kill(self.spawner_pid, SIGKILL)  # Garbage from it: it is not the spawner any more.
                except ProcessLookupError:
                    pass
            self._spawner_lost()
            return
        for h, _ in frames:
            event = h.get("ev")
            if event == "spawned":
                command = self.running.get(h.get("id"))
                if command is None:
                    continue
                command.pid = h["pid"]
                self.by_pid[command.pid] = command
                for sig in command.signals:
                    self._kill(command, sig)
            elif event == "failed":
                command = self.running.get(h.get("id"))
                if command is not None:
                    code = 127 if h.get("errno") == 2 else 126
                    self._failed(command, code, h.get("message", "failed"))
            elif event == "exit":
                command = self.by_pid.get(h.get("pid"))
                if command is not None and command.proc is None:
                    self._ended(command, h["status"])

    # -- commands -------------------------------------------------------------------------------
    def exec(self, h: dict) -> None:
        import selectors
        import socket

        cid = h["id"]
        command = _Running(cid, str(h["argv"][0]) if h.get("argv") else "")
        as_root = h.get("user") == "root"
        env = dict(h.get("env") or {})  # The host's plan, whole: PATH, HOME and USER included.
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        if h.get("stdin"):
            in_r, command.stdin = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(command.stdin, False)
        else:
            in_r = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        for fd, which in ((out_r, 1), (err_r, 2)):
            os.set_blocking(fd, False)
            command.outs[fd] = which
            self.sel.register(fd, selectors.EVENT_READ, ("out", command))
        self.running[cid] = command
        cwd = h.get("cwd") or self.home
        try:
            if not as_root:
                frame = pack({"id": cid, "argv": h["argv"], "env": env, "cwd": cwd})
                try:
                    if self.spawner_sock is None:
                        self.start_spawner()
                    sent = self.spawner_sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                                 _fd_bytes(in_r, out_w, err_w))])
                    self.spawner_sock.sendall(frame[sent:])
                except OSError as exc:
                    self._failed(command, 125, f"the command's starter is gone ({exc.strerror or exc})")
                return
            import subprocess  # Only here: root's commands, the host's own (slow to import under emulation).

            try:
                command.proc = subprocess.Popen(h["argv"], env=env, cwd=cwd, stdin=in_r, stdout=out_w, stderr=err_w,
                                                start_new_session=True, close_fds=True)
            except Exception as exc:  # noqa: BLE001 - pid 1 must not die of a command that cannot start
                self._failed(command, 127 if isinstance(exc, FileNotFoundError) else 126,
                             getattr(exc, "strerror", None) or str(exc)[:300])
                return
            command.pid = command.proc.pid
            self.by_pid[command.pid] = command
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)

    def _failed(self, command: _Running, code: int, message: str) -> None:
        self.send({"ev": "out", "id": command.cid, "fd": 2}, f"blastwall: Can't run {command.name}: {message}\n".encode())
        for fd in list(command.outs):
            self._close_out(command, fd)
        self._ended(command, code)

    def _ended(self, command: _Running, status: int) -> None:
        """The command's process ended: send its exit once its output is in (or after a quiet while)."""
        import time

        if command.status is None:
            command.status = status
            command.ended_at = time.monotonic()
        self._drain(command)
        self._maybe_done(command, force=False)

    def _drain(self, command: _Running) -> None:
        for fd in list(command.outs):
            while fd in command.outs and self._read_out(command, fd):
                pass

    def _read_out(self, command: _Running, fd: int) -> bool:
        """Forward what ``fd`` has; False when there is nothing more now."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._close_out(command, fd)
            self._maybe_done(command, force=False)
            return False
        self.send({"ev": "out", "id": command.cid, "fd": command.outs[fd]}, data)
        return True

    def _close_out(self, command: _Running, fd: int) -> None:
        if command.outs.pop(fd, None) is not None:
            self.sel.unregister(fd)
            os.close(fd)

    def _maybe_done(self, command: _Running, *, force: bool) -> None:
        if command.status is None or (command.outs and not force) or command.cid not in self.running:
            return
        for fd in list(command.outs):  # A process the command left behind holds them: not its output.
            self._close_out(command, fd)
        if command.stdin >= 0:
            try:
                self.sel.unregister(command.stdin)
            except (KeyError, ValueError):
                pass
            os.close(command.stdin)
            command.stdin = -1
        del self.running[command.cid]
        if command.pid is not None and self.by_pid.get(command.pid) is command:
            del self.by_pid[command.pid]
        self.send({"ev": "exit", "id": command.cid, "status": command.status})

    def stdin(self, h: dict, data: bytes) -> None:
        import selectors

        command = self.running.get(h.get("id"))
        if command is None or command.stdin < 0:
            return
        if data:
            command.pending += data
        else:
            command.stdin_eof = True
        try:
            self.sel.register(command.stdin, selectors.EVENT_WRITE, ("in", command))
        except KeyError:
            pass  # Already waiting to write.
        self._write_in(command)

    def _write_in(self, command: _Running) -> None:
        try:
            while command.pending:
                del command.pending[:os.write(command.stdin, command.pending)]
        except BlockingIOError:
            return
        except OSError:
            command.pending.clear()  # The command closed its input: drop the rest.
            command.stdin_eof = True
        if command.stdin_eof or not command.pending:
            self.sel.unregister(command.stdin)
            if command.stdin_eof:
                os.close(command.stdin)
                command.stdin = -1

    def _kill(self, command: _Running, sig: int) -> None:
        try:
            os.killpg(command.pid, sig)
        except OSError:
            pass

    def signal(self, h: dict) -> None:
        command = self.running.get(h.get("id"))
        if command is None or command.status is not None:
            return
        if command.pid is None:
            command.signals.append(int(h["sig"]))
        else:
            self._kill(command, int(h["sig"]))

    def _children(self) -> None:
        """Reap every child that ended: our commands (their status), a dead spawner, orphans."""
        for pid, raw in _ended_children():
            if pid == self.spawner_pid:
                self.spawner_pid = 0
                continue
            command = self.by_pid.get(pid)
            if command is None:
                continue  # An orphan (a command's child), or a file helper: nothing to tell.
            status = os.waitstatus_to_exitcode(raw)
            if command.proc is not None:
                command.proc.returncode = status  # Reaped here: Popen must never wait for this pid again.
            self._ended(command, _status(status))

    # -- mounts and files -------------------------------------------------------------------------
    def mounts(self, h: dict) -> None:
        """The plan's mounts inside the workspace, in the order given, before any command.

        ``pin``: a directory bound over itself (a mount point: it cannot be
        renamed or removed); ``ro``: bound read-only; ``hide-dir``/``hide-file``:
        covered by an empty one.  Every one nosuid, nodev.
        """
        libc = _libc()
        error = None
        bind, remount, rdonly, nosuid, nodev, noexec = 0x1000, 0x20, 0x1, 0x2, 0x4, 0x8
        try:
            for kind, path in h.get("list", []):
                if not os.path.lexists(path) or os.path.islink(path):
                    continue
                if kind == "pin" and os.path.isdir(path):
                    _mount(libc, path, path, "", bind, "")
                    _mount(libc, "", path, "", bind | remount | nosuid | nodev, "")
                elif kind == "ro":
                    _mount(libc, path, path, "", bind, "")
                    _mount(libc, "", path, "", bind | remount | rdonly | nosuid | nodev, "")
                elif kind == "hide-dir" and os.path.isdir(path):
                    _mount(libc, "hidden", path, "tmpfs", rdonly | nosuid | nodev | noexec, "mode=555,size=4k")
                elif kind == "hide-file" and os.path.isfile(path):
                    _mount(libc, "/.blastwall/empty", path, "", bind, "")
                    _mount(libc, "", path, "", bind | remount | rdonly | nosuid | nodev, "")
                elif kind not in ("pin", "ro", "hide-dir", "hide-file"):
                    raise OSError(22, f"unknown mount kind {kind!r}")
        except (OSError, TypeError, ValueError) as exc:
            error = str(exc)
        self.send({"ev": "result", "id": h.get("id", 0), **({"error": error} if error else {})})

    def file(self, h: dict, data: bytes) -> None:
        """Read or write a file as the unprivileged user (a child that drops privileges first; the loop reaps it)."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                if h.get("user") != "root":  # Root only for the host's own set-up (the gateway's CA).
                    os.setgroups([])
                    os.setresgid(self.gid, self.gid, self.gid)
                    os.setresuid(self.uid, self.uid, self.uid)
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
        out = b"".join(chunks)
        if out[:1] == b"\0":
            self.send({"ev": "result", "id": h["id"]}, out[1:])
        else:
            self.send({"ev": "result", "id": h["id"], "error": out[1:].decode("utf-8", "replace") or "failed"})

    # -- the loop ---------------------------------------------------------------------------------
    def _from_host(self) -> None:
        import threading
        import time

        chunk = os.read(self.port, 65536)
        if not chunk:
            if self.attached:
                # The host end closed: its session is over or its owner died.  Nothing may outlive it.
                _power_off()
            time.sleep(0.01)  # The host end is not connected yet.
            return
        self.attached = True
        for h, data in self.reader.feed(chunk):
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

    def serve(self) -> None:
        import selectors
        import signal
        import time

        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w)
        self.sel.register(self.port, selectors.EVENT_READ, ("host", None))
        self.sel.register(wake_r, selectors.EVENT_READ, ("child", None))
        self._children()  # Anything that ended before the handler was there.
        while True:
            quiet = [c for c in self.running.values() if c.status is not None]
            timeout = None
            if quiet:
                timeout = max(0.0, min(c.ended_at for c in quiet) + QUIET_AFTER_EXIT - time.monotonic())
            for key, mask in self.sel.select(timeout):
                kind, command = key.data
                if kind == "host":
                    self._from_host()
                elif kind == "child":
                    _drain(wake_r)
                    self._children()
                elif kind == "spawner":
                    self._from_spawner()
                elif kind == "out":
                    if key.fd in command.outs:
                        self._read_out(command, key.fd)
                elif kind == "in" and command.stdin >= 0:
                    self._write_in(command)
            now = time.monotonic()
            for command in [c for c in self.running.values() if c.status is not None]:
                if now - command.ended_at >= QUIET_AFTER_EXIT:
                    self._drain(command)
                    self._maybe_done(command, force=True)


def _fd_bytes(*fds: int) -> bytes:
    import array

    return array.array("i", fds).tobytes()


def _power_off() -> None:
    os.sync()
    _libc().reboot(0x4321FEDC)  # RB_POWER_OFF; with -no-reboot QEMU exits.


def main() -> None:
    import sys

    conf = _cmdline()
    debug = (lambda msg: sys.stderr.write(f"blastwall-agent: {msg}\n")) if conf.get("debug") else (lambda msg: None)
    uid, gid, home = _setup(conf)
    debug("set up")
    port = os.open(_find_port(), os.O_RDWR | os.O_CLOEXEC)
    debug("port open")
    if conf.get("pids"):
        # The guest user's processes and threads at once (RLIMIT_NPROC counts per user, all of them):
        # inherited by every command; root (the agent, its helpers) is exempt.
        import resource

        limit = int(conf["pids"])
        resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
    # No process the agent starts, root's included, can gain privileges through exec (setuid, file caps).
    if _libc().prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError("can't set no-new-privileges")
    agent = Agent(port, uid, gid, home)
    agent.start_spawner()  # Before the first command asks, while the agent is small.
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
        _power_off()
