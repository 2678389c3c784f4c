"""The local backend: a workspace on this machine and one session of the policy's tier over it.

The session (tiers/contract.py) is booted on the first command and kept for
the next ones until ``kill()``, in every tier: commands share the sandbox's
``/tmp`` and processes (a server started by one is reached by the next), as
with the remote backend.  Output reaches ``on_stdout``/``on_stderr`` as it
comes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time

from blastwall.client._errors import CommandResult, InvalidRequestError, SandboxFileError, error_for

__all__ = ["LocalBackend", "LocalCommand", "live_backend", "live_backends"]


def _layer(tier, allow_domains, policy, resources):
    """The SDK's arguments as one policy layer above the user's file."""
    from blastwall.policy.load import parse_toml
    from blastwall.policy.model import merge, parse_layer

    layers = []
    if policy:
        document = parse_toml(policy, "policy argument") if isinstance(policy, str) else policy
        layers.append(parse_layer(document, "policy argument"))
    doc: dict = {}
    if tier:
        doc["sandbox"] = {"tier": tier}
    if allow_domains:
        doc["network"] = {"allow": list(allow_domains)}
    if resources:
        doc["resources"] = dict(resources)
    layers.append(parse_layer(doc, "sdk", extend_lists=True))
    return layers, merge


MAX_FINISHED_KEPT = 64  # finished background commands a sandbox remembers (for connect and their output)

_LIVE: dict[str, "LocalBackend"] = {}  # This process's local sandboxes, by id: Sandbox.list/connect.
_LIVE_LOCK = threading.Lock()


def live_backends() -> list["LocalBackend"]:
    with _LIVE_LOCK:
        return list(_LIVE.values())


def live_backend(sandbox_id: str) -> "LocalBackend":
    from blastwall.client._errors import SandboxNotFoundError

    with _LIVE_LOCK:
        backend = _LIVE.get(sandbox_id)
    if backend is None:
        raise SandboxNotFoundError(f"no local sandbox {sandbox_id[:64]!r} in this process (a local sandbox lives "
                                   "in the process that made it; use api_url for a service's)",
                                   code="sandbox_not_found")
    return backend


class LocalCommand:
    """One command of a local sandbox: run in the caller's thread (``execute``) or in its own (``start``).

    Its output is kept as it comes (for ``poll``: a background handle's
    iteration) and handed to the callbacks; ``kill`` stops it.
    """

    def __init__(self, backend: "LocalBackend", pid: int, cmd, cwd: str, envs) -> None:
        self.backend, self.pid, self.cmd, self.cwd, self.envs = backend, pid, cmd, cwd, dict(envs or {})
        self.id = f"{backend.sandbox_id}/{pid}"
        self.background = False
        self.started = time.time()
        self._process = None
        self._killed = False
        self._stdin: int | None = None
        self._chunks: list[tuple[str, str]] = []  # (stream, text), kept for its followers (background only)
        self._changed = threading.Condition()
        self._result: CommandResult | None = None
        self._error: BaseException | None = None
        self.done = threading.Event()

    # -- running ------------------------------------------------------------------------------------
    def execute(self, timeout: float, *, stdin: bool = False, on_stdout=None, on_stderr=None) -> CommandResult:
        try:
            result = self.backend._run(self, timeout, stdin, {"stdout": self._sink("stdout", on_stdout),
                                                              "stderr": self._sink("stderr", on_stderr)})
        except BaseException as exc:
            with self._changed:
                self._error = exc
                self.done.set()
                self._changed.notify_all()
            raise
        finally:
            self.backend._finished(self)
        with self._changed:
            self._result = result
            self.done.set()
            self._changed.notify_all()
        return result

    def start(self, timeout: float, *, stdin: bool) -> "_Follower":
        self.background = True
        started = threading.Event()
        self._on_started = started.set

        def run() -> None:
            try:
                self.execute(timeout, stdin=stdin)
            except BaseException:  # noqa: BLE001 - kept in _error for poll()
                pass
            finally:
                started.set()

        threading.Thread(target=run, name=f"blastwall-sdk-{self.id}", daemon=True).start()
        started.wait()  # Running (or failed to start) when start() returns: its stdin can be written to.
        if self._error is not None and self._process is None:
            raise self._error
        return _Follower(self)

    def _sink(self, name: str, callback):
        def sink(text: str) -> None:
            if self.background:
                with self._changed:
                    self._chunks.append((name, text))
                    self._changed.notify_all()
            if callback:
                callback(text)

        return sink

    def running(self, process, stdin: int | None) -> None:
        """The tier started it: ``process``, and the write end of its stdin (or None)."""
        self._process, self._stdin = process, stdin
        if self._killed:
            process.kill()
        on_started = getattr(self, "_on_started", None)
        if on_started:
            on_started()

    # -- a background handle's verbs (a _Follower reads its output) ------------------------------
    def kill(self) -> bool:
        running = not self.done.is_set() and not self._killed
        self._killed = True
        if self._process is not None:
            self._process.kill()
        return running

    def send_stdin(self, data: bytes) -> None:
        from blastwall.client._errors import CommandStdinError

        fd = self._stdin
        if fd is None:
            raise CommandStdinError("this command's stdin is closed (or it was started without stdin=True)",
                                    code="stdin_closed")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            raise CommandStdinError("the command closed its stdin", code="stdin_closed") from None

    def close_stdin(self) -> None:
        fd, self._stdin = self._stdin, None
        if fd is not None:
            os.close(fd)

    def info(self) -> dict:
        shell = isinstance(self.cmd, str)
        return {"pid": self.pid, "cmd": self.cmd if shell else self.cmd[0], "args": [] if shell else self.cmd[1:],
                "cwd": self.cwd, "envs": self.envs}


class _Follower:
    """A reader of a background command's output from its start: the handle ``start`` gives, or another one
    (``commands.connect(pid)``)."""

    def __init__(self, command: LocalCommand) -> None:
        self._command, self._cursor = command, 0
        self.id, self.pid = command.id, command.pid

    def poll(self, wait: float):
        command = self._command
        with command._changed:
            if self._cursor >= len(command._chunks) and not command.done.is_set():
                command._changed.wait(wait)
            new, self._cursor = command._chunks[self._cursor:], len(command._chunks)
            done = command.done.is_set() and self._cursor >= len(command._chunks)
        if done and command._error is not None:
            raise command._error
        stdout = "".join(text for name, text in new if name == "stdout")
        stderr = "".join(text for name, text in new if name == "stderr")
        return stdout, stderr, command._result if done else None

    def kill(self) -> bool:
        return self._command.kill()

    def send_stdin(self, data: bytes) -> None:
        self._command.send_stdin(data)

    def close_stdin(self) -> None:
        self._command.close_stdin()


class LocalBackend:
    """A workspace plus a policy; commands run in one session of the policy's tier, booted on first use."""

    def __init__(self, workspace: str, policy, *, owns_workspace: bool, environ, metadata=None) -> None:
        self.workspace = workspace
        self.policy = policy
        self.sandbox_id = os.path.basename(workspace)
        self.metadata = dict(metadata or {})
        self.created = time.time()
        self.expires: float | None = None
        self._owns = owns_workspace
        self._environ = environ
        self._session = None  # Booted on the first command, kept until kill().
        self._session_lock = threading.Lock()
        self._commands: dict[int, LocalCommand] = {}
        self._next_pid = 1
        self._timer: threading.Timer | None = None
        self._killed = False
        self._network: tuple[list[str], list[str]] | None = None  # update_network's, for every session booted

    @classmethod
    def create(cls, *, tier=None, policy_file=None, workspace=None, allow_domains=(), policy=None, resources=None,
               environ=None, ttl: int | None = None, metadata=None) -> "LocalBackend":
        from blastwall.policy.load import user_layers

        environ = dict(os.environ if environ is None else environ)
        # As api.load(): the user's file (or ``policy_file``), then the SDK's
        # arguments; the workspace's own project policy is never read here.
        layers, merge = _layer(tier, allow_domains, policy, resources)
        merged = merge([*user_layers(policy_file, environ=environ), *layers])
        owns = workspace is None
        backend = cls(cls._workspace(workspace, environ), merged, owns_workspace=owns, environ=environ,
                      metadata=metadata)
        with _LIVE_LOCK:
            _LIVE[backend.sandbox_id] = backend
        if ttl is not None:
            backend.set_timeout(ttl)
        return backend

    @staticmethod
    def _workspace(workspace, environ) -> str:
        if workspace is None:
            from blastwall.policy.load import cache_dir

            base = os.path.join(cache_dir(environ), "sandboxes")
            os.makedirs(base, mode=0o700, exist_ok=True)
            workspace = tempfile.mkdtemp(prefix="sbx-", dir=base)
        return os.path.realpath(workspace)

    # -- commands -------------------------------------------------------------------------------
    def _cwd(self, cwd) -> str:
        """Relative: under the workspace.  Absolute: as given (inside the sandbox, which decides)."""
        if not cwd:
            return self.workspace
        if cwd.startswith("/"):
            if "\x00" in cwd or ".." in cwd.split("/"):
                raise SandboxFileError(f"Can't use {cwd[:200]!r} as the working directory", code="invalid_path")
            return os.path.normpath(cwd)
        from blastwall.errors import FileError
        from blastwall.tiers.files import split_relative

        try:
            return os.path.join(self.workspace, *split_relative(cwd))
        except FileError as exc:
            raise SandboxFileError(f"Can't use {cwd!r} as the working directory: {exc.message}",
                                   code="invalid_path") from None

    def _new(self, cmd, cwd, envs) -> LocalCommand:
        with self._session_lock:
            command = LocalCommand(self, self._next_pid, cmd, self._cwd(cwd), envs)
            self._commands[command.pid] = command
            self._next_pid += 1
        return command

    def _finished(self, command: LocalCommand) -> None:
        with self._session_lock:
            if not command.background:
                self._commands.pop(command.pid, None)  # A foreground command's caller has its output.
            finished = [pid for pid, c in self._commands.items() if c.done.is_set() or c is command]
            for pid in finished[:-MAX_FINISHED_KEPT] if len(finished) > MAX_FINISHED_KEPT else []:
                self._commands.pop(pid, None)

    def run(self, cmd, *, timeout: float, envs, cwd, on_stdout=None, on_stderr=None) -> CommandResult:
        return self._new(cmd, cwd, envs).execute(timeout, on_stdout=on_stdout, on_stderr=on_stderr)

    def start(self, cmd, *, timeout: float, envs, cwd, stdin: bool = False) -> "_Follower":
        return self._new(cmd, cwd, envs).start(timeout, stdin=stdin)

    def commands(self) -> list[dict]:
        with self._session_lock:
            running = [c for c in self._commands.values() if not c.done.is_set()]
        return [c.info() for c in sorted(running, key=lambda c: c.pid)]

    def _command(self, pid: int) -> LocalCommand:
        from blastwall.client._errors import NotFoundException

        with self._session_lock:
            command = self._commands.get(pid)
        if command is None:
            raise NotFoundException(f"no command {pid} in this sandbox", code="command_not_found")
        return command

    def connect_command(self, pid: int):
        command = self._command(pid)
        if not command.background:
            from blastwall.client._errors import NotFoundException

            raise NotFoundException(f"command {pid} is not a background command (its caller reads its output)",
                                    code="command_not_found")
        return _Follower(command)

    def kill_command(self, pid: int) -> bool:
        return self._command(pid).kill()

    def _live_session(self):
        """The sandbox's session, booted on first use (again if it stopped); its policy is fixed at boot."""
        from blastwall import api

        with self._session_lock:
            if self._killed:
                from blastwall.client._errors import SandboxClosedError

                raise SandboxClosedError("this sandbox was killed (its timeout passed, or kill())")
            if self._session is not None and self._session.alive():
                # Compiled at boot; the host may have changed since (a hooksPath set, a submodule added).
                # A session that no longer protects what a plan compiled now would is replaced.
                now = api.plan_for(self.policy, workspace=self.workspace, cwd=self.workspace, environ=self._environ)
                if self._session.plan.still_covers(now):
                    return self._session
            if self._session is not None:
                self._session.close()
                self._session = None
            session = api.session(self.policy, workspace=self.workspace, environ=self._environ,
                                  label=self.sandbox_id)
            try:
                session.prepare()
                session.boot()
            except BaseException:
                session.close()
                raise
            if self._network is not None:
                session.update_network(*self._network)
            self._session = session
            return session

    def _run(self, command: LocalCommand, timeout: float, stdin: bool, sinks) -> CommandResult:
        cmd = command.cmd
        argv = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        session = self._live_session()
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        if stdin:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
        else:
            in_r, in_w = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), None
        try:
            process = session.exec(argv, env=command.envs, cwd=command.cwd, stdin=in_r, stdout=out_w, stderr=err_w)
        except BaseException:
            for fd in (out_r, err_r, in_w):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w, in_r):
                os.close(fd)
        command.running(process, in_w)
        try:
            status, timed_out, output = _pump(process, {out_r: "stdout", err_r: "stderr"}, timeout, sinks)
        finally:
            command.close_stdin()
            process.release()
        return CommandResult(output["stdout"], output["stderr"], 124 if timed_out else status, timed_out=timed_out)

    # -- files ------------------------------------------------------------------------------------
    def _files(self):
        """The sandbox's files, held to a plan compiled now: what exists decides what is protected."""
        from blastwall import api
        from blastwall.tiers.files import Files

        return Files(api.plan_for(self.policy, workspace=self.workspace, cwd=self.workspace, environ=self._environ))

    def _relative(self, path: str) -> str:
        """A files path as the tier's file tools take it: relative to the workspace (absolute under it too)."""
        if path == self.workspace or path.startswith(self.workspace + "/"):
            return path[len(self.workspace) + 1:]
        return path

    def _entry(self, entry) -> dict:
        """A file's description: its path as a command in this sandbox names it."""
        data = entry.as_dict()
        data["path"] = os.path.join(self.workspace, entry.path) if entry.path else self.workspace
        return data

    def _do(self, operation):
        from blastwall.errors import FileError, PathRefused

        try:
            return operation(self._files())
        except PathRefused as exc:
            raise SandboxFileError(exc.message, code="path_refused",
                                   details=[{"reason": str(exc.reason), "state": exc.state, "path": exc.path}]) from None
        except FileError as exc:
            raise error_for(0, _LOCAL_CODES.get(exc.code, "invalid_path"), exc.message, files=True) from None

    def write(self, path: str, data: bytes) -> dict:
        path = self._relative(path)

        def write(files) -> dict:
            files.write(path, data)
            return self._entry(files.stat(path))

        return self._do(write)

    def read(self, path: str) -> bytes:
        path = self._relative(path)
        return self._do(lambda files: files.read(path))

    def read_stream(self, path: str):
        data = self.read(path)  # Checked now, as the remote backend's request is.
        return iter([data[i:i + (1 << 16)] for i in range(0, len(data), 1 << 16)] or [b""])

    def list(self, path: str) -> list[dict]:
        path = self._relative(path)
        return self._do(lambda files: [self._entry(entry) for entry in files.list(path)[0]])

    def stat(self, path: str) -> dict:
        path = self._relative(path)
        return self._do(lambda files: self._entry(files.stat(path)))

    def make_dir(self, path: str) -> bool:
        path = self._relative(path)
        return self._do(lambda files: files.make_dir(path))

    def remove(self, path: str) -> None:
        path = self._relative(path)
        self._do(lambda files: files.remove(path))

    def rename(self, source: str, target: str) -> dict:
        source, target = self._relative(source), self._relative(target)

        def rename(files) -> dict:
            files.rename(source, target)
            return self._entry(files.stat(target))

        return self._do(rename)

    # -- life ---------------------------------------------------------------------------------------
    def describe(self) -> dict:
        from blastwall.client._errors import SandboxNotFoundError

        if self._killed:
            raise SandboxNotFoundError(f"the sandbox {self.sandbox_id} was killed", code="sandbox_not_found")
        return {"id": self.sandbox_id, "state": "running", "image": self.policy.sandbox.image,
                "tier": self.policy.sandbox.tier, "created_at": self.created, "expires_at": self.expires,
                "metadata": dict(self.metadata), "workdir": self.workspace}

    def update_network(self, allow, deny) -> None:
        """The user's own sandbox: any change is theirs to make (there is no tenant ceiling here)."""
        from blastwall.errors import ContainmentError

        session = self._live_session()
        current = self._network or ([h for h in self.policy.network.allow], [])
        new = (current[0] if allow is None else allow, [*current[1], *(deny or [])])
        try:
            session.update_network(*new)
        except ContainmentError as exc:
            raise InvalidRequestError(str(exc)) from None
        except ValueError as exc:
            raise InvalidRequestError(f"update_network: {exc}") from None
        self._network = new

    def set_timeout(self, ttl: int) -> None:
        """Killed ``ttl`` seconds from now (replacing any timeout set before)."""
        with self._session_lock:
            if self._timer is not None:
                self._timer.cancel()
            self.expires = time.time() + ttl
            self._timer = threading.Timer(ttl, self.kill)
            self._timer.daemon = True
            self._timer.start()

    def kill(self) -> bool:
        with self._session_lock:
            if self._killed:
                return False
            self._killed = True
            if self._timer is not None:
                self._timer.cancel()
            session, self._session = self._session, None
            commands = list(self._commands.values())
        with _LIVE_LOCK:
            _LIVE.pop(self.sandbox_id, None)
        for command in commands:
            command.kill()
        if session is not None:
            session.close()
        if self._owns:
            shutil.rmtree(self.workspace, ignore_errors=True)
        return True


# FileError codes -> the codes the service answers with, so both backends raise alike.
_LOCAL_CODES = {"not_found": "file_not_found", "exists": "file_exists", "too_large": "payload_too_large",
                "no_space": "no_space"}


QUIET_AFTER_EXIT = 0.5  # Seconds a finished command's pipes may stay open (a process it left) before we stop reading.
DRAIN_AFTER_EXIT = 2.0  # At most this long after the exit, however much a process it left keeps writing.
MAX_KEPT = 64 << 20  # Bytes of each stream kept for the result (the callbacks get all of it).


def _pump(process, fds: dict[int, str], timeout: float, sinks: dict) -> tuple[int, bool, dict[str, str]]:
    """Read ``fds`` until ``process`` ends (killing it at ``timeout``); (status, timed out, output by name)."""
    import codecs
    import selectors
    import time

    from blastwall.tiers._check import KILLED, SandboxStopped

    decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in fds.values()}
    output = {name: [] for name in fds.values()}
    kept = {name: 0 for name in fds.values()}

    def deliver(name: str, data: bytes, final: bool = False) -> None:
        text = decoders[name].decode(data, final=final)
        if text:
            if kept[name] < MAX_KEPT:
                output[name].append(text[:MAX_KEPT - kept[name]])
                kept[name] += len(text)
            if sinks.get(name):
                sinks[name](text)

    selector = selectors.DefaultSelector()
    for fd, name in fds.items():
        selector.register(fd, selectors.EVENT_READ, name)
    exit_fd = process.exit_fd()
    if exit_fd is not None:
        selector.register(exit_fd, selectors.EVENT_READ, None)
    deadline = time.monotonic() + timeout
    timed_out = False
    quiet_until = hard_stop = None
    try:
        while True:
            status = process.poll()
            now = time.monotonic()
            if status is not None:
                quiet_until = quiet_until or now + QUIET_AFTER_EXIT
                hard_stop = hard_stop or now + DRAIN_AFTER_EXIT
                if now >= min(quiet_until, hard_stop) or all(key.data is None for key in selector.get_map().values()):
                    break
            elif now >= deadline and not timed_out:
                timed_out = True
                process.kill()
                deadline = now + 10.0  # Then the host side of it too.
            elif now >= deadline:
                process.kill()  # Again: the tier kills its host side (the process tier: the whole sandbox).
                deadline = now + 10.0
            wait = 0.2 if status is None else max(0.0, min(quiet_until, hard_stop) - now)
            for key, _ in selector.select(timeout=min(wait, max(0.0, deadline - now) + 0.01)):
                if key.data is None:
                    selector.unregister(key.fd)  # Ended: poll() says how.
                    continue
                try:
                    chunk = os.read(key.fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                deliver(key.data, chunk)
                if status is not None:
                    quiet_until = time.monotonic() + QUIET_AFTER_EXIT
    finally:
        selector.close()
        for fd in fds:
            os.close(fd)
    for name in decoders:
        deliver(name, b"", final=True)
    try:
        status = process.wait()
    except SandboxStopped:
        status = KILLED  # The sandbox went down under it: what it wrote until then is still its output.
    return status, timed_out, {name: "".join(parts) for name, parts in output.items()}
