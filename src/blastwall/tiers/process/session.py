"""The process tier as a session: one bubblewrap sandbox, many commands.

``boot()`` starts one ``ProcessSandbox`` whose command is the spawner
(``tiers/_spawner.py``, run by this Python with ``-I -S``): it runs behind
the same launcher as any command (the boundary verified, Landlock applied),
as the sandbox's user, with its channel on a unix socket.  Each ``exec``
sends it the command and the caller's three descriptors; the command starts
as the spawner's child, in a session of its own, sharing the sandbox's
``/tmp``, network namespace and processes with every other command.  Its
output goes straight to the caller's descriptors: nothing is relayed.

A one-shot run (``blastwall run``) is not this: ``ProcessSandbox`` is the
contract's session with one ``exec``, the sandbox's own command, so the
one-shot path pays nothing for sessions.

What is not a boundary here: the commands and the spawner are the same
user, so a command can kill the spawner (``kill -9 -1``).  The session
then ends, every running command reports 137, and ``exec`` refuses.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

from blastwall.errors import EnforcementError
from blastwall.policy import plan as P
from blastwall.tiers._lifecycle import ExitLatch, SessionBase
from blastwall.tiers._check import KILLED, SandboxStopped
from blastwall.tiers.process import ProcessSandbox

__all__ = ["ProcessSession", "SessionStopped"]

BOOT_TIMEOUT = 30.0  # Seconds for the spawner to say it runs.
SEND_TIMEOUT = 10.0  # Seconds a frame may wait for the spawner to read it.
KILL_GRACE = 5.0  # Seconds a killed command has to end before its whole sandbox is killed from the host.


SessionStopped = SandboxStopped  # The session's sandbox is gone (closed, timed out, its spawner killed inside).


class SessionProcess:
    """A command started by the session's spawner (the ``Process`` of the contract)."""

    def __init__(self, session: "ProcessSession", cid: int) -> None:
        self._session = session
        self.cid = cid
        self.pid: int | None = None  # Inside the sandbox's pid namespace.
        self._done = ExitLatch()
        self._signals: list[int] = []  # Asked for before the spawner said which pid it is.
        self.lost = False  # The sandbox went down under it.
        self._killed = False
        from blastwall.tiers._lifecycle import start_deadline

        self._deadline = start_deadline(session.plan, self.kill)  # The plan's [resources] timeout, per command.

    def exit_fd(self) -> int | None:
        return self._done.fileno()

    def poll(self) -> int | None:
        return self._done.status

    def wait(self, timeout: float | None = None) -> int:
        status = self._done.wait(timeout)
        if self.lost:
            raise SandboxStopped("Can't finish the command: its sandbox stopped while it ran")
        return status

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the command's process group; a SIGKILL not obeyed within KILL_GRACE (a spawner stopped
        from inside), or asked for twice, kills the whole sandbox from the host."""
        if self._done.status is not None:
            return
        if sig == signal.SIGKILL:
            if self._killed:
                self._session._wedged("a command did not end when killed")
                return
            self._killed = True
            timer = threading.Timer(KILL_GRACE, self._not_obeyed)
            timer.daemon = True
            timer.start()
        if self.pid is None:
            self._signals.append(sig)
            return
        self._session._signal(self.pid, sig)

    def _not_obeyed(self) -> None:
        if self._done.status is None:
            self._session._wedged("a command did not end when killed")

    def release(self) -> None:
        self._done.release()

    # From the session's reader.
    def _spawned(self, pid: int) -> None:
        self.pid = pid
        for sig in self._signals:
            self._session._signal(pid, sig)
        self._signals.clear()

    def _finish(self, status: int, *, lost: bool = False) -> None:
        self.lost = lost and self._done.status is None
        if self._deadline is not None:
            status = self._deadline.status(status)  # 124 if the deadline killed it.
        self._done.set(status)


class ProcessSession(SessionBase):
    """One process-tier sandbox: ``prepare``, ``boot``, ``exec`` any number of commands, ``close``."""

    tier = "process"

    def __init__(self, plan: P.Plan, *, environ=os.environ, broker=None, die_with_parent: bool = True) -> None:
        self.plan = plan
        self._box = ProcessSandbox(plan, environ=environ, broker=broker, die_with_parent=die_with_parent)
        self._box.timeout_applies = False  # The plan's [resources] timeout bounds each command instead.
        self._prepared = False
        self._booted = False
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._procs: dict[int, SessionProcess] = {}
        self._by_pid: dict[int, SessionProcess] = {}
        self._next = 1
        self._stopped = False
        self._closed = False
        self._closing = threading.Event()
        self._close_lock = threading.Lock()
        self._keeper: threading.Thread | None = None
        self.stopped_because = ""

    # The contract's reports, from the sandbox.
    def _egress_client(self):
        return self._box._gateway

    @property
    def egress_summary(self) -> dict | None:
        return self._box.egress_summary

    @property
    def gateway_lost(self) -> bool:
        return self._box.gateway_lost

    @property
    def degraded(self) -> tuple[str, ...]:
        return self._box.degraded

    @property
    def deadline(self):
        return self._box.deadline

    @property
    def bwrap_messages(self) -> str:
        return self._box.bwrap_messages

    @staticmethod
    def recover(*, environ=os.environ) -> None:
        ProcessSandbox.recover(environ=environ)

    def prepare(self) -> None:
        self._box.prepare()
        self._prepared = True

    def boot(self) -> None:
        """Start the sandbox and its spawner."""
        if self._closed:
            raise SandboxStopped("the session was closed; start a new one")
        if not self._prepared:
            self.prepare()
        if self._booted:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        started = threading.Event()
        failure: list[BaseException] = []

        def keeper() -> None:
            # bubblewrap (and the relays) die with the *thread* that started them (PR_SET_PDEATHSIG,
            # bwrap's --die-with-parent): this one, which lives as long as the session, whichever
            # thread booted it and then ended.
            devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            try:
                spawner = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_spawner.py")
                self._box.start([sys.executable, "-I", "-S", "-B", spawner], stdin=theirs.fileno(),
                                stdout=devnull, stderr=devnull)
            except BaseException as exc:  # noqa: BLE001 - handed to boot()
                failure.append(exc)
            finally:
                theirs.close()
                os.close(devnull)
                started.set()
            self._closing.wait()

        self._keeper = threading.Thread(target=keeper, daemon=True, name="blastwall-process-session-keeper")
        self._keeper.start()
        started.wait()
        if failure:
            ours.close()
            self.close()
            raise failure[0]
        self._sock = ours
        from blastwall.tiers._spawner import Reader

        reader = Reader()
        ours.settimeout(BOOT_TIMEOUT)
        try:
            frames: list = []
            while not frames:
                chunk = ours.recv(65536)
                if not chunk:
                    break
                frames = reader.feed(chunk)
        except (OSError, ValueError):
            frames = []
        if not frames or frames[0][0].get("ev") != "ready":
            self._fail_boot()
        ours.settimeout(None)
        self._booted = True
        self._reader = threading.Thread(target=self._read_loop, args=(reader, frames[1:]), daemon=True,
                                        name="blastwall-process-session")
        self._reader.start()

    def _fail_boot(self) -> None:
        """The spawner never said it runs: say why (bubblewrap's or the launcher's message), then give up."""
        try:
            self._box.kill()
            self._box.wait()  # Raises what went wrong when the sandbox did not start.
            raise EnforcementError("Can't start the session's sandbox: its command starter did not start")
        finally:
            self.close()

    def exec(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
             stdin: int = 0, stdout: int = 1, stderr: int = 2, ctty: bool = False) -> "SessionProcess":
        """Start ``argv``; its Process.  ``env`` is added to the sandbox's environment (the plan's);
        ``cwd`` is an absolute path inside (the plan's working directory when None)."""
        if ctty:
            raise ValueError("a session's commands have no controlling terminal; run a one-shot command for one")
        _check_request(argv, env, cwd, (stdin, stdout, stderr))
        from blastwall.tiers._spawner import MAX_HEADER, pack

        (chdir,) = self.plan.of(P.Chdir)
        header = {"id": 0, "argv": list(argv), "env": {**self._box.environment, **(env or {})},
                  "cwd": cwd or chdir.path}
        with self._lock:
            if self._stopped or self._sock is None:
                raise SandboxStopped("the session's sandbox has stopped")
            cid, self._next = self._next, self._next + 1
            header["id"] = cid
            frame = pack(header)
            if len(frame) > MAX_HEADER:
                raise EnforcementError("Can't run the command: its arguments and environment are too large")
            process = SessionProcess(self, cid)
            self._procs[cid] = process
        try:
            self._send(frame, _fds(stdin, stdout, stderr))
        except SandboxStopped:
            with self._lock:
                self._procs.pop(cid, None)
            process.release()
            raise
        return process

    def _send(self, frame: bytes, fds: bytes | None = None) -> None:
        """Write one frame to the spawner, within SEND_TIMEOUT: a spawner that does not read (stopped from
        inside, or wedged) ends the session rather than hang its host."""
        import select
        import time

        sock = self._sock
        deadline = time.monotonic() + SEND_TIMEOUT
        view = memoryview(frame)
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)] if fds else []
        with self._send_lock:
            while view:
                remaining = deadline - time.monotonic()
                if sock is None or self._stopped:
                    raise SandboxStopped("the session's sandbox has stopped")
                try:
                    if remaining <= 0 or not select.select([], [sock], [], remaining)[1]:
                        break
                    sent = sock.sendmsg([view], ancillary, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
                except BlockingIOError:
                    continue
                except OSError:
                    raise SandboxStopped("the session's sandbox has stopped") from None
                ancillary = []  # The descriptors travel with the first byte.
                view = view[sent:]
            else:
                return
        self._wedged("its command starter stopped reading (stopped or killed from inside)")
        raise SandboxStopped("the session's sandbox stopped: its command starter stopped answering")

    def _wedged(self, why: str) -> None:
        """The spawner cannot be trusted to act any more: the whole sandbox goes, from the host."""
        self.stopped_because = why
        threading.Thread(target=self.close, daemon=True, name="blastwall-process-session-close").start()

    def _signal(self, pid: int, sig: int) -> None:
        from blastwall.tiers._spawner import pack

        try:
            self._send(pack({"op": "signal", "pid": pid, "sig": int(sig)}))
        except SandboxStopped:
            pass

    def _read_loop(self, reader, pending: list) -> None:
        from blastwall.tiers._spawner import FrameError

        sock = self._sock
        try:
            for header, _ in pending:
                self._dispatch(header)
            while sock is not None:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                for header, _ in reader.feed(chunk):
                    self._dispatch(header)
        except (OSError, FrameError):
            pass
        self._stop()

    def _dispatch(self, header: dict) -> None:
        event = header.get("ev")
        with self._lock:
            if event == "spawned":
                process = self._procs.get(header.get("id"))
                pid = header.get("pid")
                if process is None or not isinstance(pid, int):
                    return
                self._by_pid[pid] = process
            elif event == "failed":
                process = self._procs.pop(header.get("id"), None)
            elif event == "exit":
                process = self._by_pid.pop(header.get("pid"), None)
                if process is not None:
                    self._procs.pop(process.cid, None)
            else:
                return
        if process is None:
            return
        if event == "spawned":
            process._spawned(header["pid"])
        elif event == "failed":
            process._finish(127 if header.get("errno") == 2 else 126)
        else:
            status = header.get("status")
            process._finish(status if isinstance(status, int) else KILLED)

    def _stop(self) -> None:
        """The spawner is gone: every command still running is reported killed."""
        with self._lock:
            self._stopped = True
            left = list(self._procs.values())
            self._procs.clear()
            self._by_pid.clear()
        for process in left:
            process._finish(KILLED, lost=True)

    def alive(self) -> bool:
        return self._booted and not self._stopped

    def close(self) -> None:
        """Kill everything in the sandbox and remove it (the placeholders, the gateway's session).
        Safe from any thread, more than once (the host kills a wedged sandbox from its own)."""
        with self._close_lock:
            self._close()

    def _close(self) -> None:
        self._closed = True
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # The reader sees EOF; the spawner exits.
            except OSError:
                pass
        self._box.close()  # bubblewrap's pid 1 dies, and every process of its namespace with it.
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(10)
            self._reader = None
        if sock is not None:
            sock.close()
        self._stop()
        self._closing.set()  # The keeper thread ends: nothing of the sandbox is left to die with it.


def _fds(*fds: int) -> bytes:
    import array

    return array.array("i", fds).tobytes()


def _check_request(argv, env, cwd, fds) -> None:
    """Refuse what the caller gave before anything is sent: a clear error, and the session goes on."""
    if isinstance(argv, (str, bytes)) or not isinstance(argv, (list, tuple)) or not argv \
            or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv: expected a non-empty list of strings")
    if env is not None and (not isinstance(env, dict)
                            or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise ValueError("env: expected a table of strings")
    if cwd is not None and (not isinstance(cwd, str) or not cwd.startswith("/")):
        raise ValueError(f"cwd: expected an absolute path inside the sandbox, not {cwd!r}")
    for fd in fds:
        try:
            os.fstat(fd)
        except (OSError, TypeError, OverflowError):
            raise ValueError(f"{fd!r} is not an open descriptor") from None

