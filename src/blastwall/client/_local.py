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

from blastwall.client._errors import CommandResult, SandboxFileError

__all__ = ["LocalBackend", "LocalCommandHandle"]


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


class LocalCommandHandle:
    """A background command: ``wait()`` for its result, ``kill()`` to stop it."""

    def __init__(self, runner) -> None:
        self._process = None
        self._killed = False
        self._result: CommandResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(runner,), daemon=True)
        self._thread.start()

    def _run(self, runner) -> None:
        try:
            self._result = runner(self)
        except BaseException as exc:  # noqa: BLE001 - handed to wait()
            self._error = exc

    def started(self, process) -> None:
        self._process = process
        if self._killed:
            process.kill()

    def result(self, timeout: float | None) -> CommandResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the command is still running")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def kill(self) -> None:
        self._killed = True
        if self._process is not None:
            self._process.kill()


class LocalBackend:
    """A workspace plus a policy; every command runs in its own sandbox of the policy's tier."""

    def __init__(self, workspace: str, policy, *, owns_workspace: bool, environ) -> None:
        self.workspace = workspace
        self.policy = policy
        self.sandbox_id = os.path.basename(workspace)
        self._owns = owns_workspace
        self._environ = environ
        self._session = None  # Booted on the first command, kept until kill().
        self._session_lock = threading.Lock()

    @classmethod
    def create(cls, *, tier=None, policy_file=None, workspace=None, allow_domains=(), policy=None, resources=None,
               environ=None) -> "LocalBackend":
        from blastwall.policy.load import user_layers

        environ = dict(os.environ if environ is None else environ)
        # As api.load(): the user's file (or ``policy_file``), then the SDK's
        # arguments; the workspace's own project policy is never read here.
        layers, merge = _layer(tier, allow_domains, policy, resources)
        merged = merge([*user_layers(policy_file, environ=environ), *layers])
        owns = workspace is None
        return cls(cls._workspace(workspace, environ), merged, owns_workspace=owns, environ=environ)

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
        if not cwd:
            return self.workspace
        from blastwall.errors import FileError
        from blastwall.tiers.files import split_relative

        try:
            return os.path.join(self.workspace, *split_relative(cwd))
        except FileError as exc:
            raise SandboxFileError(f"Can't use {cwd!r} as the working directory: {exc.message}",
                                   code="invalid_path") from None

    def run(self, cmd, *, timeout: float, envs, cwd, on_stdout=None, on_stderr=None) -> CommandResult:
        return self._run(cmd, envs, self._cwd(cwd), timeout, None, on_stdout, on_stderr)

    def start(self, cmd, *, timeout: float, envs, cwd) -> LocalCommandHandle:
        workdir = self._cwd(cwd)
        return LocalCommandHandle(lambda handle: self._run(cmd, envs, workdir, timeout, handle, None, None))

    def _live_session(self):
        """The sandbox's session, booted on first use (again if it stopped); its policy is fixed at boot."""
        from blastwall import api

        with self._session_lock:
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
            self._session = session
            return session

    def _run(self, cmd, envs, cwd: str, timeout: float, handle, on_stdout, on_stderr) -> CommandResult:
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        session = self._live_session()
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            process = session.exec(argv, env=dict(envs or {}), cwd=cwd, stdin=devnull, stdout=out_w, stderr=err_w)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            for fd in (out_w, err_w, devnull):
                os.close(fd)
        if handle is not None:
            handle.started(process)
        sinks = {"stdout": on_stdout, "stderr": on_stderr}
        try:
            status, timed_out, output = _pump(process, {out_r: "stdout", err_r: "stderr"}, timeout, sinks)
        finally:
            process.release()
        return CommandResult(output["stdout"], output["stderr"], 124 if timed_out else status)

    # -- files ------------------------------------------------------------------------------------
    def _files(self):
        """The sandbox's files, held to a plan compiled now: what exists decides what is protected."""
        from blastwall import api
        from blastwall.tiers.files import Files

        return Files(api.plan_for(self.policy, workspace=self.workspace, cwd=self.workspace, environ=self._environ))

    def _do(self, operation):
        from blastwall.errors import FileError, PathRefused

        try:
            return operation(self._files())
        except PathRefused as exc:
            raise SandboxFileError(exc.message, code="path_refused",
                                   details=[{"reason": str(exc.reason), "state": exc.state, "path": exc.path}]) from None
        except FileError as exc:
            raise SandboxFileError(exc.message, code=_LOCAL_CODES.get(exc.code, "invalid_path")) from None

    def write(self, path: str, data: bytes) -> dict:
        def write(files) -> dict:
            files.write(path, data)
            return files.stat(path).as_dict()

        return self._do(write)

    def read(self, path: str) -> bytes:
        return self._do(lambda files: files.read(path))

    def list(self, path: str) -> list[dict]:
        return self._do(lambda files: [entry.as_dict() for entry in files.list(path)[0]])

    def stat(self, path: str) -> dict:
        return self._do(lambda files: files.stat(path).as_dict())

    def make_dir(self, path: str) -> bool:
        return self._do(lambda files: files.make_dir(path))

    def remove(self, path: str) -> None:
        self._do(lambda files: files.remove(path))

    def rename(self, source: str, target: str) -> dict:
        def rename(files) -> dict:
            files.rename(source, target)
            return files.stat(target).as_dict()

        return self._do(rename)

    # -- life ---------------------------------------------------------------------------------------
    def kill(self) -> None:
        with self._session_lock:
            if self._session is not None:
                self._session.close()
                self._session = None
        if self._owns:
            shutil.rmtree(self.workspace, ignore_errors=True)


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
