"""The service's errors: each one status, one stable code, one clear message.

::

    ServiceError                       (status, code)
    ├── BadRequest                     400 invalid_request, invalid_json, invalid_path
    ├── Unauthorized                   401 unauthorized
    ├── Forbidden                      403 ceiling_exceeded, path_refused (a path the sandbox could not
    │                                      touch either: read-only or hidden in it; details say why)
    ├── NotFound                       404 sandbox_not_found, command_not_found, file_not_found, not_found
    ├── Conflict                       409 file_exists, stdin_closed (the command's stdin is closed or was
    │                                      never opened), stdin_full (the command does not read it)
    ├── Gone                           410 sandbox_lost (its node died with it: a cluster)
    ├── PayloadTooLarge                413 payload_too_large
    ├── Unprocessable                  422 invalid_policy, invalid_request
    ├── QuotaExceeded                  429 quota_exceeded
    ├── InsufficientStorage            507 no_space (the sandbox's disk is full)
    └── Unavailable                    503 sandbox_unavailable, audit_unavailable, shutting_down,
                                           database_unavailable (with Retry-After: nothing was done),
                                           cluster_full (no Ray node has room now; Retry-After)

Anything else that escapes a route is a bug: the application answers 500
``internal_error`` with a generic message and logs the traceback; clients
never see one.  The SDK maps each code onto its own error classes
(``blastwall.client``), and a test proves every code here is mapped.
"""

from __future__ import annotations

__all__ = ["CODES", "BadRequest", "Conflict", "Forbidden", "Gone", "InsufficientStorage", "NotFound", "PayloadTooLarge",
           "QuotaExceeded", "ServiceError", "Unauthorized", "Unavailable", "Unprocessable"]


class ServiceError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, details: list | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details
        self.retry_after = retry_after  # Seconds, sent as Retry-After.

    def body(self) -> dict:
        error: dict = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}


class BadRequest(ServiceError):
    status, code = 400, "invalid_request"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class Forbidden(ServiceError):
    status, code = 403, "ceiling_exceeded"


class NotFound(ServiceError):
    status, code = 404, "sandbox_not_found"


class Conflict(ServiceError):
    status, code = 409, "file_exists"


class Gone(ServiceError):
    status, code = 410, "sandbox_lost"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class Unprocessable(ServiceError):
    status, code = 422, "invalid_policy"


class QuotaExceeded(ServiceError):
    status, code = 429, "quota_exceeded"


class Unavailable(ServiceError):
    status, code = 503, "sandbox_unavailable"


class InsufficientStorage(ServiceError):
    status, code = 507, "no_space"


def from_answer(error: dict) -> ServiceError:
    """The error a node agent answered with (status, code, message, details, retry_after), as raised here."""
    classes = (BadRequest, Unauthorized, Forbidden, NotFound, Conflict, Gone, PayloadTooLarge, Unprocessable,
               QuotaExceeded, Unavailable, InsufficientStorage)
    kind = {cls.status: cls for cls in classes}.get(error.get("status"), ServiceError)
    return kind(str(error.get("message", "")), code=str(error.get("code", "")) or None, details=error.get("details"),
                retry_after=error.get("retry_after"))


def as_answer(exc: ServiceError) -> dict:
    return {"status": exc.status, "code": exc.code, "message": exc.message, "details": exc.details,
            "retry_after": exc.retry_after}


# Every (status, code) the service answers with; the SDK's mapping test walks this.
CODES = {
    (400, "invalid_request"), (400, "invalid_json"), (400, "invalid_path"),
    (401, "unauthorized"),
    (403, "ceiling_exceeded"), (403, "path_refused"),
    (409, "file_exists"), (409, "stdin_closed"), (409, "stdin_full"),
    (410, "sandbox_lost"),
    (404, "sandbox_not_found"), (404, "command_not_found"), (404, "file_not_found"), (404, "not_found"),
    (405, "method_not_allowed"),
    (413, "payload_too_large"),
    (422, "invalid_policy"), (422, "invalid_request"),
    (429, "quota_exceeded"),
    (500, "internal_error"),
    (503, "sandbox_unavailable"), (503, "audit_unavailable"), (503, "shutting_down"), (503, "database_unavailable"), (503, "cluster_full"),
    (507, "no_space"),
}
