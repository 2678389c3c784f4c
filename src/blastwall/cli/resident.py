"""The resident helper: `blastwall run` without the interpreter's imports on every command.

An agent runs `blastwall run` for each command it makes, and most of a run's
start-up is Python importing blastwall.  The helper is one process per user
and state directory, started by the first run, that has imported everything
once and forks a copy of itself for each run (a zygote).  The copy is the
command line: it reads the policy files, compiles the plan from the caller's
environment, working directory and arguments, and runs the sandbox exactly as
`blastwall run` would, on the caller's own standard descriptors (passed over
the socket).  Nothing is cached between runs but the imported code, so a
changed policy, workspace or environment is never seen stale; a changed
installation (any file of the package, or the launcher) makes the helper
hand the run back and exit.

What the caller keeps doing itself (the helper answers "direct" before
anything runs): commands other than `run`, runs on a terminal (the private
pty follows the caller's window), runs that would ask on the terminal,
anything the helper cannot parse, another interpreter or copy of blastwall,
and a caller confined otherwise than the helper -- its namespaces, root,
cgroup, limits, umask, groups, capabilities, no-new-privs or seccomp state,
read by the helper from /proc for the connecting process, never taken from
the request -- since a run through the helper would shed that confinement
(an agent already in someone else's sandbox keeps it).  A run the helper has accepted is never
started twice: if the helper is lost after accepting, the caller reports it
(exit status 125).  The caller closing the connection (killed, interrupted)
stops the sandbox.

Reached at ``$XDG_STATE_HOME/blastwall/resident.sock`` (mode 0600, its
directory 0700, hidden in every sandbox); connections from another uid are
refused.  It exits after ten idle minutes.  ``BLASTWALL_RESIDENT=off``
keeps every run in the calling process.

The caller's side (``run``) imports nothing but ``_socket``: it runs before
anything else on every command.  The helper runs with ``python -I`` from
``/``: nothing of the caller's directory (a workspace, writable inside) or
``PYTHON*`` variables reaches its imports.
"""

from __future__ import annotations

import os
import sys

__all__ = ["run", "serve"]

_MAGIC = b"BW1\0"
_DIRECT, _ACCEPTED, _STATUS = b"D", b"R", b"S"
IDLE_SECONDS = 600.0
_MAX_REQUEST = 8 << 20


def _socket_path(environ) -> str | None:
    from blastwall._dirs import state_dir

    path = os.path.join(state_dir(environ), "resident.sock")
    return path if len(os.fsencode(path)) < 100 else None  # sun_path holds 108 bytes.


# -- the caller's side ---------------------------------------------------------------

def run(argv: list[str]) -> int | None:
    """Run ``argv`` (a `blastwall run` command line) through the helper; its exit status,
    or None when this process must run it itself."""
    environ = os.environ
    if not argv or argv[0] != "run" or environ.get("BLASTWALL_RESIDENT", "on") == "off" \
            or environ.get("BLASTWALL_SANDBOX"):
        return None
    try:
        if os.isatty(0) and os.isatty(1):
            return None  # The private pty needs the caller's terminal signals.
    except OSError:
        return None
    path = _socket_path(environ)
    if path is None:
        return None
    import _socket

    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        try:
            conn.connect(path)
        except OSError:
            _start_helper(environ)
            return None
        return _ask(conn, argv, environ, _socket)
    finally:
        conn.close()


def _ask(conn, argv: list[str], environ, _socket) -> int | None:
    fields = [os.getcwd(), _installation(), str(len(argv)), *argv, *(f"{k}={v}" for k, v in environ.items())]
    payload = b"\0".join(os.fsencode(f) for f in fields)
    if b"\0" in b"".join(os.fsencode(f) for f in argv):
        return None
    message = _MAGIC + len(payload).to_bytes(8, "little") + payload
    fds = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (0, 1, 2))
    try:
        sent = conn.sendmsg([message], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        if sent < len(message):
            conn.sendall(message[sent:])
        first = conn.recv(1)
    except OSError:
        return None  # Nothing was accepted: run it here.
    if first != _ACCEPTED:
        return None
    try:
        reply = _recv_exactly(conn, 5)
    except KeyboardInterrupt:
        return 130  # Closing the connection stops the sandbox.
    except OSError:
        reply = b""
    if len(reply) != 5 or reply[:1] != _STATUS:
        os.write(2, b"blastwall: the resident helper stopped during the run; its sandbox is gone "
                    b"(BLASTWALL_RESIDENT=off runs without it)\n")
        return 125
    return int.from_bytes(reply[1:], "little", signed=True)


def _installation() -> str:
    """Which interpreter and which copy of blastwall: a helper of another serves nobody here."""
    return f"{sys.executable}:{os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}"


# What a process hands its children besides the environment, read by the helper from /proc for
# the peer (never taken from the request) and for itself: where they differ, the caller runs it.
_INHERITED_STATUS = ("Umask", "NoNewPrivs", "Seccomp", "Seccomp_filters", "CapInh", "CapPrm", "CapEff", "CapBnd",
                     "CapAmb", "Groups", "Uid", "Gid")
_NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "pid_for_children", "time", "user", "uts")


def _confinement(pid: int) -> str | None:
    """Process ``pid``'s namespaces, root, cgroup, limits, umask, capabilities, no-new-privs and
    seccomp state (a Landlock domain needs no-new-privs or a capability); None if unreadable."""
    base = f"/proc/{pid}"
    try:
        parts = [os.readlink(f"{base}/ns/{name}") for name in _NAMESPACES]
        root = os.stat(f"{base}/root")
        parts.append(f"root={root.st_dev}:{root.st_ino}")
        for name in ("cgroup", "limits"):
            with open(f"{base}/{name}", "rb") as f:
                parts.append(f.read().decode("utf-8", "replace"))
        with open(f"{base}/status", "rb") as f:
            status = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    fields = dict(line.partition(":")[::2] for line in status.splitlines())
    parts += [f"{key}={fields.get(key, '?').strip()}" for key in _INHERITED_STATUS]
    return "\0".join(parts)


def _recv_exactly(conn, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _start_helper(environ) -> None:
    """Start the helper, detached, for the next run; this one goes on without it."""
    try:
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return
    try:
        # -I: not the caller's directory (the workspace, writable inside) on sys.path, nor PYTHON* variables.
        os.posix_spawn(sys.executable, [sys.executable, "-I", "-m", "blastwall.cli.resident"], dict(environ),
                       file_actions=[(os.POSIX_SPAWN_DUP2, devnull, fd) for fd in (0, 1, 2)], setsid=True)
    except OSError:
        pass
    finally:
        os.close(devnull)


# -- the helper ------------------------------------------------------------------------

def serve(environ=os.environ, *, idle: float = IDLE_SECONDS) -> int:
    """Serve runs until idle for ``idle`` seconds, the installation changes or the socket is taken."""
    import fcntl
    import select
    import signal
    import socket

    from blastwall._dirs import state_dir

    path = _socket_path(environ)
    if path is None:
        return 1
    directory = state_dir(environ)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chdir("/")  # Hold no caller's directory open.
    lock = os.open(os.path.join(directory, "resident.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # Another helper serves this directory.
    _warm()
    import gc

    gc.freeze()  # The imported code stays shared with the runs: the collector never touches it there.
    installed = _fingerprint()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    old_mask = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old_mask)
    listener.listen(64)
    mine = os.stat(path).st_ino
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # Runs reap themselves; the helper waits for none.
    try:
        while True:
            ready, _, _ = select.select([listener], [], [], idle)
            if not ready or _socket_taken(path, mine):
                return 0
            conn, _ = listener.accept()
            peer = _peer(conn)
            if peer is None:
                conn.close()
                continue
            if _fingerprint() != installed:
                _send(conn, _DIRECT)
                conn.close()
                return 0  # The next run starts a helper with the new code.
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    listener.close()
                    code = _serve_one(conn, peer)
                except BaseException:  # noqa: BLE001 - the copy must never return into the helper's loop
                    pass
                finally:
                    os._exit(code)
            conn.close()
    finally:
        if not _socket_taken(path, mine):
            try:
                os.unlink(path)
            except OSError:
                pass
        listener.close()


def _warm() -> None:
    """Import what a run needs, so that each forked run starts with it."""
    import blastwall.api  # noqa: F401
    import blastwall.audit.log  # noqa: F401
    import blastwall.cli.main  # noqa: F401
    import blastwall.tiers._raw_seccomp  # noqa: F401
    import blastwall.tiers.process  # noqa: F401
    import blastwall.tiers.process.placeholders  # noqa: F401
    from blastwall.policy import defaults
    from blastwall.tiers import _raw_seccomp
    from blastwall.tiers.process import landlock_abi

    landlock_abi()
    try:  # The default plan's program, which most runs use.
        os.close(_raw_seccomp.compile_filter(families=defaults.DENIED_SYSCALL_FAMILIES,
                                             socket_families=defaults.SOCKET_FAMILIES))
    except OSError:
        pass  # A run says why.


def _fingerprint() -> dict[str, tuple[int, int]]:
    """(mtime, size) of every file of the installed package: a change means other code."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    seen: dict[str, tuple[int, int]] = {}
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        stack.append(entry.path)
                elif entry.name.endswith((".py", ".so")):
                    st = entry.stat(follow_symlinks=False)
                    seen[entry.path] = (st.st_mtime_ns, st.st_size)
    return seen


def _socket_taken(path: str, mine: int) -> bool:
    try:
        return os.stat(path).st_ino != mine
    except OSError:
        return True


def _peer(conn) -> int | None:
    """The connecting process's pid, if it is this user's and visible here; else None."""
    import socket
    import struct

    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid if uid == os.getuid() and pid > 0 else None


def _send(conn, data: bytes) -> None:
    try:
        conn.sendall(data)
    except OSError:
        pass


def _serve_one(conn, peer: int) -> int:
    """In the forked copy: take one run from ``conn`` (process ``peer``); the copy's exit status."""
    import signal
    import socket
    import threading

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    conn.settimeout(10.0)  # A caller that stalls mid-request is dropped.
    try:
        cwd, argv, environ, installation, fds = _read_request(conn, socket)
    except (OSError, ValueError):
        _send(conn, _DIRECT)
        return 0
    conn.settimeout(None)
    theirs = _confinement(peer)
    if installation != _installation() or theirs is None or theirs != _confinement(os.getpid()):
        # Another interpreter or copy of blastwall; or a caller confined otherwise than the helper
        # (namespaces, root, cgroup, limits, umask, capabilities, no-new-privs, seccomp, groups):
        # a run through the helper would shed that confinement, so the caller runs it itself.
        for fd in fds:
            os.close(fd)
        _send(conn, _DIRECT)
        return 0
    try:
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
        for fd in fds:
            os.close(fd)
        os.chdir(cwd)
    except OSError:
        _send(conn, _DIRECT)
        return 0
    os.environ.clear()
    os.environ.update(environ)
    sys.argv = ["blastwall", *argv]
    from blastwall.cli import main as cli
    from blastwall.cli.args import UsageError, parse

    try:
        parsed = parse(argv)
    except UsageError:
        _send(conn, _DIRECT)  # The caller says what is wrong, as always.
        return 0
    if parsed.command != "run" or cli._interactive():
        _send(conn, _DIRECT)
        return 0
    done, accepted = threading.Event(), threading.Event()

    def accept():
        _send(conn, _ACCEPTED)
        accepted.set()
        _watch_caller(conn, done)

    run = cli.ResidentRun(accept)
    try:
        status = cli.guarded(lambda p: cli.cmd_run(p, resident=run), parsed)
    except cli.NeedsTerminal:
        _send(conn, _DIRECT)
        return 0
    if not accepted.is_set():
        _send(conn, _ACCEPTED)  # Refused before it started (said on the caller's stderr): that is the result.
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    done.set()
    _send(conn, _STATUS + int(status).to_bytes(4, "little", signed=True))
    conn.close()
    for record in run.records:
        cli._audit_run(*record, detach=False)
    return 0


def _read_request(conn, socket):
    head, ancillary, _flags, _addr = conn.recvmsg(len(_MAGIC) + 8, socket.CMSG_LEN(3 * 4))
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(data[i:i + 4], sys.byteorder, signed=True) for i in range(0, len(data) - 3, 4)]
    if len(fds) != 3 or len(head) != len(_MAGIC) + 8 or not head.startswith(_MAGIC):
        for fd in fds:
            os.close(fd)
        raise ValueError("not a run request")
    size = int.from_bytes(head[len(_MAGIC):], "little")
    if size > _MAX_REQUEST:
        raise ValueError("request too large")
    payload = _recv_exactly(conn, size)
    if len(payload) != size:
        raise ValueError("short request")
    fields = [os.fsdecode(f) for f in payload.split(b"\0")]
    cwd, installation, count = fields[0], fields[1], int(fields[2])
    argv = fields[3:3 + count]
    environ = dict(item.partition("=")[::2] for item in fields[3 + count:])
    return cwd, argv, environ, installation, fds


def _watch_caller(conn, done) -> None:
    """Stop the run when the caller goes away: its end of the connection closes."""
    import select
    import signal
    import threading

    fd = conn.fileno()

    def watch():
        try:
            select.select([fd], [], [])
        except (OSError, ValueError):
            return
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)  # cmd_run stops the sandbox and cleans up.

    threading.Thread(target=watch, daemon=True, name="blastwall-caller").start()


def _idle(environ) -> float:
    """BLASTWALL_RESIDENT_IDLE: seconds without a run before the helper exits (1 to 86400)."""
    try:
        seconds = float(environ.get("BLASTWALL_RESIDENT_IDLE", IDLE_SECONDS))
    except ValueError:
        return IDLE_SECONDS
    return seconds if 1 <= seconds <= 86400 else IDLE_SECONDS


if __name__ == "__main__":
    sys.exit(serve(idle=_idle(os.environ)))
