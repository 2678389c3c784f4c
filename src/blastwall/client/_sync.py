"""The synchronous SDK: one front (``Sandbox``, ``commands``, ``files``) over two backends.

The front holds what does no I/O (argument checks, the non-zero-exit rule);
``_local.LocalBackend`` and ``_remote.RemoteBackend`` do the work.
"""

from __future__ import annotations

import os

from blastwall.client._errors import (CommandExitError, CommandResult, EntryInfo, InvalidRequestError,
                                      SandboxClosedError, SandboxFileError, SandboxNotFoundError, TimeoutException)

__all__ = ["HOME", "UNSET", "CommandHandle", "ProcessInfo", "Sandbox", "SandboxInfo", "WriteEntry"]


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


HOME = "/home/user"  # The sandbox's home and working directory, as E2B's sandboxes have it.
NO_TIMEOUT = 86400  # A command's "no timeout": a day, the service's longest


def _check_user(user) -> None:
    if user is not None and user != "user":
        raise InvalidRequestError(f"user: commands run as 'user', the sandbox's only user (not {str(user)[:32]!r}); "
                                  "root is not available in a sandbox")


def _finished(result: CommandResult, timeout: float | None = None) -> CommandResult:
    """``result`` if the command succeeded; else the error E2B code expects."""
    if result.timed_out:
        raise TimeoutException(f"the command ran past its timeout{f' of {timeout:g}s' if timeout else ''} and was "
                               "killed", result=result)
    if result.exit_code != 0:
        raise CommandExitError(result)
    return result


class ProcessInfo:
    """A command running in the sandbox (``commands.list()``): ``pid``, ``cmd``, ``args``, ``envs``, ``cwd``,
    ``tag`` (None: blastwall has no tags)."""

    __slots__ = ("pid", "cmd", "args", "envs", "cwd", "tag")

    def __init__(self, data: dict) -> None:
        self.pid, self.cmd, self.args = int(data["pid"]), str(data.get("cmd", "")), list(data.get("args", []))
        self.envs, self.cwd, self.tag = dict(data.get("envs", {})), data.get("cwd"), None

    def __repr__(self) -> str:
        return f"ProcessInfo(pid={self.pid}, cmd={self.cmd[:60]!r})"


class CommandHandle:
    """A command started with ``background=True`` (or found again with ``commands.connect(pid)``).

    Iterate it for ``(stdout, stderr, None)`` as output comes (one of the two
    is None each time); ``wait(on_stdout=, on_stderr=)`` for the result
    (CommandExitException on a non-zero exit, TimeoutException past the
    command's timeout); ``kill()``; ``send_stdin()`` when started with
    ``stdin=True``.  ``stdout``/``stderr`` hold what has been read so far.
    """

    def __init__(self, impl) -> None:
        self._impl = impl
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._result: CommandResult | None = None

    @property
    def id(self) -> str | None:
        return getattr(self._impl, "id", None)

    @property
    def pid(self) -> int:
        """The command's number in its sandbox (1, 2, ...), as ``commands.list/kill/connect`` take it."""
        return self._impl.pid

    @property
    def stdout(self) -> str:
        return "".join(self._stdout)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    @property
    def exit_code(self) -> int | None:
        return None if self._result is None else self._result.exit_code

    @property
    def error(self) -> str | None:
        return None if self._result is None else self._result.error

    def _events(self, deadline: float | None):
        """(stdout, stderr) text as it comes, until the command ends (then ``_result`` is set)."""
        import time

        while self._result is None:
            left = 30.0 if deadline is None else min(30.0, deadline - time.monotonic())
            if left <= 0:
                raise TimeoutException("the command is still running", code="wait_timeout")
            stdout, stderr, result = self._impl.poll(left)
            if stdout:
                self._stdout.append(stdout)
                yield stdout, None
            if stderr:
                self._stderr.append(stderr)
                yield None, stderr
            if result is not None:
                self._result = CommandResult(self.stdout, self.stderr, result.exit_code, timed_out=result.timed_out)

    def __iter__(self):
        for stdout, stderr in self._events(None):
            yield stdout, stderr, None  # (stdout, stderr, pty): no pty here

    def wait(self, timeout: float | None = None, *, on_stdout=None, on_stderr=None, on_pty=None) -> CommandResult:
        """The result once it ends; output not read yet goes to ``on_stdout``/``on_stderr`` first.
        TimeoutException if it is still running after ``timeout`` seconds (it goes on running)."""
        import time

        if on_pty is not None:
            raise InvalidRequestError("on_pty: blastwall commands have no pty")
        deadline = None if timeout is None else time.monotonic() + timeout
        for stdout, stderr in self._events(deadline):
            if stdout is not None and on_stdout:
                on_stdout(stdout)
            if stderr is not None and on_stderr:
                on_stderr(stderr)
        assert self._result is not None
        return _finished(self._result)

    def kill(self) -> bool:
        """Stop it (and what it started); True if it was still running."""
        return bool(self._impl.kill())

    def send_stdin(self, data: str | bytes) -> None:
        self._impl.send_stdin(data.encode() if isinstance(data, str) else bytes(data))

    def close_stdin(self) -> None:
        self._impl.close_stdin()

    def disconnect(self) -> None:
        """Stop following it here; it runs on (``commands.connect(pid)`` follows it again)."""
        self._result = self._result or CommandResult(self.stdout, self.stderr, -1, error="disconnected")


class Commands:
    def __init__(self, sandbox: "Sandbox") -> None:
        self._sandbox = sandbox

    def run(self, cmd, background: bool = False, envs: dict[str, str] | None = None, user: str | None = None,
            cwd: str | None = None, on_stdout=None, on_stderr=None, stdin: bool = False, timeout: float = 60.0,
            request_timeout: float | None = None):
        """Run ``cmd`` (a bash command string, or an argv list) in the sandbox.

        Returns a ``CommandResult``, or a ``CommandHandle`` with ``background``.
        A non-zero exit raises ``CommandExitException``; running past
        ``timeout`` seconds kills the command and raises ``TimeoutException``
        (0 or None: no limit but the sandbox's own life, as with E2B).
        ``cwd``: relative to /home/user (the default), or absolute under it.
        ``on_stdout``/``on_stderr`` get the output as it comes.  ``stdin``
        (background only): keep the command's stdin open for ``send_stdin``.
        ``user``: "user", the sandbox's one user (E2B's "root" is refused).
        """
        backend = self._sandbox._open()
        if not isinstance(cmd, str) and not (isinstance(cmd, (list, tuple)) and cmd
                                             and all(isinstance(a, str) for a in cmd)):
            raise InvalidRequestError("cmd: expected a shell command string or a non-empty list of strings")
        _check_envs(envs)
        _check_user(user)
        if timeout is None or (timeout == 0 and not isinstance(timeout, bool)):
            timeout = NO_TIMEOUT  # E2B's 0: no limit of its own (the sandbox's life still ends it)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= NO_TIMEOUT:
            raise InvalidRequestError(f"timeout: expected seconds > 0 (at most {NO_TIMEOUT}), or 0 for no limit")
        if not isinstance(stdin, bool) or (stdin and not background):
            raise InvalidRequestError("stdin: True only with background=True (then send_stdin)")
        workdir = self._sandbox._cwd(cwd)
        if background:
            return CommandHandle(backend.start(cmd, timeout=timeout, envs=envs, cwd=workdir, stdin=stdin))
        result = backend.run(cmd, timeout=timeout, envs=envs, cwd=workdir, on_stdout=on_stdout, on_stderr=on_stderr)
        return _finished(result, timeout)

    def list(self) -> list[ProcessInfo]:
        """The commands running in the sandbox now."""
        return [ProcessInfo(info) for info in self._sandbox._open().commands()]

    def kill(self, pid: int) -> bool:
        """Kill command ``pid``; True if it was running, False if it had ended or there is none."""
        from blastwall.client._errors import NotFoundException

        try:
            return bool(self._sandbox._open().kill_command(_pid(pid)))
        except NotFoundException:
            return False

    def connect(self, pid: int) -> CommandHandle:
        """Follow a running background command again (its output from the start)."""
        return CommandHandle(self._sandbox._open().connect_command(_pid(pid)))

    def send_stdin(self, pid: int, data: str | bytes) -> None:
        self.connect(pid).send_stdin(data)

    def close_stdin(self, pid: int) -> None:
        self.connect(pid).close_stdin()


def _pid(pid) -> int:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise InvalidRequestError(f"pid: expected a command's number (> 0), not {str(pid)[:32]!r}")
    return pid


def _path(path: object, *, root: bool = False) -> str:
    """A files-API path: a string, relative to the workspace, or absolute under /home/user."""
    if not isinstance(path, str) or (not root and not path.strip("/.")):
        raise SandboxFileError(f"invalid file path {path!r}", code="invalid_path")
    if path == HOME or path.startswith(HOME + "/"):
        path = path[len(HOME) + 1:]
        if not root and not path.strip("/."):
            raise SandboxFileError(f"invalid file path {HOME!r}: name a file inside it", code="invalid_path")
    return path


def _data(path: str, data) -> bytes:
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    read = getattr(data, "read", None)
    if callable(read):  # A file object (text or binary), read whole: a write is whole or not at all.
        content = read()
        if isinstance(content, str):
            return content.encode()
        if isinstance(content, (bytes, bytearray)):
            return bytes(content)
    raise SandboxFileError(f"Can't write {path!r}: data must be str, bytes or a file object")


class Files:
    def __init__(self, sandbox: "Sandbox") -> None:
        self._sandbox = sandbox

    def write(self, path, data=None, *, user: str | None = None):
        """Write ``data`` (str, bytes or a file object) to ``path``, creating directories; whole or not at
        all.  Returns a ``WriteInfo`` (an ``EntryInfo``).  E2B's list form, ``write([{"path":, "data":}])``,
        is ``write_files``."""
        if isinstance(path, list) and data is None:
            return self.write_files(path, user=user)
        _check_user(user)
        backend = self._sandbox._open()
        name = _path(path)
        return EntryInfo(backend.write(name, _data(name, data)))

    def write_files(self, files, *, user: str | None = None) -> list:
        """Write each of ``files`` (``WriteEntry``s, or dicts with "path" and "data"), in order."""
        if not isinstance(files, (list, tuple)):
            raise InvalidRequestError("files: expected a list of WriteEntry(path=, data=)")
        entries = []
        for item in files:
            path = item.get("path") if isinstance(item, dict) else getattr(item, "path", None)
            data = item.get("data") if isinstance(item, dict) else getattr(item, "data", None)
            entries.append((path, data))
        return [self.write(path, data, user=user) for path, data in entries]

    def list(self, path: str = "", depth: int = 1) -> list[EntryInfo]:
        """The entries of directory ``path`` (default: the workspace), sorted by name; with ``depth`` > 1
        also those of its subdirectories, that many levels down."""
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise InvalidRequestError("depth: expected a whole number >= 1")
        backend = self._sandbox._open()
        found, level = [], [_path(path, root=True)]
        for _ in range(depth):
            below = []
            for directory in level:
                for entry in backend.list(directory):
                    info = EntryInfo(entry)
                    found.append(info)
                    if info.type == "dir":
                        below.append(info.path)
            level = below
        return found if depth == 1 else sorted(found, key=lambda e: e.path)

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
        """The file's content: text (UTF-8), bytes with ``format="bytes"``, or with ``format="stream"`` an
        iterator of bytes chunks (the file is not held in memory on the remote backend)."""
        if format not in ("text", "bytes", "stream"):
            raise InvalidRequestError("format: 'text', 'bytes' or 'stream'")
        backend = self._sandbox._open()
        if format == "stream":
            return backend.read_stream(_path(path))
        data = backend.read(_path(path))
        return data if format == "bytes" else data.decode("utf-8", "replace")


class WriteEntry:
    """One file for ``files.write_files``: ``path`` and ``data`` (str, bytes or a file object)."""

    __slots__ = ("path", "data")

    def __init__(self, path: str, data) -> None:
        self.path, self.data = path, data


class SandboxInfo:
    """What ``Sandbox.list()`` and ``get_info()`` say of a sandbox: ``sandbox_id``, ``template_id`` (its
    image), ``metadata``, ``started_at`` and ``end_at`` (datetimes, UTC), ``state``, ``tier``."""

    __slots__ = ("sandbox_id", "template_id", "name", "metadata", "started_at", "end_at", "state", "tier", "raw")

    def __init__(self, data: dict) -> None:
        import datetime

        def when(seconds):
            return None if seconds is None else datetime.datetime.fromtimestamp(float(seconds), datetime.timezone.utc)

        self.sandbox_id, self.template_id = str(data["id"]), data.get("image")
        self.name, self.metadata = data.get("image"), dict(data.get("metadata") or {})
        self.started_at, self.end_at = when(data.get("created_at")), when(data.get("expires_at"))
        self.state, self.tier, self.raw = str(data.get("state", "running")), data.get("tier"), dict(data)

    def __repr__(self) -> str:
        return f"SandboxInfo({self.sandbox_id!r}, {self.state}, ends {self.end_at})"


class _ClassOrInstance:
    """``Sandbox.kill(sandbox_id)`` on the class, ``sbx.kill()`` on an instance (E2B's two forms)."""

    def __init__(self, on_class, on_instance) -> None:
        self._on_class, self._on_instance = on_class, on_instance

    def __get__(self, instance, owner):
        if instance is None:
            return self._on_class.__get__(owner, owner)
        return self._on_instance.__get__(instance, owner)


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
    """A sandbox: ``commands``, ``files``, ``kill()`` (or a ``with`` block), E2B's shapes throughout.

    Local backend: a workspace on this machine (``workspace``, default a new
    private directory removed at kill) and one session of the policy's tier
    over it, booted on the first command.  Remote backend (``api_url``): one
    sandbox of a ``blastwall serve`` service (a gVisor container, or a VM
    with ``tier="vm"`` where the tenant may).  Either lives until ``kill()``
    or its ``timeout``.
    """

    def __init__(self, backend) -> None:
        self._backend = backend
        self._closed = False
        self.commands = Commands(self)
        self.files = Files(self)

    @classmethod
    def create(cls, template: str | None = None, timeout: int | None = None, metadata: dict[str, str] | None = None,
               envs: dict[str, str] | None = None, api_key=UNSET, *, api_url=UNSET, image: str | None = None,
               policy=None, resources=None, ttl: int | None = None, tier: str | None = None,
               policy_file: str | None = None, workspace: str | None = None, allow_domains=(),
               environ=None) -> "Sandbox":
        """A new sandbox.

        Remote when ``api_url`` is given, or left unset and ``BLASTWALL_API_URL``
        is set (with ``api_key`` or ``BLASTWALL_API_KEY``); ``api_url=None``
        always means local.  ``template``/``image``: the image; ``timeout``/
        ``ttl``: seconds it lives (remote default 300; local: until kill);
        ``metadata``: string pairs kept with it (``get_info``, ``list``);
        ``policy``: a policy layer (TOML text or a dict); ``resources``:
        ``{"memory": "1G", "cpus": 1, "pids": 256}``; ``envs``: variables every
        command gets (the policy's ``environment.set``); ``tier``: the tier
        (remote: "container" or "vm").  ``policy_file`` and ``workspace`` are
        local only.
        """
        environ = os.environ if environ is None else environ
        policy = with_envs(policy, envs)
        url = _url(api_url, environ)
        image = image if image is not None else template
        if timeout is not None and ttl is not None and timeout != ttl:
            raise InvalidRequestError("give timeout or ttl, not both")
        lifetime = ttl if ttl is not None else timeout
        if lifetime is not None and (isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0):
            raise InvalidRequestError("timeout: expected a whole number of seconds > 0")
        metadata = _check_metadata(metadata)
        if url:
            from blastwall.client._remote import RemoteBackend

            local_only = [name for name, value in (("policy_file", policy_file), ("workspace", workspace))
                          if value is not None]
            if local_only:
                raise InvalidRequestError(f"{', '.join(local_only)}: only for the local backend (api_url=None)")
            try:
                backend = RemoteBackend.create(api_url=url, api_key=_key(api_key, environ), image=image,
                                               policy=policy, resources=resources, ttl=lifetime,
                                               allow_domains=allow_domains, tier=tier, metadata=metadata)
            except ValueError as exc:
                raise InvalidRequestError(str(exc)) from None
            return cls(backend)
        if api_key not in (UNSET, None):
            raise InvalidRequestError("api_key without api_url (or BLASTWALL_API_URL)")
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
                                       environ=environ, ttl=lifetime, metadata=metadata))

    @classmethod
    def connect(cls, sandbox_id: str, api_key=UNSET, *, api_url=UNSET, environ=None) -> "Sandbox":
        """An existing sandbox by id: a remote one (from any process), or a local one of this process."""
        environ = os.environ if environ is None else environ
        url = _url(api_url, environ)
        if not isinstance(sandbox_id, str) or not sandbox_id:
            raise InvalidRequestError("sandbox_id: expected a sandbox's id")
        if not url:
            from blastwall.client._local import live_backend

            return cls(live_backend(sandbox_id))
        from blastwall.client._remote import RemoteBackend

        try:
            return cls(RemoteBackend.connect(sandbox_id, api_url=url, api_key=_key(api_key, environ)))
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None

    @classmethod
    def list(cls, api_key=UNSET, *, api_url=UNSET, environ=None) -> list[SandboxInfo]:
        """The running sandboxes: the service's for this key (remote), or this process's (local)."""
        environ = os.environ if environ is None else environ
        url = _url(api_url, environ)
        if not url:
            from blastwall.client._local import live_backends

            return [SandboxInfo(backend.describe()) for backend in live_backends()]
        from blastwall.client._remote import list_sandboxes

        try:
            return [SandboxInfo(data) for data in list_sandboxes(api_url=url, api_key=_key(api_key, environ))]
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None

    # -- what it is -------------------------------------------------------------------------------
    @property
    def sandbox_id(self) -> str:
        return self._backend.sandbox_id

    @property
    def workspace(self) -> str:
        """Local: the workspace's path on this machine.  Remote: /home/user (inside the sandbox)."""
        return getattr(self._backend, "workspace", HOME)

    @property
    def policy(self):
        """Local only: the effective Policy."""
        return getattr(self._backend, "policy", None)

    def get_info(self) -> SandboxInfo:
        """Its id, image, metadata, start and end times (``raw``: everything the backend said)."""
        return SandboxInfo(self._open().describe())

    def is_running(self) -> bool:
        """True while the sandbox exists and runs (False once killed, expired or lost)."""
        if self._closed:
            return False
        try:
            return self._backend.describe().get("state") == "running"
        except SandboxNotFoundError:
            return False

    def set_timeout(self, timeout: int) -> None:
        """The sandbox now lives ``timeout`` seconds from now (remote: within the tenant's ceiling)."""
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
            raise InvalidRequestError("timeout: expected a whole number of seconds > 0")
        self._open().set_timeout(timeout)

    def update_network(self, allow: list[str] | None = None, deny: list[str] | None = None) -> None:
        """From now on the sandbox's new requests may reach ``allow`` (it replaces the list; None keeps it)
        and never ``deny`` (added; deny wins).  Remote: narrowing always works, a host beyond the list only
        within the tenant's ceiling (CeilingExceededError).  A sandbox created without network has none to
        change (InvalidRequestError)."""
        for name, hosts in (("allow", allow), ("deny", deny)):
            if hosts is not None and (isinstance(hosts, str) or not all(isinstance(h, str) for h in hosts)):
                raise InvalidRequestError(f"{name}: expected a list of host patterns")
        self._open().update_network(None if allow is None else list(allow), None if deny is None else list(deny))

    def _cwd(self, cwd):
        """A command's working directory: /home/user paths as the workspace's, relative ones under it."""
        if cwd is None:
            return None
        if not isinstance(cwd, str) or "\x00" in cwd:
            raise InvalidRequestError("cwd: expected a path")
        if cwd == HOME or cwd.startswith(HOME + "/"):
            return cwd[len(HOME) + 1:] or None
        return cwd

    def _open(self):
        if self._closed:
            raise SandboxClosedError("this sandbox is closed")
        return self._backend

    def _kill(self) -> bool:
        """Destroy the sandbox (remote: the service's sandbox; local: its session and a private workspace);
        True if it was running."""
        if self._closed:
            return False
        self._closed = True
        return self._backend.kill() is not False

    @classmethod
    def _kill_by_id(cls, sandbox_id: str, api_key=UNSET, *, api_url=UNSET, environ=None) -> bool:
        """``Sandbox.kill(sandbox_id)``: destroy a sandbox by id; False if there was none."""
        try:
            sandbox = cls.connect(sandbox_id, api_key, api_url=api_url, environ=environ)
        except SandboxNotFoundError:
            return False
        return sandbox._kill()

    kill = _ClassOrInstance(_kill_by_id, _kill)

    def close(self) -> None:
        self._kill()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self._kill()

    def __repr__(self) -> str:
        return f"Sandbox({self.sandbox_id!r}{', closed' if self._closed else ''})"


def _url(api_url, environ):
    return (environ.get("BLASTWALL_API_URL") or None) if api_url is UNSET else api_url


def _key(api_key, environ) -> str:
    return environ.get("BLASTWALL_API_KEY", "") if api_key in (UNSET, None) else api_key


def _check_metadata(metadata) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and k and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise InvalidRequestError("metadata: expected a dict of non-empty string keys to string values")
    return dict(metadata)
