"""One command in a service sandbox: its pump (output, exit, timeout, kill), and the checks of a command request."""

from __future__ import annotations

import codecs
import logging
import os
import queue
import secrets
import select
import selectors
import threading
import time

from blastwall.service.errors import Conflict, Unprocessable
from blastwall.tiers._check import KILLED, SandboxStopped

__all__ = ["MOUNT_AT", "Command", "new_id"]

log = logging.getLogger("blastwall.service")

MOUNT_AT = "/home/user"
MAX_ARGV_BYTES = 256 << 10
MAX_ENV_VALUE = 64 << 10
KILL_GRACE = 5.0              # seconds to wait for a killed command's runsc exec
QUIET_AFTER_EXIT = 1.0        # seconds of silence after which a finished command's open pipes are let go
QUIET_AFTER_KILL = 0.1        # the same for a command we killed (its timeout, or a kill): it is over
STDIN_WAIT = 2.0              # seconds a write to a command's stdin may wait for the command to read
SHELL = "/bin/bash"           # what runs a command given as a string (E2B's shell; every image has it)


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


class Command:
    """One command running in a sandbox, pumped by its own thread.

    A streamed command hands its output to ``events`` (a bounded queue: a slow
    reader slows the command down rather than filling the service's memory);
    a background one keeps up to ``cap`` bytes of each stream.  The command
    ends when its Process (tiers/contract.py) says so, not at EOF: a process
    the command left running inside may hold its pipes open.
    """

    def __init__(self, sandbox: "Sandbox", argv: list[str], *, env: dict, cwd: str, timeout: float,
                 stream: bool, cap: int, pid: int = 0, stdin: bool = False, cmd: str | None = None) -> None:
        self.id = new_id("cmd_")
        self.pid = pid  # The sandbox's own number for it (1, 2, ...): E2B's CommandHandle.pid.
        self.sandbox = sandbox
        self.argv = argv
        self.cmd = cmd  # The shell string it was given, if any.
        self.cwd = cwd
        self.envs = dict(env)
        self.started = time.time()
        self.timeout = timeout
        self.cap = cap
        self.events: queue.Queue | None = queue.Queue(maxsize=256) if stream else None
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.truncated = False
        self.exit_code: int | None = None
        self.timed_out = False
        self.killed = False
        self.abandoned = False
        self.sandbox_stopped = False
        self.done = threading.Event()
        self.changed = threading.Condition()  # Notified on new output and at the end (a long poll waits on it).
        self._stdin: int | None = None
        self._stdin_lock = threading.Lock()
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        if stdin:
            in_r, self._stdin = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(self._stdin, False)
        else:
            in_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.process = sandbox.session.exec(argv, env=env, cwd=cwd, stdin=in_r, stdout=out_w, stderr=err_w)
        except BaseException:
            for fd in (out_r, err_r, self._stdin):
                if fd is not None:
                    os.close(fd)
            self._stdin = None
            raise
        finally:
            for fd in (out_w, err_w, in_r):
                os.close(fd)
        self._fds = {out_r: "stdout", err_r: "stderr"}
        self._thread = threading.Thread(target=self._pump, name=f"blastwall-{self.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # The pump: the only reader of the pipes and the only one to collect the exit.
    def _pump(self) -> None:
        decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")}
        selector = selectors.DefaultSelector()
        for fd, name in self._fds.items():
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ, name)
        exit_fd = self.process.exit_fd()
        if exit_fd is not None:
            selector.register(exit_fd, selectors.EVENT_READ, "exit")
        deadline = self.started + self.timeout
        killed_at = None
        try:
            while self.exit_code is None:
                now = time.time()
                if now >= deadline and killed_at is None:
                    self.timed_out = True
                    self.kill()
                if self.killed and killed_at is None:
                    killed_at = now
                if killed_at is not None and now - killed_at > KILL_GRACE:
                    self.process.kill()  # Again: the tier's host side too.
                for key, _mask in selector.select(timeout=0.2):
                    if key.data == "exit":
                        selector.unregister(key.fd)
                        self._try_reap(block=True)
                    elif self._read(key.fd, key.data, decoders) == "eof":
                        selector.unregister(key.fd)
                if exit_fd is None:
                    self._try_reap()
            # The command has exited.  Its output may still be arriving (the
            # sandbox's copies of the pipes close a moment after the exit is
            # reported): read until EOF, or until the pipes stay quiet for
            # QUIET_AFTER_EXIT, for whatever still holds them open (a process
            # the command left running) is not this command.
            quiet = QUIET_AFTER_KILL if self.killed else QUIET_AFTER_EXIT
            hard_stop = time.time() + 5.0
            quiet_until = time.time() + quiet
            while any(key.data != "exit" for key in selector.get_map().values()) and time.time() < hard_stop:
                got = False
                for key, _mask in selector.select(timeout=0.05):
                    if key.data == "exit":
                        selector.unregister(key.fd)
                        continue
                    state = self._read(key.fd, key.data, decoders)
                    if state == "eof":
                        selector.unregister(key.fd)
                    elif state == "data":
                        got = True
                if got:
                    quiet_until = time.time() + quiet
                elif time.time() >= quiet_until:
                    break
            for name, decoder in decoders.items():
                tail = decoder.decode(b"", final=True)
                if tail:
                    self._deliver(name, tail)
        except Exception:  # noqa: BLE001 - the command must still end for its waiters
            log.exception("command %s: output pump failed", self.id)
        finally:
            selector.close()
            for fd in self._fds:
                os.close(fd)
            if self.exit_code is None:
                self.process.kill()  # Again: the tier's host side too.
                self._try_reap(block=True)
            self.process.release()
            self.close_stdin()
            if self.timed_out:
                self.exit_code = 124
            final = {"exit_code": self.exit_code, "timed_out": self.timed_out}
            # 128 and up without our kill: the command was killed, or the whole
            # sandbox went down (a memory bomb takes gVisor with it).  Say which.
            if not self.killed and (self.exit_code or 0) >= 128 and not self.sandbox.check_alive():
                final["sandbox_stopped"] = True
                self.sandbox_stopped = True
            self.sandbox.command_finished(self)
            with self.changed:
                self.done.set()
                self.changed.notify_all()
            self._put(("exit", final))

    def _read(self, fd: int, name: str, decoders) -> str:
        """Read what is there: "data", "empty" (nothing now) or "eof"."""
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return "empty"
        except OSError:
            return "eof"
        if not chunk:
            return "eof"
        self._deliver(name, decoders[name].decode(chunk))
        return "data"

    def _try_reap(self, *, block: bool = False) -> bool:
        if self.exit_code is None:
            try:
                self.exit_code = self.process.wait() if block else self.process.poll()
            except SandboxStopped:
                self.exit_code = KILLED  # The sandbox went down under it (it is found stopped).
        return self.exit_code is not None

    def _deliver(self, name: str, text: str) -> None:
        if self.events is not None:
            self._put((name, text))
            return
        buffer = self.stdout if name == "stdout" else self.stderr
        room = self.cap - len(buffer)
        data = text.encode()
        if len(data) > room:
            self.truncated = True
            # Cut at a character's start, so that any offset a reader was given decodes cleanly.
            data = data[:max(room, 0)].decode("utf-8", "ignore").encode()
        with self.changed:
            buffer.extend(data)
            self.changed.notify_all()

    def _put(self, event) -> None:
        if self.events is None:
            return
        while not self.abandoned:
            try:
                self.events.put(event, timeout=0.5)
                return
            except queue.Full:
                continue

    def kill(self) -> None:
        if self.done.is_set():
            return
        self.killed = True
        try:
            self.process.kill()
        except Exception:  # noqa: BLE001 - the sandbox may be going away
            log.debug("command %s: kill failed", self.id, exc_info=True)

    def abandon(self) -> None:
        """The streaming client went away: stop the command and stop queueing its output."""
        self.abandoned = True
        self.kill()

    # stdin: a background command started with ``stdin=True`` reads what is sent here.
    def send_stdin(self, data: bytes) -> None:
        """Write all of ``data`` to the command's stdin, waiting at most STDIN_WAIT for it to read.  One write
        at a time: another one meanwhile is refused at once (``stdin_full``), never queued behind it."""
        if not self._stdin_lock.acquire(blocking=False):
            raise Conflict("another write to this command's stdin is in progress; send again when it returns",
                           code="stdin_full")
        try:
            if self._stdin is None:
                raise Conflict("this command's stdin is closed (or it was started without stdin=true)",
                               code="stdin_closed")
            view, deadline = memoryview(data), time.monotonic() + STDIN_WAIT
            while view:
                try:
                    view = view[os.write(self._stdin, view):]
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise Conflict(f"the command did not read its stdin for {STDIN_WAIT:g}s",
                                       code="stdin_full") from None
                    select.select([], [self._stdin], [], left)
                except BrokenPipeError:
                    raise Conflict("the command closed its stdin", code="stdin_closed") from None
        finally:
            self._stdin_lock.release()

    def close_stdin(self) -> None:
        with self._stdin_lock:
            if self._stdin is not None:
                os.close(self._stdin)
                self._stdin = None

    def wait(self, timeout: float | None, *, stdout_from: int | None = None, stderr_from: int | None = None) -> bool:
        """Wait until the command ends, or (given offsets) until it has output past them; True if it ended."""
        if stdout_from is None and stderr_from is None:
            return self.done.wait(timeout)
        deadline = time.monotonic() + (timeout or 0)

        def has_new() -> bool:  # Only the streams asked about count.
            return (stdout_from is not None and len(self.stdout) > stdout_from) or \
                (stderr_from is not None and len(self.stderr) > stderr_from)

        with self.changed:
            while not self.done.is_set() and not has_new():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
        return self.done.is_set()

    def status(self, *, stdout_from: int = 0, stderr_from: int = 0) -> dict:
        """What it is now; its output from byte ``stdout_from``/``stderr_from`` on (``*_end``: where that ends)."""
        with self.changed:
            done = self.done.is_set()
            stdout, stderr = bytes(self.stdout[stdout_from:]), bytes(self.stderr[stderr_from:])
            stdout_end, stderr_end = len(self.stdout), len(self.stderr)
        return {"id": self.id, "pid": self.pid, "state": "exited" if done else "running",
                "exit_code": self.exit_code if done else None, "timed_out": self.timed_out,
                "sandbox_stopped": self.sandbox_stopped,
                "stdout": stdout.decode("utf-8", "replace"), "stderr": stderr.decode("utf-8", "replace"),
                "stdout_end": max(stdout_end, stdout_from), "stderr_end": max(stderr_end, stderr_from),
                "truncated": self.truncated, "started_at": self.started}

    def info(self) -> dict:
        """E2B's ProcessInfo: what ``commands.list()`` shows of a running command."""
        shell = self.cmd is not None
        return {"id": self.id, "pid": self.pid, "cmd": self.cmd if shell else self.argv[0],
                "args": [] if shell else self.argv[1:], "cwd": self.cwd, "envs": self.envs,
                "background": self.events is None, "started_at": self.started}


# --- request checks (pure) -----------------------------------------------------------------------

def _argv(cmd) -> list[str]:
    if isinstance(cmd, str):
        argv = [SHELL, "-c", cmd]
    elif isinstance(cmd, list) and cmd and all(isinstance(a, str) for a in cmd):
        argv = list(cmd)
    else:
        raise Unprocessable("cmd: expected a shell command string or a non-empty list of strings",
                            code="invalid_request")
    if any("\x00" in a for a in argv) or sum(len(a.encode()) for a in argv) > MAX_ARGV_BYTES:
        raise Unprocessable("cmd: contains NUL or is longer than 256 KiB", code="invalid_request")
    return argv


def _envs(envs) -> dict[str, str]:
    from blastwall.policy.model import is_env_name

    if envs is None:
        return {}
    if not isinstance(envs, dict) or len(envs) > 256:
        raise Unprocessable("envs: expected a table of at most 256 NAME: value pairs", code="invalid_request")
    for name, value in envs.items():
        if not isinstance(name, str) or not is_env_name(name):
            raise Unprocessable(f"envs: {str(name)[:64]!r} is not an environment variable name",
                                code="invalid_request")
        if not isinstance(value, str) or "\x00" in value or len(value) > MAX_ENV_VALUE:
            raise Unprocessable(f"envs.{name}: expected a string without NUL, at most 64 KiB", code="invalid_request")
    return dict(envs)


def _cwd(cwd) -> str:
    if cwd is None or cwd == "":
        return MOUNT_AT
    if not isinstance(cwd, str) or "\x00" in cwd or len(cwd) > 4096:
        raise Unprocessable("cwd: expected a path", code="invalid_request")
    path = cwd if cwd.startswith("/") else f"{MOUNT_AT}/{cwd}"
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Unprocessable("cwd: no '..' components", code="invalid_request")
    return "/" + "/".join(parts)
