"""HAZMAT: relays that listen *inside* a sandbox's network namespace, from outside it.

The sandbox has no network but its own loopback, and seccomp refuses it unix
sockets.  To give it a proxy, a helper forked from ``blastwall run`` joins the
sandbox's user and network namespaces with ``setns`` (it stays in the host's
mount namespace, outside seccomp, Landlock and the sandbox's pid namespace) and
starts ``socat`` there: listening on the sandbox's 127.0.0.1, forwarding to the
session's unix socket of the egress gateway on the host.  bubblewrap waits on
``--block-fd`` until every relay listens, so the command never starts first.

Misuse looks like: starting relays before bubblewrap reported the sandbox's
pid, joining only the network namespace (setns needs the user namespace
first when not root), or leaving the helper running after the sandbox ended
(``stop_relays``).  The sandboxed processes cannot signal or trace the helper:
it is outside their pid namespace and Landlock domain.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

from blastwall._unixpath import relative

__all__ = ["SOCAT_CANDIDATES", "find_socat", "start_relays", "stop_relays"]

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
SOCAT_CANDIDATES = ("/usr/bin/socat", "/usr/local/bin/socat", "/bin/socat")


def find_socat() -> str | None:
    for path in SOCAT_CANDIDATES:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _listening(ports) -> bool:
    """True when every port listens on 127.0.0.1 in *this* process's network namespace."""
    want = {f"0100007F:{port:04X}" for port in ports}
    try:
        with open("/proc/self/net/tcp") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return False
    listening = {fields[1] for fields in (line.split() for line in lines) if len(fields) > 3 and fields[3] == "0A"}
    return want <= listening


def start_relays(*, sandbox_pid: int, relays: dict[int, str], socat: str, timeout: float) -> int:
    """Start relays (port inside the sandbox -> unix socket path on the host); return the helper's pid.

    Returns only once every port listens; raises OSError otherwise.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    userns = os.open(f"/proc/{sandbox_pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    netns = os.open(f"/proc/{sandbox_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    ready_r, ready_w = os.pipe()
    parent = os.getpid()
    helper = os.fork()
    if helper == 0:
        code = 1
        try:
            # Keep nothing of the parent's but what the helper needs: an
            # inherited pty slave or control socket would outlive the sandbox.
            keep = sorted({userns, netns, ready_w})
            low = 3
            for fd in keep:
                os.closerange(low, fd)
                low = fd + 1
            os.closerange(low, 65536)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:
                os._exit(1)
            if libc.setns(userns, CLONE_NEWUSER) != 0 and os.geteuid() != 0:
                raise OSError(ctypes.get_errno(), "setns(user)")
            if libc.setns(netns, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns(net)")
            children = []
            for port, path in relays.items():
                child = os.fork()
                if child == 0:
                    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                    devnull = os.open("/dev/null", os.O_RDWR)
                    for fd in (0, 1, 2):
                        os.dup2(devnull, fd)
                    os.closerange(3, 65536)
                    # The socket by its name in its directory: a socket address holds 107
                    # bytes, whatever the length of the user's state directory.
                    directory, name = relative(path)
                    os.chdir(directory)
                    # A bare environment: the helper was forked from `run`, whose
                    # environment may hold the real values of credentials.
                    os.execve(socat, [socat, f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=1024",
                                      f"UNIX-CONNECT:{name}"], {"PATH": "/usr/bin:/bin"})
                children.append(child)
            deadline = time.monotonic() + timeout
            while not _listening(relays):
                if time.monotonic() > deadline:
                    raise OSError(110, "relays did not start listening")
                time.sleep(0.002)
            os.write(ready_w, b"1")
            os.close(ready_w)

            def stop(_signum, _frame):
                for child in children:
                    try:
                        os.kill(child, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                os._exit(0)

            signal.signal(signal.SIGTERM, stop)
            while True:
                pid, _ = os.wait()
                if pid in children:
                    # A relay died: the sandbox loses the network (fail closed).
                    children.remove(pid)
                    if not children:
                        code = 0
                        break
        except BaseException:  # noqa: BLE001 - the helper must never return into the caller
            pass
        os._exit(code)
    os.close(ready_w)
    os.close(userns)
    os.close(netns)
    try:
        import select

        ready, _, _ = select.select([ready_r], [], [], timeout)
        ok = bool(ready) and os.read(ready_r, 1) == b"1"
    finally:
        os.close(ready_r)
    if not ok:
        stop_relays(helper)
        raise OSError(110, "the network relays did not start")
    return helper


def stop_relays(helper: int) -> None:
    try:
        os.kill(helper, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        os.waitpid(helper, 0)
    except ChildProcessError:
        pass
