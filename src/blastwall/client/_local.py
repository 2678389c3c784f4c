"""The local backend: a workspace on this machine; each command in a new sandbox of the policy's tier.

The VM tier is the exception: one VM per SDK sandbox, booted on the first
command and kept warm for the next ones until ``kill()``.
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

    def result(self, timeout: float | None) -> CommandResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the command is still running")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def kill(self) -> None:
        if self._box is not None:
            self._box.kill()


class LocalBackend:
    """A workspace plus a policy; every command runs in its own sandbox of the policy's tier."""

    def __init__(self, workspace: str, policy, *, owns_workspace: bool, environ) -> None:
        self.workspace = workspace
        self.policy = policy
        self.sandbox_id = os.path.basename(workspace)
        self._owns = owns_workspace
        self._environ = environ
        self._vm = None  # The VM tier: one VM for the SDK sandbox, kept warm between commands.
        self._vm_lock = threading.Lock()

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
    def _argv_and_cwd(self, cmd, envs, cwd) -> tuple[list[str], str]:
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if envs:
            argv = ["env", *[f"{k}={v}" for k, v in envs.items()], *argv]
        workdir = self.workspace
        if cwd:
            from blastwall.errors import FileError
            from blastwall.tiers.files import split_relative

            try:
                workdir = os.path.join(self.workspace, *split_relative(cwd))
            except FileError as exc:
                raise SandboxFileError(f"Can't use {cwd!r} as the working directory: {exc.message}",
                                       code="invalid_path") from None
        return argv, workdir

    def run(self, cmd, *, timeout: float, envs, cwd, on_stdout=None, on_stderr=None) -> CommandResult:
        argv, workdir = self._argv_and_cwd(cmd, envs, cwd)
        result = self._run(argv, workdir, timeout, None)
        # The local backend has the output only at the end.
        if on_stdout and result.stdout:
            on_stdout(result.stdout)
        if on_stderr and result.stderr:
            on_stderr(result.stderr)
        return result

    def start(self, cmd, *, timeout: float, envs, cwd) -> LocalCommandHandle:
        argv, workdir = self._argv_and_cwd(cmd, envs, cwd)
        return LocalCommandHandle(lambda handle: self._run(argv, workdir, timeout, handle))

    def _run(self, argv: list[str], cwd: str, timeout: float, handle) -> CommandResult:
        from blastwall import api

        if self.policy.sandbox.tier == "vm":
            return self._run_in_vm(argv, cwd, timeout, handle)

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

    def _warm_vm(self):
        """The sandbox's VM, booted on first use (again if it stopped); its policy is fixed at boot."""
        from blastwall import api
        from blastwall.tiers.vm import VmSandbox
        from blastwall.tiers.vm.session import VmSession

        with self._vm_lock:
            if self._vm is not None and self._vm.alive():
                return self._vm
            if self._vm is not None:
                self._vm.close()
                self._vm = None
            VmSandbox.recover(environ=self._environ)
            plan = api.plan_for(self.policy, workspace=self.workspace, cwd=self.workspace, environ=self._environ)
            vm = VmSession(plan, image=self.policy.sandbox.image, environ=self._environ, workspace=self.workspace,
                           mount_at=self.workspace, label=self.sandbox_id)
            vm.boot()
            self._vm = vm
            return vm

    def _run_in_vm(self, argv: list[str], cwd: str, timeout: float, handle) -> CommandResult:
        vm = self._warm_vm()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            command = vm.exec(argv, cwd=cwd, stdout=out.fileno(), stderr=err.fileno())
            if handle is not None:
                handle._box = command
            try:
                status = command.wait(timeout)
            except TimeoutError:
                command.kill()
                command.wait(30)
                status = 124
            out.seek(0)
            err.seek(0)
            return CommandResult(out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"), status)

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
        with self._vm_lock:
            if self._vm is not None:
                self._vm.close()
                self._vm = None
        if self._owns:
            shutil.rmtree(self.workspace, ignore_errors=True)


# FileError codes -> the codes the service answers with, so both backends raise alike.
_LOCAL_CODES = {"not_found": "file_not_found", "exists": "file_exists", "too_large": "payload_too_large",
                "no_space": "no_space"}
