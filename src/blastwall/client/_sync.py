"""The synchronous SDK: one front (``Sandbox``, ``commands``, ``files``) over two backends.

The front holds what does no I/O (argument checks, the non-zero-exit rule);
``_local.LocalBackend`` and ``_remote.RemoteBackend`` do the work.
"""

from __future__ import annotations

import os

from blastwall.client._errors import (CommandExitError, CommandResult, EntryInfo, InvalidRequestError,
                                      SandboxClosedError, SandboxFileError)

__all__ = ["UNSET", "CommandHandle", "Sandbox"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()  # "not given": look in the environment.  None means "no": the local backend.


def _check_envs(envs) -> None:
    from blastwall.policy.model import is_env_name

    if envs is None:
        return
    if not isinstance(envs, dict):
        raise InvalidRequestError("envs: expected a dict of NAME: value")
    for name, value in envs.items():
        if not isinstance(name, str) or not is_env_name(name):
            raise InvalidRequestError(f"envs: {name!r} is not an environment variable name")
        if not isinstance(value, str) or "\x00" in value:
            raise InvalidRequestError(f"envs[{name!r}]: expected a string without NUL")


class CommandHandle:
    """A command started with ``background=True``: ``wait()`` for its result, ``kill()`` to stop it."""

    def __init__(self, impl) -> None:
        self._impl = impl

    @property
    def id(self) -> str | None:
        return getattr(self._impl, "id", None)

    def wait(self, timeout: float | None = None) -> CommandResult:
        """The result; CommandExitError if it exited non-zero, TimeoutError if still running after ``timeout``."""
        result = self._impl.result(timeout)
        if result.exit_code != 0:
            raise CommandExitError(result)
        return result

    def kill(self) -> None:
        self._impl.kill()


class Commands:
    def __init__(self, sandbox: "Sandbox") -> None:
        self._sandbox = sandbox

    def run(self, cmd, *, timeout: float = 60.0, envs: dict[str, str] | None = None, cwd: str | None = None,
            background: bool = False, on_stdout=None, on_stderr=None):
        """Run ``cmd`` (a shell string or an argv list) in the sandbox.

        Returns a ``CommandResult``, or a ``CommandHandle`` with ``background``.
        A non-zero exit raises ``CommandExitError`` (124: killed at ``timeout``).
        ``cwd`` is relative to the workspace.  ``on_stdout``/``on_stderr`` get
        the output as it comes (remote) or at the end (local).
        """
        backend = self._sandbox._open()
        if not isinstance(cmd, str) and not (isinstance(cmd, (list, tuple)) and cmd
                                             and all(isinstance(a, str) for a in cmd)):
            raise InvalidRequestError("cmd: expected a shell command string or a non-empty list of strings")
        _check_envs(envs)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InvalidRequestError("timeout: expected seconds > 0")
        if background:
            return CommandHandle(backend.start(cmd, timeout=timeout, envs=envs, cwd=cwd))
        result = backend.run(cmd, timeout=timeout, envs=envs, cwd=cwd, on_stdout=on_stdout, on_stderr=on_stderr)
        if result.exit_code != 0:
            raise CommandExitError(result)
        return result


def _path(path: object, *, root: bool = False) -> str:
    """A files-API path: a string, relative to the workspace (or absolute under it, remote)."""
    if not isinstance(path, str) or (not root and not path.strip("/.")):
        raise SandboxFileError(f"invalid file path {path!r}", code="invalid_path")
    return path


class Files:
    def __init__(self, sandbox: "Sandbox") -> None:
        self._sandbox = sandbox

    def write(self, path: str, data) -> EntryInfo:
        """Write ``data`` (str or bytes) to ``path`` in the workspace, creating directories; whole or not at all."""
        backend = self._sandbox._open()
        if isinstance(data, str):
            payload = data.encode()
        elif isinstance(data, (bytes, bytearray, memoryview)):
            payload = bytes(data)
        else:
            raise SandboxFileError(f"Can't write {path!r}: data must be str or bytes")
        return EntryInfo(backend.write(_path(path), payload))

    def list(self, path: str = "") -> list[EntryInfo]:
        """The entries of directory ``path`` (default: the workspace), sorted by name."""
        return [EntryInfo(entry) for entry in self._sandbox._open().list(_path(path, root=True))]

    def get_info(self, path: str) -> EntryInfo:
        return EntryInfo(self._sandbox._open().stat(_path(path, root=True)))

    def exists(self, path: str) -> bool:
        try:
            self.get_info(path)
        except SandboxFileError as exc:
            if exc.code in ("file_not_found", "invalid_path"):
                return False
            raise
        return True

    def make_dir(self, path: str) -> bool:
        """Make directory ``path`` and its parents; False if it existed."""
        return bool(self._sandbox._open().make_dir(_path(path)))

    def remove(self, path: str) -> None:
        """Remove the file, or the directory with its contents, at ``path``."""
        self._sandbox._open().remove(_path(path))

    def rename(self, old_path: str, new_path: str) -> EntryInfo:
        """Move ``old_path`` to ``new_path`` (which must not exist)."""
        return EntryInfo(self._sandbox._open().rename(_path(old_path), _path(new_path)))

    def read(self, path: str, format: str = "text"):  # noqa: A002 - E2B's argument name
        """The file's content: text (UTF-8), or bytes with ``format="bytes"``."""
        if format not in ("text", "bytes"):
            raise InvalidRequestError("format: 'text' or 'bytes'")
        data = self._sandbox._open().read(path)
        return data if format == "bytes" else data.decode("utf-8", "replace")


def with_envs(policy, envs):
    """``policy`` (a dict, or None) with ``envs`` set for every command (its ``environment.set``)."""
    if not envs:
        return policy
    _check_envs(envs)
    if policy is not None and not isinstance(policy, dict):
        raise InvalidRequestError("give envs inside the policy ([environment] set) when the policy is TOML text")
    policy = dict(policy or {})
    environment = dict(policy.get("environment", {}))
    environment["set"] = {**environment.get("set", {}), **envs}
    policy["environment"] = environment
    return policy


class Sandbox:
    """A sandbox: ``commands.run``, ``files.read``/``files.write``, ``kill()`` (or a ``with`` block).

    Local backend: a workspace on this machine (``workspace``, default a new
    private directory removed at kill); each command runs in a new sandbox of
    the policy's tier over it.  Remote backend (``api_url``): one sandbox of a
    ``blastwall serve`` service (a gVisor container, or a VM with
    ``tier="vm"`` where the tenant may) that lives until ``kill()`` or its
    TTL, with its workspace at ``/home/user``.
    """

    def __init__(self, backend) -> None:
        self._backend = backend
        self._closed = False
        self.commands = Commands(self)
        self.files = Files(self)

    @classmethod
    def create(cls, template: str | None = None, *, image: str | None = None, policy=None, resources=None,
               timeout: int | None = None, ttl: int | None = None, api_url=UNSET, api_key=UNSET,
               envs: dict[str, str] | None = None, tier: str | None = None, policy_file: str | None = None,
               workspace: str | None = None, allow_domains=(), environ=None) -> "Sandbox":
        """A new sandbox.

        Remote when ``api_url`` is given, or left unset and ``BLASTWALL_API_URL``
        is set (with ``api_key`` or ``BLASTWALL_API_KEY``); ``api_url=None``
        always means local.  ``template``/``image``: the image; ``policy``: a
        policy layer (TOML text or a dict); ``resources``: ``{"memory": "1G",
        "cpus": 1, "pids": 256}``; ``timeout``/``ttl``: seconds the remote
        sandbox lives; ``envs``: variables every command gets (the policy's
        ``environment.set``); ``tier``: the tier (remote: "container" or
        "vm").  ``policy_file`` and ``workspace`` are local only.
        """
        environ = os.environ if environ is None else environ
        policy = with_envs(policy, envs)
        url = environ.get("BLASTWALL_API_URL") or None if api_url is UNSET else api_url
        image = image if image is not None else template
        if timeout is not None and ttl is not None and timeout != ttl:
            raise InvalidRequestError("give timeout or ttl, not both")
        lifetime = ttl if ttl is not None else timeout
        if url:
            from blastwall.client._remote import RemoteBackend

            local_only = [name for name, value in (("policy_file", policy_file), ("workspace", workspace))
                          if value is not None]
            if local_only:
                raise InvalidRequestError(f"{', '.join(local_only)}: only for the local backend (api_url=None)")
            key = environ.get("BLASTWALL_API_KEY", "") if api_key is UNSET else api_key
            try:
                backend = RemoteBackend.create(api_url=url, api_key=key, image=image, policy=policy,
                                               resources=resources, ttl=lifetime, allow_domains=allow_domains,
                                               tier=tier)
            except ValueError as exc:
                raise InvalidRequestError(str(exc)) from None
            return cls(backend)
        if api_key not in (UNSET, None):
            raise InvalidRequestError("api_key without api_url (or BLASTWALL_API_URL)")
        if lifetime is not None:
            raise InvalidRequestError("timeout/ttl: only for the remote backend (a local sandbox lives until kill())")
        from blastwall.client._local import LocalBackend

        if image is not None:
            policy_with_image = {"sandbox": {"image": image}}
            if policy is None:
                policy = policy_with_image
            elif isinstance(policy, dict):
                policy = {**policy, "sandbox": {**policy.get("sandbox", {}), "image": image}}
            else:
                raise InvalidRequestError("give the image inside the policy when the policy is TOML text")
        return cls(LocalBackend.create(tier=tier, policy_file=policy_file, workspace=workspace,
                                       allow_domains=allow_domains, policy=policy, resources=resources,
                                       environ=environ))

    @classmethod
    def connect(cls, sandbox_id: str, *, api_url=UNSET, api_key=UNSET, environ=None) -> "Sandbox":
        """An existing remote sandbox, by id (for example from another process)."""
        from blastwall.client._remote import RemoteBackend

        environ = os.environ if environ is None else environ
        url = environ.get("BLASTWALL_API_URL") if api_url is UNSET else api_url
        key = environ.get("BLASTWALL_API_KEY", "") if api_key is UNSET else api_key
        if not url:
            raise InvalidRequestError("connect needs api_url (or BLASTWALL_API_URL)")
        try:
            return cls(RemoteBackend.connect(sandbox_id, api_url=url, api_key=key))
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None

    # -- what it is -------------------------------------------------------------------------------
    @property
    def sandbox_id(self) -> str:
        return self._backend.sandbox_id

    @property
    def workspace(self) -> str:
        """Local: the workspace's path on this machine.  Remote: /home/user (inside the sandbox)."""
        return getattr(self._backend, "workspace", "/home/user")

    @property
    def policy(self):
        """Local only: the effective Policy."""
        return getattr(self._backend, "policy", None)

    def get_info(self) -> dict:
        """Remote: the service's description (state, expires_at, resources, ...)."""
        self._open()
        refresh = getattr(self._backend, "refresh", None)
        return refresh() if refresh else {"id": self.sandbox_id, "state": "running", "workdir": self.workspace}

    def set_timeout(self, seconds: int) -> None:
        """Remote: the sandbox now lives ``seconds`` from now (within the tenant's ceiling)."""
        backend = self._open()
        if not hasattr(backend, "set_timeout"):
            raise InvalidRequestError("set_timeout: only for the remote backend")
        backend.set_timeout(seconds)

    def _open(self):
        if self._closed:
            raise SandboxClosedError("this sandbox is closed")
        return self._backend

    def kill(self) -> None:
        """Destroy the sandbox (remote: the service's sandbox; local: a private workspace)."""
        if self._closed:
            return
        self._closed = True
        self._backend.kill()

    close = kill

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def __repr__(self) -> str:
        return f"Sandbox({self.sandbox_id!r}{', closed' if self._closed else ''})"
