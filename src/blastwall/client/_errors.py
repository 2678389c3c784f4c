"""Every error the SDK raises, in one tree (both backends)::

    SandboxError                    any SDK error
    ├── AuthenticationError         the API key is missing, unknown, revoked or expired (401)
    ├── SandboxNotFoundError        no such sandbox for this key: never made, deleted, expired, or
    │                               another tenant's (404; the service answers all four alike)
    ├── InvalidRequestError         a malformed argument or policy (400, 422); ``.details``
    ├── CeilingExceededError        asks more than the tenant's ceiling allows (403)
    ├── QuotaExceededError          too many sandboxes or too much memory in use now (429);
    │                               ``RateLimitError`` is the same class, for E2B users
    ├── SandboxFileError            a path outside the workspace, a link, a missing or oversized file, or
    │                               one the sandbox could not write or read either (``code``
    │                               "path_refused"; ``details`` has the reason and what the sandbox sees)
    ├── CommandExitError            the command ran and exited non-zero (124: timed out); ``.result``
    ├── SandboxClosedError          this Sandbox object was killed
    └── ServiceError                the service failed (5xx), is unreachable, or did not answer as the API does

The remote backend maps each (HTTP status, error code) the service sends onto
the most specific class here (``error_for``); a test walks every code the
service defines and proves it is mapped.  ``.code`` keeps the service's code,
``.status`` its HTTP status.
"""

from __future__ import annotations

__all__ = ["AuthenticationError", "CeilingExceededError", "CommandExitError", "CommandResult", "EntryInfo",
           "InvalidRequestError",
           "QuotaExceededError", "RateLimitError", "SandboxClosedError", "SandboxError", "SandboxFileError",
           "SandboxLostError", "SandboxNotFoundError", "ServiceError", "error_for"]


class CommandResult:
    __slots__ = ("stdout", "stderr", "exit_code")

    def __init__(self, stdout: str, stderr: str, exit_code: int) -> None:
        self.stdout, self.stderr, self.exit_code = stdout, stderr, exit_code

    def __repr__(self) -> str:
        return f"CommandResult(exit_code={self.exit_code}, stdout={self.stdout[:60]!r}, stderr={self.stderr[:60]!r})"


class EntryInfo:
    """A file or directory of the sandbox: ``name``, ``path``, ``type`` ("file", "dir", "symlink", "other",
    or "hidden": what the sandbox sees there is empty), ``size``, ``mode``, ``modified`` (a Unix time) and
    ``state`` ("writable", "read-only", "hidden": as a command inside sees it)."""

    __slots__ = ("name", "path", "type", "size", "mode", "modified", "state")

    def __init__(self, data: dict) -> None:
        self.name, self.path, self.type = str(data.get("name", "")), str(data.get("path", "")), str(data.get("type", ""))
        self.size, self.mode = int(data.get("size", 0)), int(data.get("mode", 0))
        self.modified, self.state = float(data.get("mtime", 0.0)), str(data.get("state", ""))

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


class AuthenticationError(SandboxError):
    """The API key is missing, unknown, revoked or expired."""


class SandboxNotFoundError(SandboxError):
    """No such sandbox for this key (never created, deleted, expired, or not yours)."""


class SandboxLostError(SandboxNotFoundError):
    """The sandbox died with its node (a cluster): its commands and files are gone; create another."""


class InvalidRequestError(SandboxError):
    """An argument or the policy is malformed; ``details`` lists the fields when the service said."""


class CeilingExceededError(SandboxError):
    """The request asks for more than the tenant's ceiling allows (domains, image, memory, CPUs, TTL)."""


class QuotaExceededError(SandboxError):
    """Too many sandboxes, too much memory or too many commands in use right now; retry later."""


RateLimitError = QuotaExceededError


class SandboxFileError(SandboxError):
    """A file path outside the workspace, a link, a missing or oversized file."""


class CommandExitError(SandboxError):
    """The command ran and exited non-zero (or timed out: exit_code 124)."""

    def __init__(self, result: CommandResult) -> None:
        super().__init__(f"command exited with status {result.exit_code}: {result.stderr.strip()[:200]}")
        self.result = result
        self.stdout, self.stderr, self.exit_code = result.stdout, result.stderr, result.exit_code


class SandboxClosedError(SandboxError):
    """The sandbox was closed; create another."""


class ServiceError(SandboxError):
    """The service failed, is unreachable, or answered in a way the API never does."""


# (status, code) -> class; a status alone for codes this SDK does not know yet.
_BY_CODE = {
    "unauthorized": AuthenticationError,
    "sandbox_not_found": SandboxNotFoundError,
    "sandbox_lost": SandboxLostError,
    "command_not_found": InvalidRequestError,
    "file_not_found": SandboxFileError,
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
