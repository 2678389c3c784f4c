"""The synchronous SDK over a local, in-process backend."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

from blastwall.client import _files

__all__ = ["CommandExitError", "CommandHandle", "CommandResult", "Sandbox", "SandboxClosedError", "SandboxFileError"]


class CommandResult:
    __slots__ = ("stdout", "stderr", "exit_code")

    def __init__(self, stdout: str, stderr: str, exit_code: int) -> None:
        self.stdout, self.stderr, self.exit_code = stdout, stderr, exit_code

    def __repr__(self) -> str:
        return f"CommandResult(exit_code={self.exit_code}, stdout={self.stdout[:60]!r}, stderr={self.stderr[:60]!r})"


class CommandExitError(Exception):
    """The command ran and exited non-zero (or timed out: exit_code 124)."""

    def __init__(self, result: CommandResult) -> None:
        super().__init__(f"command exited with status {result.exit_code}: {result.stderr.strip()[:200]}")
        self.result = result
        self.stdout, self.stderr, self.exit_code = result.stdout, result.stderr, result.exit_code


class SandboxClosedError(Exception):
    """The sandbox was closed; create another."""


class SandboxFileError(Exception):
    """A file path outside the workspace, a link, a missing or oversized file."""


def _sdk_layer(tier: str | None, allow_domains):
    from blastwall.policy.model import parse_layer

    doc: dict = {}
    if tier:
        doc["sandbox"] = {"tier": tier}
    if allow_domains:
        doc["network"] = {"allow": list(allow_domains)}
    return parse_layer(doc, "sdk", extend_lists=True)


class CommandHandle:
    """A background command: ``wait()`` for its result, ``kill()`` to stop it."""

    def __init__(self, runner) -> None:
        self._box = None
        self._result: CommandResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(runner,), daemon=True)
        self._thread.start()

    def _run(self, runner) -> None:
        try:
            self._result = runner(self)
        except BaseException as exc:  # noqa: BLE001 - handed to wait()
            self._error = exc

    def wait(self, timeout: float | None = None) -> CommandResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the command is still running")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        if self._result.exit_code != 0:
            raise CommandExitError(self._result)
        return self._result

    def kill(self) -> None:
        if self._box is not None:
            self._box.kill()


class Commands:
    def __init__(self, sandbox: "Sandbox") -> None:
        self._sandbox = sandbox

    def run(self, cmd, *, timeout: float = 60.0, envs: dict[str, str] | None = None, cwd: str | None = None,
            background: bool = False):
        """Run ``cmd`` (a shell string or an argv list) in a new sandbox over the workspace."""
        sandbox = self._sandbox
        sandbox._check_open()
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if envs:
            for name in envs:
                if not name or not all(c.isalnum() or c == "_" for c in name) or name[0].isdigit():
                    raise ValueError(f"{name!r} is not an environment variable name")
            argv = ["env", *[f"{k}={v}" for k, v in envs.items()], *argv]
        workdir = sandbox.workspace
        if cwd:
            workdir = os.path.join(sandbox.workspace, *_files.split_relative(cwd))

        def runner(handle=None) -> CommandResult:
            return sandbox._run(argv, workdir, timeout, handle)

        if background:
            return CommandHandle(runner)
        result = runner()
        if result.exit_code != 0:
            raise CommandExitError(result)
        return result


class Files:
    def __init__(self, sandbox: "Sandbox") -> None:
        self._sandbox = sandbox

    def write(self, path: str, data) -> None:
        self._sandbox._check_open()
        payload = data.encode() if isinstance(data, str) else bytes(data)
        try:
            _files.write(self._sandbox.workspace, path, payload)
        except (OSError, ValueError) as exc:
            raise SandboxFileError(f"Can't write {path!r}: {getattr(exc, 'strerror', None) or exc}") from None

    def read(self, path: str, format: str = "text"):  # noqa: A002 - E2B's argument name
        self._sandbox._check_open()
        try:
            data = _files.read(self._sandbox.workspace, path)
        except (OSError, ValueError) as exc:
            raise SandboxFileError(f"Can't read {path!r}: {getattr(exc, 'strerror', None) or exc}") from None
        return data if format == "bytes" else data.decode("utf-8", "replace")


class Sandbox:
    """A workspace plus a policy; every command runs in its own sandbox of the policy's tier."""

    def __init__(self, workspace: str, policy, *, owns_workspace: bool, environ) -> None:
        self.workspace = workspace
        self.policy = policy
        self._owns = owns_workspace
        self._environ = environ
        self._closed = False
        self.commands = Commands(self)
        self.files = Files(self)

    @classmethod
    def create(cls, *, tier: str | None = None, policy_file: str | None = None, workspace: str | None = None,
               allow_domains=(), environ=None) -> "Sandbox":
        """A sandbox over ``workspace`` (default: a new private directory, removed at close)."""
        from blastwall import api

        environ = dict(os.environ if environ is None else environ)
        policy = api.load(policy_file, flags=_sdk_layer(tier, allow_domains), environ=environ)
        owns = workspace is None
        if owns:
            from blastwall.policy.load import cache_dir

            base = os.path.join(cache_dir(environ), "sandboxes")
            os.makedirs(base, mode=0o700, exist_ok=True)
            workspace = tempfile.mkdtemp(prefix="sbx-", dir=base)
        return cls(os.path.realpath(workspace), policy, owns_workspace=owns, environ=environ)

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxClosedError("this sandbox is closed")

    def _run(self, argv: list[str], cwd: str, timeout: float, handle) -> CommandResult:
        from blastwall import api

        box = api.sandbox(self.policy, workspace=self.workspace, cwd=cwd, environ=self._environ)
        if handle is not None:
            handle._box = box
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            box.kill()

        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            timer = threading.Timer(timeout, expire)
            devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            try:
                box.prepare()
                box.start(argv, stdin=devnull, stdout=out.fileno(), stderr=err.fileno())
                timer.start()
                status = box.wait()
            finally:
                timer.cancel()
                os.close(devnull)
                box.close()
            timed_out = expired.is_set()
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode("utf-8", "replace")
            stderr = err.read().decode("utf-8", "replace")
        return CommandResult(stdout, stderr, 124 if timed_out else status)

    def kill(self) -> None:
        """Destroy the sandbox: its private workspace goes with it."""
        if self._closed:
            return
        self._closed = True
        if self._owns:
            shutil.rmtree(self.workspace, ignore_errors=True)

    close = kill

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
