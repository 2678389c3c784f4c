"""Every error the SDK raises, in one tree (both backends), with E2B's names beside ours::

    SandboxError = SandboxException     any SDK error
    ├── AuthenticationError = AuthenticationException
    │                               the API key is missing, unknown, revoked or expired (401)
    ├── NotFoundException           something named is not there:
    │   ├── SandboxNotFoundError    no such sandbox for this key: never made, deleted, expired, or
    │   │   │                       another tenant's (404; the service answers all four alike)
    │   │   └── SandboxLostError    it died with its cluster node (410)
    │   └── FileNotFoundException   no such file or directory (also a SandboxFileError)
    ├── InvalidRequestError = InvalidArgumentException
    │                               a malformed argument or policy (400, 422); ``.details``
    ├── CeilingExceededError        asks more than the tenant's ceiling allows (403)
    ├── QuotaExceededError = RateLimitError = RateLimitException
    │                               too many sandboxes or too much memory in use now (429)
    ├── SandboxFileError            a path outside the workspace, a link, a missing or oversized file, or
    │   │                           one the sandbox could not write or read either (``code``
    │   │                           "path_refused"; ``details`` has the reason and what the sandbox sees)
    │   └── NotEnoughSpaceException the sandbox's disk is full
    ├── CommandExitError = CommandExitException
    │                               the command ran and exited non-zero; ``.result``, ``.exit_code``
    ├── TimeoutException            a command ran past its ``timeout`` (killed; exit_code 124), or a
    │                               ``wait(timeout=)`` ran out first; also a ``TimeoutError``
    ├── CommandStdinError           the command's stdin is closed, or it does not read it (409)
    ├── SandboxClosedError          this Sandbox object was killed
    └── ServiceError                the service failed (5xx), is unreachable, or did not answer as the API does

The remote backend maps each (HTTP status, error code) the service sends onto
the most specific class here (``error_for``); a test walks every code the
service defines and proves it is mapped.  ``.code`` keeps the service's code,
``.status`` its HTTP status.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["AuthenticationError", "AuthenticationException", "CeilingExceededError", "CommandExitError",
           "CommandExitException", "CommandResult", "CommandStdinError", "EntryInfo", "FileNotFoundException",
           "FileType", "InvalidArgumentException", "InvalidRequestError", "NotEnoughSpaceException",
           "NotFoundException", "QuotaExceededError", "RateLimitError", "RateLimitException", "SandboxClosedError",
           "SandboxError", "SandboxException", "SandboxFileError", "SandboxLostError", "SandboxNotFoundError",
           "ServiceError", "TimeoutException", "WriteInfo", "error_for"]


class CommandResult:
    """A finished command: ``stdout``, ``stderr``, ``exit_code``, ``error`` (why it failed, or None)."""

    __slots__ = ("stdout", "stderr", "exit_code", "error", "timed_out")

    def __init__(self, stdout: str, stderr: str, exit_code: int, *, error: str | None = None,
                 timed_out: bool = False) -> None:
        self.stdout, self.stderr, self.exit_code, self.timed_out = stdout, stderr, exit_code, timed_out
        if error is None and timed_out:
            error = "the command ran past its timeout and was killed"
        elif error is None and exit_code != 0:
            error = f"the command exited with status {exit_code}"
        self.error = error

    def __repr__(self) -> str:
        return f"CommandResult(exit_code={self.exit_code}, stdout={self.stdout[:60]!r}, stderr={self.stderr[:60]!r})"


class FileType(str, Enum):
    """What an entry is.  A ``str``: ``entry.type == "file"`` holds as well as ``entry.type == FileType.FILE``."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"
    HIDDEN = "hidden"  # the sandbox sees it empty (a hidden path of the policy)

    @classmethod
    def of(cls, name: object) -> "FileType":
        try:
            return cls(str(name))
        except ValueError:
            return cls.OTHER

    def __str__(self) -> str:
        return self.value


class WriteInfo:
    """What ``files.write`` wrote: ``name``, ``type`` (a FileType) and ``path``."""

    __slots__ = ("name", "path", "type")

    def __init__(self, data: dict) -> None:
        self.name, self.path = str(data.get("name", "")), str(data.get("path", ""))
        self.type = FileType.of(data.get("type", "file"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, {self.type})"


class EntryInfo(WriteInfo):
    """A file or directory of the sandbox: ``name``, ``path``, ``type`` (a FileType: "file", "dir", "symlink",
    "other", or "hidden": what the sandbox sees there is empty), ``size``, ``mode``, ``permissions``
    ("rwxr-xr-x"), ``modified_time`` (a datetime; ``modified``, a Unix time) and ``state`` ("writable",
    "read-only", "hidden": as a command inside sees it)."""

    __slots__ = ("size", "mode", "modified", "state")

    def __init__(self, data: dict) -> None:
        super().__init__(data)
        self.size, self.mode = int(data.get("size", 0)), int(data.get("mode", 0))
        self.modified, self.state = float(data.get("mtime", 0.0)), str(data.get("state", ""))

    @property
    def permissions(self) -> str:
        return "".join(flag if self.mode & bit else "-"
                       for flag, bit in zip("rwxrwxrwx", (0o400, 0o200, 0o100, 0o40, 0o20, 0o10, 4, 2, 1)))

    @property
    def modified_time(self):
        import datetime

        return datetime.datetime.fromtimestamp(self.modified, datetime.timezone.utc)

    def __repr__(self) -> str:
        return f"EntryInfo({self.path!r}, {self.type}, size={self.size}, {self.state})"


class SandboxError(Exception):
    """Base of every SDK error.  ``code`` and ``status`` come from the service (remote backend)."""

    def __init__(self, message: str, *, code: str = "", status: int = 0, details=None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.details = details


SandboxException = SandboxError


class AuthenticationError(SandboxError):
    """The API key is missing, unknown, revoked or expired."""


AuthenticationException = AuthenticationError


class NotFoundException(SandboxError):
    """Something named (a sandbox, a command, a file) is not there."""


class SandboxNotFoundError(NotFoundException):
    """No such sandbox for this key (never created, deleted, expired, or not yours)."""


class SandboxLostError(SandboxNotFoundError):
    """The sandbox died with its node (a cluster): its commands and files are gone; create another."""


class InvalidRequestError(SandboxError):
    """An argument or the policy is malformed; ``details`` lists the fields when the service said."""


InvalidArgumentException = InvalidRequestError


class CeilingExceededError(SandboxError):
    """The request asks for more than the tenant's ceiling allows (domains, image, memory, CPUs, TTL)."""


class QuotaExceededError(SandboxError):
    """Too many sandboxes, too much memory or too many commands in use right now; retry later."""


RateLimitError = RateLimitException = QuotaExceededError


class SandboxFileError(SandboxError):
    """A file path outside the workspace, a link, a missing or oversized file."""


class FileNotFoundException(SandboxFileError, NotFoundException):
    """No such file or directory in the sandbox."""


class NotEnoughSpaceException(SandboxFileError):
    """The sandbox's disk has no room for the write."""


class CommandExitError(SandboxError):
    """The command ran and exited non-zero."""

    def __init__(self, result: CommandResult) -> None:
        super().__init__(f"command exited with status {result.exit_code}: {result.stderr.strip()[:200]}")
        self.result = result
        self.stdout, self.stderr, self.exit_code = result.stdout, result.stderr, result.exit_code
        self.error = result.error


CommandExitException = CommandExitError


class TimeoutException(SandboxError, TimeoutError):
    """A command ran past its ``timeout`` and was killed (``result`` has what it wrote), or a wait ran out."""

    def __init__(self, message: str, *, result: CommandResult | None = None, code: str = "timeout") -> None:
        super().__init__(message, code=code)
        self.result = result


class CommandStdinError(SandboxError):
    """The command's stdin is closed (or was never opened: ``stdin=True``), or the command does not read it."""


class SandboxClosedError(SandboxError):
    """The sandbox was closed; create another."""


class ServiceError(SandboxError):
    """The service failed, is unreachable, or answered in a way the API never does."""


# (status, code) -> class; a status alone for codes this SDK does not know yet.
_BY_CODE = {
    "unauthorized": AuthenticationError,
    "sandbox_not_found": SandboxNotFoundError,
    "sandbox_lost": SandboxLostError,
    "command_not_found": NotFoundException,
    "file_not_found": FileNotFoundException,
    "no_space": NotEnoughSpaceException,
    "stdin_closed": CommandStdinError,
    "stdin_full": CommandStdinError,
    "invalid_path": SandboxFileError,
    "path_refused": SandboxFileError,
    "file_exists": SandboxFileError,
    "invalid_json": InvalidRequestError,
    "invalid_request": InvalidRequestError,
    "invalid_policy": InvalidRequestError,
    "not_found": ServiceError,  # A route this service does not have: the SDK and service disagree.
    "method_not_allowed": ServiceError,
    "ceiling_exceeded": CeilingExceededError,
    "quota_exceeded": QuotaExceededError,
    "internal_error": ServiceError,
    "sandbox_unavailable": ServiceError,
    "audit_unavailable": ServiceError,
    "shutting_down": ServiceError,
    "database_unavailable": ServiceError,  # Retry-After says when to try again.
    "cluster_full": ServiceError,
}
_BY_STATUS = {400: InvalidRequestError, 401: AuthenticationError, 403: CeilingExceededError,
              404: SandboxNotFoundError, 410: SandboxLostError, 422: InvalidRequestError, 429: QuotaExceededError}


def error_for(status: int, code: str, message: str, details=None, *, files: bool = False) -> SandboxError:
    """The SDK error for a service answer.  ``files``: a payload_too_large is about a file."""
    if code == "payload_too_large":
        cls = SandboxFileError if files else InvalidRequestError
    else:
        cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or ServiceError
    return cls(message or f"the service answered {status}", code=code, status=status, details=details)
