"""The remote backend: a sandbox of a ``blastwall serve`` service, over HTTP with ``requests``.

Every answer that is not a success becomes the most specific SDK error
(``_errors.error_for``); a connection failure or an answer the API never gives
is a ``ServiceError``.  Paths are checked here too, before anything is sent:
a ``..`` in a URL path could be resolved by the HTTP client into another route.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

from blastwall.client._errors import (CommandResult, InvalidRequestError, SandboxFileError, SandboxNotFoundError,
                                      ServiceError, error_for)

__all__ = ["PolledCommand", "RemoteBackend", "list_sandboxes"]

CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 120.0   # creating a sandbox may wait for a boot
MAX_UPLOAD = 64 << 20     # the service's default; a larger limit is the service's to refuse


HOME = "/home/user"


def _url_path(path: object) -> str:
    """The workspace-relative, percent-encoded form of ``path`` (relative, or absolute under /home/user)."""
    if not isinstance(path, str) or not path or "\x00" in path or len(path) > 4096:
        raise SandboxFileError(f"{str(path)[:200]!r} is not a file path", code="invalid_path")
    relative = path
    if path.startswith("/"):
        if not path.startswith(HOME + "/"):
            raise SandboxFileError(f"{path[:200]!r} is not inside {HOME}", code="invalid_path")
        relative = path[len(HOME) + 1:]
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise SandboxFileError(f"{path[:200]!r} is not a file path inside {HOME}", code="invalid_path")
    return quote("/".join(parts), safe="/")


class _Client:
    """One base URL and key over one ``requests.Session``; every call checked and translated."""

    def __init__(self, api_url: str, api_key: str) -> None:
        import requests

        if not isinstance(api_url, str) or not api_url.startswith(("http://", "https://")):
            raise ValueError(f"api_url must be an http:// or https:// URL, not {str(api_url)[:100]!r}")
        if not api_key:
            raise ValueError("an API key is needed (api_key=... or BLASTWALL_API_KEY)")
        self.api_url = api_url.rstrip("/")
        self._requests = requests
        self._session = requests.Session()
        self._session.headers.update({"Authorization": f"Bearer {api_key}", "User-Agent": "blastwall-sdk/1"})
        self._session.trust_env = False  # Never send the key through a proxy someone set in the environment.

    def call(self, method: str, path: str, *, json_body=None, data=None, stream=False, timeout=REQUEST_TIMEOUT,
             files=False):
        try:
            response = self._session.request(method, self.api_url + path, json=json_body, data=data, stream=stream,
                                             timeout=(CONNECT_TIMEOUT, timeout))
        except self._requests.RequestException as exc:
            raise ServiceError(f"Can't reach the sandbox service at {self.api_url}: {type(exc).__name__}",
                               code="unreachable") from None
        if response.status_code >= 400:
            raise self._error(response, files=files)
        return response

    @staticmethod
    def _error(response, *, files: bool):
        try:
            error = response.json()["error"]
            code, message, details = str(error["code"]), str(error["message"]), error.get("details")
        except (ValueError, KeyError, TypeError):
            code, message, details = "", f"the service answered {response.status_code} without an API error", None
        finally:
            response.close()
        return error_for(response.status_code, code, message, details, files=files)

    def json(self, method: str, path: str, body=None, *, timeout=REQUEST_TIMEOUT) -> dict:
        response = self.call(method, path, json_body=body, timeout=timeout)
        if response.status_code == 204:
            return {}
        try:
            return response.json()
        except ValueError:
            raise ServiceError("the service answered with something that is not JSON", code="bad_answer") from None

    def close(self) -> None:
        self._session.close()


class PolledCommand:
    """A background command followed by long polls: ``poll(wait)`` gives the output since the last poll.

    ``status(wait, stdout_from, stderr_from)`` asks where it runs (the
    service over HTTP, or a Ray node) and answers as the service's
    ``GET .../commands/{id}``: output after the offsets, ``*_end`` where it
    ends, and the exit once it ended.
    """

    def __init__(self, command_id: str, pid: int, *, status, kill, send_stdin, close_stdin) -> None:
        self.id, self.pid = command_id, pid
        self._status, self._kill, self._send, self._close = status, kill, send_stdin, close_stdin
        self._offsets = [0, 0]

    def poll(self, wait: float):
        status = self._status(max(0.0, wait), *self._offsets)
        self._offsets = [int(status.get("stdout_end", 0)), int(status.get("stderr_end", 0))]
        result = None
        if status.get("state") == "exited":
            result = CommandResult("", "", int(status["exit_code"]), timed_out=bool(status.get("timed_out")))
        return status.get("stdout", ""), status.get("stderr", ""), result

    def kill(self) -> bool:
        return bool(self._kill().get("killed", True))

    def send_stdin(self, data: bytes) -> None:
        self._send(data)

    def close_stdin(self) -> None:
        self._close()


def take_output(event: dict, stdout: list, stderr: list, on_stdout=None, on_stderr=None) -> bool:
    """A stream event's output kept (and handed to its callback); False if the event is not output."""
    for name, kept, callback in (("stdout", stdout, on_stdout), ("stderr", stderr, on_stderr)):
        if name in event:
            kept.append(event[name])
            if callback:
                callback(event[name])
            return True
    return False


def with_allow_domains(policy, allow_domains):
    """``policy`` (a dict, or None) with ``allow_domains`` added to its ``network.allow``."""
    if not allow_domains:
        return policy
    if policy is not None and not isinstance(policy, dict):
        raise ValueError("give allow_domains inside the policy when the policy is TOML text")
    policy = dict(policy or {})
    network = dict(policy.get("network", {}))
    network["allow"] = [*network.get("allow", []), *allow_domains]
    policy["network"] = network
    return policy


class RemoteBackend:
    def __init__(self, client: _Client, info: dict) -> None:
        self._client = client
        self.info = info
        self.sandbox_id = info["id"]
        self._base = f"/v1/sandboxes/{quote(self.sandbox_id, safe='')}"

    @classmethod
    def create(cls, *, api_url: str, api_key: str, image=None, policy=None, resources=None, ttl=None,
               allow_domains=(), tier=None, metadata=None) -> "RemoteBackend":
        body: dict = {}
        if metadata is not None:
            body["metadata"] = dict(metadata)
        if image is not None:
            body["image"] = image
        if tier is not None:
            body["tier"] = tier
        policy = with_allow_domains(policy, allow_domains)
        if policy is not None:
            body["policy"] = policy
        if resources is not None:
            body["resources"] = dict(resources)
        if ttl is not None:
            body["ttl"] = int(ttl)
        client = _Client(api_url, api_key)
        try:
            return cls(client, client.json("POST", "/v1/sandboxes", body))
        except BaseException:
            client.close()
            raise

    @classmethod
    def connect(cls, sandbox_id: str, *, api_url: str, api_key: str) -> "RemoteBackend":
        client = _Client(api_url, api_key)
        try:
            return cls(client, client.json("GET", f"/v1/sandboxes/{quote(sandbox_id, safe='')}"))
        except BaseException:
            client.close()
            raise

    # -- commands -----------------------------------------------------------------------------
    @staticmethod
    def _body(cmd, timeout, envs, cwd, background, stdin=False) -> dict:
        body: dict = {"cmd": cmd if isinstance(cmd, str) else list(cmd), "timeout": timeout,
                      "background": background}
        if envs:
            body["envs"] = dict(envs)
        if cwd:
            body["cwd"] = cwd
        if stdin:
            body["stdin"] = True
        return body

    def run(self, cmd, *, timeout: float, envs, cwd, on_stdout=None, on_stderr=None) -> CommandResult:
        response = self._client.call("POST", f"{self._base}/commands",
                                     json_body=self._body(cmd, timeout, envs, cwd, False), stream=True,
                                     timeout=timeout + 30)
        stdout, stderr, final = [], [], None
        try:
            for line in response.iter_lines(chunk_size=65536):
                if not line:
                    continue
                event = json.loads(line)
                if take_output(event, stdout, stderr, on_stdout, on_stderr):
                    continue
                if "exit_code" in event:
                    final = event
                elif isinstance(event.get("error"), dict):  # The sandbox went away mid-command (its node died).
                    error = event["error"]
                    raise error_for(410 if error.get("code") == "sandbox_lost" else 503, str(error.get("code", "")),
                                    str(error.get("message", "the command ended without an exit status")))
        except (ValueError, self._client._requests.RequestException) as exc:
            raise ServiceError(f"the command's output stream broke: {type(exc).__name__}", code="stream") from None
        finally:
            response.close()
        if final is None or not isinstance(final.get("exit_code"), int):
            raise ServiceError("the command's output stream ended without an exit status (the sandbox may have "
                               "been destroyed)", code="stream")
        return CommandResult("".join(stdout), "".join(stderr), final["exit_code"],
                             timed_out=bool(final.get("timed_out")))

    def _command(self, command_id: str, pid: int) -> PolledCommand:
        base = f"{self._base}/commands/{quote(str(command_id), safe='')}"

        def status(wait, stdout_from, stderr_from):
            query = f"wait={wait:g}&stdout_from={stdout_from}&stderr_from={stderr_from}"
            return self._client.json("GET", f"{base}?{query}", timeout=wait + REQUEST_TIMEOUT)

        return PolledCommand(command_id, pid, status=status,
                             kill=lambda: self._client.json("POST", f"{base}/kill"),
                             send_stdin=lambda data: self._client.json("POST", f"{base}/stdin",
                                                                       {"data": _text(data)}),
                             close_stdin=lambda: self._client.json("POST", f"{base}/stdin/close"))

    def start(self, cmd, *, timeout: float, envs, cwd, stdin: bool = False) -> PolledCommand:
        answer = self._client.json("POST", f"{self._base}/commands", self._body(cmd, timeout, envs, cwd, True, stdin))
        return self._command(answer["id"], int(answer.get("pid", 0)))

    def commands(self) -> list[dict]:
        return self._client.json("GET", f"{self._base}/commands")["commands"]

    def connect_command(self, pid: int) -> PolledCommand:
        status = self._client.json("GET", f"{self._base}/commands/{int(pid)}")
        return self._command(status["id"], int(status.get("pid", pid)))

    def kill_command(self, pid: int) -> bool:
        return bool(self._client.json("POST", f"{self._base}/commands/{int(pid)}/kill").get("killed"))

    # -- files ----------------------------------------------------------------------------------
    def write(self, path: str, data: bytes) -> dict:
        target = _url_path(path)
        if len(data) > MAX_UPLOAD:
            raise SandboxFileError(f"Can't write {path!r}: larger than {MAX_UPLOAD} bytes", code="payload_too_large")
        self._client.call("PUT", f"{self._base}/files/{target}", data=data, files=True).close()
        return self.stat(path)

    def read(self, path: str) -> bytes:
        response = self._client.call("GET", f"{self._base}/files/{_url_path(path)}", files=True)
        return response.content

    def read_stream(self, path: str):
        """The file's bytes in chunks as they arrive (a generator: the request is made at once)."""
        response = self._client.call("GET", f"{self._base}/files/{_url_path(path)}", files=True, stream=True)

        def chunks():
            try:
                yield from response.iter_content(chunk_size=1 << 16)
            except self._client._requests.RequestException as exc:
                raise ServiceError(f"the file's stream broke: {type(exc).__name__}", code="stream") from None
            finally:
                response.close()

        return chunks()

    def _fs(self, method: str, operation: str, *, query: str | None = None, body: dict | None = None):
        target = f"{self._base}/fs/{operation}" + (f"?path={quote(query, safe='/')}" if query is not None else "")
        response = self._client.call(method, target, json_body=body, files=True)
        try:
            return None if response.status_code == 204 else response.json()
        except ValueError:
            raise ServiceError("the service answered with something that is not JSON", code="bad_answer") from None
        finally:
            response.close()

    def list(self, path: str) -> list[dict]:
        return self._fs("GET", "list", query=path or "/home/user")["entries"]

    def stat(self, path: str) -> dict:
        return self._fs("GET", "stat", query=path or "/home/user")

    def make_dir(self, path: str) -> bool:
        return self._fs("POST", "mkdir", body={"path": path})["created"]

    def remove(self, path: str) -> None:
        self._fs("POST", "remove", body={"path": path})

    def rename(self, source: str, target: str) -> dict:
        return self._fs("POST", "rename", body={"source": source, "target": target})

    # -- life -----------------------------------------------------------------------------------------
    def describe(self) -> dict:
        self.info = self._client.json("GET", self._base)
        return self.info

    refresh = describe

    def set_timeout(self, ttl: int) -> None:
        self.info = self._client.json("POST", f"{self._base}/timeout", {"ttl": int(ttl)})

    def update_network(self, allow, deny) -> None:
        body = {key: value for key, value in (("allow", allow), ("deny", deny)) if value is not None}
        self.info = self._client.json("POST", f"{self._base}/network", body)

    def kill(self) -> bool:
        try:
            self._client.call("DELETE", self._base).close()
        except SandboxNotFoundError:
            return False  # Already gone (expired, or killed elsewhere): the goal is met.
        finally:
            self._client.close()
        return True


def _text(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise InvalidRequestError("stdin: the service takes text (UTF-8); these bytes are not") from None


def list_sandboxes(*, api_url: str, api_key: str) -> list[dict]:
    client = _Client(api_url, api_key)
    try:
        return client.json("GET", "/v1/sandboxes")["sandboxes"]
    finally:
        client.close()
