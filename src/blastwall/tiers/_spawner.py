"""The command starter inside a sandbox, and the framing its channel speaks.  Standard library only.

Two tiers run this file *inside* their sandbox, where blastwall's package is
not importable: the VM's guest agent (copied into the guest beside it) and
the process tier's sessions (run by path with ``python3 -I -S``).  The host
imports it for ``pack`` and ``Reader``.

Framing: a byte stream of frames, each ``u32 header length, u32 data
length, JSON header, data``.  The host's reader bounds every frame: what
comes from inside a sandbox is data, never trusted.

The spawner holds one end of a unix stream socket.  It receives ``exec``
{id, argv, env, cwd} frames, each with the command's three descriptors
(SCM_RIGHTS), and answers ``spawned`` {id, pid} or ``failed`` {id, errno,
message}; it reports each child's ``exit`` {pid, status}, and signals a
command's process group on ``signal`` {pid, sig}.  Each command leads a new
session (its process group is its own).
"""

from __future__ import annotations

import json
import os
import struct

MAX_HEADER = 4 * 1024 * 1024  # An exec's argv and environment (Linux takes about 2 MiB of them).
MAX_DATA = 16 * 1024 * 1024
HEAD = struct.Struct(">II")


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
            except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep for the parser.
                raise FrameError(f"bad header: {str(exc)[:200]}") from None
            if not isinstance(header, dict):
                raise FrameError("bad header: not an object")
            frames.append((header, bytes(self._buf[HEAD.size + hlen:end])))
            del self._buf[:end]
        return frames


def drain(fd: int) -> None:
    """Empty a non-blocking wake-up pipe (signal.set_wakeup_fd's)."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def ended_children():
    """(pid, wait status) of each child that has ended, reaping it."""
    while True:
        try:
            pid, raw = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, raw


def shell_status(raw_returncode: int) -> int:
    """A Popen/waitstatus exit code as a shell reports it (a signal N is 128+N)."""
    return 128 - raw_returncode if raw_returncode < 0 else raw_returncode


def serve(sock_fd: int, *, hello: dict | None = None, say_failures: bool = False) -> None:
    """Start commands for the other end of ``sock_fd`` until it closes; never returns.

    ``hello``: a frame sent first (the process tier's ``ready``: the boundary
    was verified and the spawner runs).  ``say_failures``: a command that
    cannot start says why on its own stderr, as a shell would (the VM's agent
    says it itself).
    """
    import array
    import selectors
    import signal
    import socket

    sock = socket.socket(fileno=sock_fd)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "host")
    sel.register(wake_r, selectors.EVENT_READ, "child")
    reader = Reader()
    received: list[int] = []

    def send(header: dict) -> None:
        sock.sendall(pack(header))

    if hello is not None:
        send(hello)
    while True:
        for key, _ in sel.select():
            if key.data == "child":
                drain(wake_r)
                for pid, raw in ended_children():
                    send({"ev": "exit", "pid": pid, "status": shell_status(os.waitstatus_to_exitcode(raw))})
                continue
            fds = array.array("i")
            try:
                # Close-on-exec as they arrive: a command started meanwhile must not inherit the next one's.
                data, ancillary, _flags, _addr = sock.recvmsg(1 << 20, socket.CMSG_SPACE(16 * fds.itemsize),
                                                              socket.MSG_CMSG_CLOEXEC)
            except ConnectionResetError:
                data, ancillary = b"", []
            if not data:
                os._exit(0)  # The other end is gone.
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
            received.extend(fds)
            for h, _ in reader.feed(data):
                if h.get("op") == "signal":
                    _signal(h)
                    continue
                mine, received[:] = received[:3], received[3:]
                try:
                    pid = spawn(h["argv"], h["env"], h["cwd"], mine)
                except Exception as exc:  # noqa: BLE001 - whatever it was, the command did not start; say why
                    message = getattr(exc, "strerror", None) or str(exc)[:300]
                    if say_failures and len(mine) == 3:
                        _say(mine[2], h.get("argv"), getattr(exc, "errno", None), message)
                    send({"ev": "failed", "id": h["id"], "errno": getattr(exc, "errno", None) or 0,
                          "message": message})
                else:
                    send({"ev": "spawned", "id": h["id"], "pid": pid})
                finally:
                    for fd in mine:
                        os.close(fd)


def _say(fd: int, argv, errno_: int | None, message: str) -> None:
    import errno

    name = str(argv[0]) if isinstance(argv, list) and argv else ""
    text = "command not found" if errno_ == errno.ENOENT else message
    try:
        os.write(fd, f"blastwall: Can't run {name!r}: {text}\n".encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def _signal(h: dict) -> None:
    pid, sig = h.get("pid"), h.get("sig")
    if not isinstance(pid, int) or pid <= 1 or not isinstance(sig, int):
        return
    for kill in (os.killpg, os.kill):  # The command's group (its children too), then itself if it left it.
        try:
            kill(pid, sig)
        except OSError:
            pass


def which(name: str, path: str) -> str | None:
    """The first executable regular file ``name`` in ``path`` (execvp's rule; an empty entry is the working
    directory), as the caller."""
    if not name:
        return None
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def spawn(argv: list[str], env: dict[str, str], cwd: str, stdio: list[int]) -> int:
    """Start ``argv`` in a new session with ``stdio`` as its 0, 1 and 2; its pid.

    posix_spawn, not Popen: a vfork and an exec and nothing else.  The
    spawner has one thread, so its working directory can be the command's;
    the program is looked up in the command's PATH, as the user (execvp's
    rules: the first executable file).  Signals the spawner ignores (Python
    ignores SIGPIPE and SIGXFSZ) are reset; its other descriptors are
    close-on-exec.
    """
    import errno
    import signal

    if len(stdio) != 3:
        raise OSError(errno.EBADF, "the command's three descriptors did not arrive")
    try:
        os.chdir(cwd)  # First: a relative program, or an empty PATH entry, means the command's directory.
    except (OSError, ValueError) as exc:
        raise NotADirectoryError(errno.ENOTDIR, f"can't use {cwd!r} as the working directory: "
                                                f"{getattr(exc, 'strerror', None) or exc}") from None
    program = argv[0] if argv and "/" in argv[0] else which(argv[0] if argv else "", env.get("PATH", os.defpath))
    if not program:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")
    for fd in stdio:
        os.set_inheritable(fd, False)  # Received close-on-exec already: only their copies as 0, 1, 2 go on.
    return os.posix_spawn(program, argv, env, setsid=True, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                          file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(stdio)])


if __name__ == "__main__":
    # The process tier's session: the launcher verified the boundary and exec'd this with the
    # channel on fd 0.  Standard input of the spawner itself is then /dev/null.
    import sys

    import ctypes

    # Not dumpable: the commands are the same user, and must not read or write its memory
    # (/proc/PID/mem) or trace it to forge what it tells the host.  Their own exec makes them dumpable again.
    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE 0
        sys.exit(125)
    channel = os.dup(0)
    os.set_inheritable(channel, False)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = None
    serve(channel, hello={"ev": "ready"}, say_failures=True)
