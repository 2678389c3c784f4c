"""The API's shapes: request bodies (checked strictly), answers and errors, as the OpenAPI document gives them.

Requests are strict: ``true`` or ``"5"`` is not a number, ``1.5`` is not a
whole one, an unknown field is refused, and text is text (a lone surrogate
such as ``"\\udc80"`` is valid JSON but no string of characters: 422).
Answers are documented, not re-validated: the test suite's API fuzzer
(schemathesis) checks every answer against these models.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = ["CreateSandbox", "FilePath", "NetworkUpdate", "RenameFile", "ResourcesIn", "RunCommand", "SetTimeout",
           "StdinData", "errors", "openapi_security"]


def _text(value: str) -> str:
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("not valid text (it holds a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_text)]


# --- request bodies ---------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ResourcesIn(_Strict):
    memory: int | Text | None = Field(None, description="bytes, or a size like 512M / 2G")
    cpus: float | None = Field(None, description="CPUs, may be fractional (at least 0.01)")
    pids: int | None = Field(None, description="most processes at once")


class CreateSandbox(_Strict):
    image: Text | None = Field(None, max_length=64, description="image name (default: the tenant's first)")
    template: Text | None = Field(None, max_length=64, description="E2B's name for image")
    tier: Text | None = Field(None, description="'container' (the default) or 'vm', where the tenant's ceiling "
                                                "allows it")
    policy: Text | dict | None = Field(None, description="a policy layer: TOML text or the same as a JSON object")
    resources: ResourcesIn | None = None
    ttl: int | None = Field(None, description="seconds until the sandbox is destroyed (default 300)")
    metadata: dict[Text, Text] | None = Field(None, description="up to 64 string pairs kept with the sandbox (E2B's)")


class SetTimeout(_Strict):
    ttl: int = Field(..., description="seconds from now until the sandbox is destroyed")


class RunCommand(_Strict):
    cmd: Text | list[Text] = Field(..., description="a shell command (run by /bin/bash -c) or an argv list")
    envs: dict[Text, Text] | None = None
    cwd: Text | None = Field(None, description="absolute, or relative to /home/user (the default)")
    timeout: float = Field(60.0, description="seconds (at most 86400); then the command is killed: timed_out")
    background: bool = Field(False, description="answer 202 with the command's id at once instead of streaming")
    stdin: bool = Field(False, description="background only: keep its stdin open for .../stdin")
    user: Text | None = Field(None, description="'user', the sandbox's one user (E2B's argument; 'root' is refused)")


class NetworkUpdate(_Strict):
    allow: list[Text] | None = Field(None, description="the hosts new requests may reach from now (replaces the "
                                                       "list; beyond it only within the tenant's ceiling)")
    deny: list[Text] | None = Field(None, description="hosts added to the deny list (deny wins)")


class StdinData(_Strict):
    data: Text = Field(..., description="text written to the command's stdin, UTF-8")


class FilePath(_Strict):
    path: Text = Field(..., max_length=4096, description="relative to /home/user, or absolute under it")


class RenameFile(_Strict):
    source: Text = Field(..., max_length=4096)
    target: Text = Field(..., max_length=4096)


# --- answers ------------------------------------------------------------------------------------------

class Health(BaseModel):
    status: str


class ResourcesOut(BaseModel):
    memory: str
    memory_bytes: int
    cpus: float
    pids: int


class NetworkOut(BaseModel):
    allow: list[str]
    deny: list[str] = Field([], description="hosts added by update_network")


class SandboxOut(BaseModel):
    id: str
    state: str = Field(..., description="'running'")
    image: str
    tier: str
    created_at: float = Field(..., description="Unix time")
    expires_at: float = Field(..., description="Unix time; then the sandbox is destroyed")
    ttl_remaining: float
    resources: ResourcesOut
    network: NetworkOut
    workdir: str
    metadata: dict[str, str]
    node: str | None = Field(None, description="a cluster's Ray node that runs it")


class SandboxList(BaseModel):
    sandboxes: list[SandboxOut]


class CommandStarted(BaseModel):
    id: str
    pid: int = Field(..., description="its number in the sandbox (1, 2, ...): usable wherever the id is")
    state: str


class CommandStatus(BaseModel):
    id: str
    pid: int
    state: str = Field(..., description="'running' or 'exited'")
    exit_code: int | None
    timed_out: bool
    sandbox_stopped: bool
    stdout: str = Field(..., description="output after stdout_from (all of it by default), up to the output cap")
    stderr: str
    stdout_end: int = Field(..., description="byte offset where stdout ends: the next stdout_from")
    stderr_end: int
    truncated: bool
    started_at: float


class CommandKilled(CommandStatus):
    killed: bool = Field(..., description="it was still running when asked")


class CommandInfo(BaseModel):
    id: str
    pid: int
    cmd: str
    args: list[str]
    cwd: str
    envs: dict[str, str]
    background: bool
    started_at: float


class CommandList(BaseModel):
    commands: list[CommandInfo]


class FileWritten(BaseModel):
    path: str
    size: int


class EntryOut(BaseModel):
    path: str
    name: str
    type: str = Field(..., description="file, dir, symlink, other, or hidden (the sandbox sees it empty)")
    size: int
    mode: int
    mtime: float
    state: str = Field(..., description="writable, read-only or hidden: as a command inside sees it")


class EntryList(BaseModel):
    entries: list[EntryOut]
    truncated: bool


class MadeDir(BaseModel):
    created: bool


class ErrorDetail(BaseModel):
    code: str = Field(..., description="stable: see docs/service.md")
    message: str
    details: list[dict] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


_WHY = {400: "malformed (invalid_json, invalid_request, invalid_path)", 401: "no valid API key (unauthorized)",
        403: "beyond the tenant's ceiling, or a path the sandbox could not touch either (ceiling_exceeded, "
             "path_refused)",
        404: "no such sandbox for this key, command or file (sandbox_not_found, command_not_found, file_not_found)",
        409: "the file exists, or the command's stdin is closed or full (file_exists, stdin_closed, stdin_full)",
        410: "the sandbox was lost with its cluster node (sandbox_lost)",
        413: "the body is larger than the limit (payload_too_large)",
        422: "a field is wrong: type, range or value (invalid_request, invalid_policy)",
        429: "the tenant's quota is in use (quota_exceeded)",
        503: "try again: the sandbox, the audit log or the database is unavailable, or the cluster full "
             "(Retry-After when it says when)",
        507: "the sandbox's disk is full (no_space)"}


def errors(*statuses: int) -> dict:
    """The ``responses`` of a route for these error statuses (401 and 503 are every authenticated route's)."""
    return {status: {"model": ErrorBody, "description": _WHY[status]} for status in sorted({401, 503, *statuses})}


def openapi_security(document: dict) -> dict:
    """The API key schemes, required by every operation but the health check."""
    schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["bearer"] = {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer bwk_..."}
    schemes["apiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    document["security"] = [{"bearer": []}, {"apiKey": []}]
    document["paths"]["/v1/health"]["get"]["security"] = []
    # FastAPI documents a 422 of its own shape for every route with parameters; this service never sends
    # that shape, and each route that can answer 422 says so above with the real body.
    for operations in document["paths"].values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422", {})
            if "HTTPValidationError" in str(answer.get("content", {})):
                del operation["responses"]["422"]
    for name in ("HTTPValidationError", "ValidationError"):
        document["components"].get("schemas", {}).pop(name, None)
    return document
