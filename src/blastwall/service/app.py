"""The HTTP API: FastAPI routes over the ``Manager``, and nothing else.

Every route but ``/v1/health`` and ``/openapi.json`` needs an API key
(``Authorization: Bearer bwk_...``, or ``X-API-Key``).  Every answer that is
not a success has the body ``{"error": {"code": ..., "message": ...}}`` (see
``errors.py``); a bug answers 500 with a generic message and is logged, never
shown.  Request bodies are limited while they are read: 1 MiB for JSON,
``--max-upload`` for file uploads (413 as soon as the limit is passed, or at
once when ``Content-Length`` says so).
"""

from __future__ import annotations

import contextlib
import json
import logging

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from blastwall.service.database import RETRY_AFTER, DatabaseUnavailable, database_message
from blastwall.service.errors import QuotaExceeded, ServiceError, Unauthorized, Unprocessable
from blastwall.service.schema import (CommandKilled, CommandList, CommandStarted, CommandStatus, CreateSandbox,
                                      EntryList, EntryOut, FilePath, FileWritten, Health, MadeDir, NetworkUpdate,
                                      RenameFile,
                                      RunCommand, SandboxList, SandboxOut, SetTimeout, StdinData, errors,
                                      openapi_security)
from blastwall.service.store import AuthFailure

__all__ = ["create_app"]

log = logging.getLogger("blastwall.service")

JSON_BODY_LIMIT = 1 << 20
MAX_WAITS_PER_TENANT = 8      # long polls (commands/{id}?wait=) one tenant may hold at once
MAX_STDIN_PER_TENANT = 8      # stdin writes (each may wait for its command to read) one tenant may hold at once


class _Waits:
    """At most ``limit`` long polls per tenant; beyond that a poll is answered without waiting."""

    def __init__(self, limit: int) -> None:
        import threading

        self._limit = limit
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self, tenant: str):
        with self._lock:
            granted = self._held.get(tenant, 0) < self._limit
            if granted:
                self._held[tenant] = self._held.get(tenant, 0) + 1
        try:
            yield granted
        finally:
            if granted:
                with self._lock:
                    self._held[tenant] -= 1
                    if not self._held[tenant]:
                        del self._held[tenant]


# --- the application ----------------------------------------------------------------------------------

def create_app(manager, store) -> FastAPI:
    app = FastAPI(title="blastwall sandbox service", version="1",
                  description="Ephemeral gVisor sandboxes for many tenants. See docs/service.md.",
                  docs_url=None, redoc_url=None, lifespan=_lifespan(manager))
    app.add_middleware(BodyLimit, json_limit=JSON_BODY_LIMIT, upload_limit=manager.config.max_upload)
    _error_handlers(app)
    waits = _Waits(MAX_WAITS_PER_TENANT)
    writes = _Waits(MAX_STDIN_PER_TENANT)
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_security(generate())
        return app.openapi_schema

    app.openapi = openapi

    def tenant_of(request: Request):
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            key = request.headers.get("x-api-key", "")
            if not key:
                raise Unauthorized("an API key is needed: send 'Authorization: Bearer <key>'")
        try:
            return store.authenticate(key.strip())
        except AuthFailure as exc:
            manager.audit("authenticate", "-", decision="deny", rule=f"key {exc.key_id}" if exc.key_id else "",
                          reason=f"{exc.reason} from {_client(request)}", strict=False)
            raise Unauthorized("the API key is invalid, revoked or expired") from None

    @app.get("/v1/health", tags=["service"], responses={200: {"model": Health}})
    async def health():  # On the event loop: busy worker threads never make a live service look dead.
        return {"status": "ok"}

    @app.post("/v1/sandboxes", status_code=201, tags=["sandboxes"],
              responses={201: {"model": SandboxOut}, **errors(400, 403, 413, 422, 429)})
    def create_sandbox(request: Request, body: CreateSandbox, tenant=Depends(tenant_of)):
        if body.image is not None and body.template is not None and body.image != body.template:
            raise Unprocessable("give image or template, not both", code="invalid_request")
        sandbox = manager.create(tenant, policy=body.policy, image=body.image or body.template, tier=body.tier,
                                 resources=body.resources.model_dump(exclude_none=True) if body.resources else None,
                                 ttl=body.ttl, client=_client(request), metadata=body.metadata)
        return sandbox.describe()

    @app.get("/v1/sandboxes", tags=["sandboxes"], responses={200: {"model": SandboxList}, **errors()})
    def list_sandboxes(tenant=Depends(tenant_of)):
        return {"sandboxes": [s.describe() for s in manager.list(tenant)]}

    @app.get("/v1/sandboxes/{sandbox_id}", tags=["sandboxes"],
             responses={200: {"model": SandboxOut}, **errors(404, 410)})
    def get_sandbox(sandbox_id: str, tenant=Depends(tenant_of)):
        return manager.get(tenant, sandbox_id).describe()

    @app.delete("/v1/sandboxes/{sandbox_id}", status_code=204, tags=["sandboxes"], responses=errors(404, 410))
    def delete_sandbox(request: Request, sandbox_id: str, tenant=Depends(tenant_of)):
        manager.delete(tenant, sandbox_id, client=_client(request))
        return Response(status_code=204)

    @app.post("/v1/sandboxes/{sandbox_id}/timeout", tags=["sandboxes"],
              responses={200: {"model": SandboxOut}, **errors(400, 403, 404, 410, 413, 422)})
    def set_timeout(sandbox_id: str, body: SetTimeout, tenant=Depends(tenant_of)):
        return manager.set_ttl(tenant, sandbox_id, body.ttl).describe()

    @app.post("/v1/sandboxes/{sandbox_id}/network", tags=["sandboxes"],
              responses={200: {"model": SandboxOut}, **errors(400, 403, 404, 410, 413, 422)})
    def update_network(sandbox_id: str, body: NetworkUpdate, tenant=Depends(tenant_of)):
        """Change what a running sandbox's new requests may reach (E2B's update_network)."""
        return manager.update_network(tenant, sandbox_id, body.allow, body.deny).describe()

    @app.post("/v1/sandboxes/{sandbox_id}/commands", tags=["commands"],
              status_code=200,
              responses={200: {"description": "NDJSON lines: {\"stdout\": text}, {\"stderr\": text}, and last "
                                              "{\"exit_code\": N, \"timed_out\": bool}",
                               "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
                         202: {"model": CommandStarted, "description": "background: started"},
                         **errors(400, 404, 409, 410, 413, 422, 429)})
    def run_command(sandbox_id: str, body: RunCommand, tenant=Depends(tenant_of)):
        command = manager.run(tenant, sandbox_id, body.cmd, envs=body.envs, cwd=body.cwd, timeout=body.timeout,
                              background=body.background, stdin=body.stdin, user=body.user)
        if body.background:
            return JSONResponse(status_code=202, content={"id": command.id, "pid": command.pid, "state": "running"})
        return StreamingResponse(_stream(command), media_type="application/x-ndjson")

    @app.get("/v1/sandboxes/{sandbox_id}/commands", tags=["commands"],
             responses={200: {"model": CommandList}, **errors(404, 410)})
    def list_commands(sandbox_id: str, tenant=Depends(tenant_of)):
        return {"commands": manager.list_commands(tenant, sandbox_id)}

    @app.get("/v1/sandboxes/{sandbox_id}/commands/{command_id}", tags=["commands"],
             responses={200: {"model": CommandStatus}, **errors(404, 410, 422)})
    def command_status(sandbox_id: str, command_id: str, wait: float = 0,
                       stdout_from: int | None = Query(None, ge=0), stderr_from: int | None = Query(None, ge=0),
                       tenant=Depends(tenant_of)):
        """A background command (by id or pid).  With ``stdout_from``/``stderr_from`` (byte offsets), only the
        output after them, and ``wait`` returns as soon as there is some (or the command ended)."""
        offsets = {"stdout_from": stdout_from, "stderr_from": stderr_from}
        command = manager.command(tenant, sandbox_id, command_id)
        if wait > 0:
            # Each wait holds a worker thread: a tenant gets a few at once, the rest answer at once.
            with waits.slot(tenant.name) as granted:
                if granted:
                    command.wait(min(wait, 60.0), **offsets)
        return command.status(stdout_from=stdout_from or 0, stderr_from=stderr_from or 0)

    @app.post("/v1/sandboxes/{sandbox_id}/commands/{command_id}/stdin", status_code=204, tags=["commands"],
              responses=errors(400, 404, 409, 410, 413, 422, 429))
    def send_stdin(sandbox_id: str, command_id: str, body: StdinData, tenant=Depends(tenant_of)):
        try:
            data = body.data.encode()
        except UnicodeEncodeError:  # A lone surrogate (\udc80) is JSON but not text.
            raise Unprocessable("data: not valid text (a lone surrogate)", code="invalid_request") from None
        with writes.slot(tenant.name) as granted:  # Each write may hold a worker thread for a while.
            if not granted:
                raise QuotaExceeded(f"this tenant already has {MAX_STDIN_PER_TENANT} stdin writes in progress")
            manager.send_stdin(tenant, sandbox_id, command_id, data)
        return Response(status_code=204)

    @app.post("/v1/sandboxes/{sandbox_id}/commands/{command_id}/stdin/close", status_code=204, tags=["commands"],
              responses=errors(404, 410))
    def close_stdin(sandbox_id: str, command_id: str, tenant=Depends(tenant_of)):
        manager.close_stdin(tenant, sandbox_id, command_id)
        return Response(status_code=204)

    @app.post("/v1/sandboxes/{sandbox_id}/commands/{command_id}/kill", tags=["commands"],
              responses={200: {"model": CommandKilled}, **errors(404, 410)})
    def kill_command(sandbox_id: str, command_id: str, tenant=Depends(tenant_of)):
        return manager.kill_command(tenant, sandbox_id, command_id)

    @app.put("/v1/sandboxes/{sandbox_id}/files/{path:path}", tags=["files"],
             responses={200: {"model": FileWritten}, **errors(400, 403, 404, 409, 410, 413, 507)},
             openapi_extra={"requestBody": {"required": True,
                                            "content": {"application/octet-stream": {"schema": {
                                                "type": "string", "format": "binary"}}}}})
    async def write_file(request: Request, sandbox_id: str, path: str, tenant=Depends(tenant_of)):
        # Looked up before the body is read: an unknown sandbox costs no upload.
        await run_in_threadpool(manager.get, tenant, sandbox_id)
        data = await request.body()  # BodyLimit stops it at --max-upload.
        size = await run_in_threadpool(manager.write_file, tenant, sandbox_id, path, data)
        return {"path": path, "size": size}

    @app.get("/v1/sandboxes/{sandbox_id}/files/{path:path}", tags=["files"],
             responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                    "format": "binary"}}}},
                        **errors(400, 403, 404, 410, 413)})
    async def read_file(sandbox_id: str, path: str, tenant=Depends(tenant_of)):
        fd, size = await run_in_threadpool(manager.open_file, tenant, sandbox_id, path)
        return StreamingResponse(_file_chunks(fd), media_type="application/octet-stream",
                                 headers={"content-length": str(size)})

    # Files beyond read and write: each held to the sandbox's plan like every other path into it.
    @app.get("/v1/sandboxes/{sandbox_id}/fs/list", tags=["files"],
             responses={200: {"model": EntryList}, **errors(400, 403, 404, 410, 422)})
    def list_files(sandbox_id: str, path: str = "/home/user", tenant=Depends(tenant_of)):
        return manager.list_files(tenant, sandbox_id, path)

    @app.get("/v1/sandboxes/{sandbox_id}/fs/stat", tags=["files"],
             responses={200: {"model": EntryOut}, **errors(400, 403, 404, 410, 422)})
    def stat_file(sandbox_id: str, path: str, tenant=Depends(tenant_of)):
        return manager.stat_file(tenant, sandbox_id, path)

    @app.post("/v1/sandboxes/{sandbox_id}/fs/mkdir", tags=["files"],
              responses={200: {"model": MadeDir}, **errors(400, 403, 404, 409, 410, 413, 422, 507)})
    def make_dir(sandbox_id: str, body: FilePath, tenant=Depends(tenant_of)):
        return manager.make_dir(tenant, sandbox_id, body.path)

    @app.post("/v1/sandboxes/{sandbox_id}/fs/remove", tags=["files"], status_code=204,
              responses=errors(400, 403, 404, 410, 413, 422))
    def remove_file(sandbox_id: str, body: FilePath, tenant=Depends(tenant_of)):
        manager.remove_file(tenant, sandbox_id, body.path)

    @app.post("/v1/sandboxes/{sandbox_id}/fs/rename", tags=["files"],
              responses={200: {"model": EntryOut}, **errors(400, 403, 404, 409, 410, 413, 422, 507)})
    def rename_file(sandbox_id: str, body: RenameFile, tenant=Depends(tenant_of)):
        return manager.rename_file(tenant, sandbox_id, body.source, body.target)

    return app


def _lifespan(manager):
    @contextlib.asynccontextmanager
    async def lifespan(app):
        # Each streamed command and each create holds a worker thread; the
        # default of 40 would cap the service at a few dozen busy sandboxes.
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = 256
        try:
            yield
        finally:
            # Here, not after the server returns: uvicorn re-raises the SIGTERM
            # it caught once it is done, which ends the process at once.
            await run_in_threadpool(manager.close)

    return lifespan


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown"


async def _stream(command):
    finished = False
    try:
        while True:
            event = await run_in_threadpool(_next_event, command)
            if event is None:
                if command.done.is_set() and command.events.empty():
                    # Ended without a last event (its pump failed): say how it ended anyway.
                    finished = True
                    yield json.dumps({"exit_code": command.exit_code, "timed_out": command.timed_out}) + "\n"
                    return
                continue
            kind, payload = event
            if kind == "exit":
                finished = True
                yield json.dumps(payload) + "\n"
                return
            yield json.dumps({kind: payload}) + "\n"
    finally:
        if not finished:
            # The client went away: the command stops (in a thread: killing it
            # runs `runsc kill`, which must not hold up the event loop).
            import threading

            threading.Thread(target=command.abandon, daemon=True).start()


def _next_event(command):
    import queue

    try:
        return command.events.get(timeout=1.0)
    except queue.Empty:
        return None


async def _file_chunks(fd: int):
    import os

    try:
        while True:
            chunk = await run_in_threadpool(os.read, fd, 1 << 20)
            if not chunk:
                return
            yield chunk
    finally:
        os.close(fd)


# --- errors ---------------------------------------------------------------------------------------------

_HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               413: "payload_too_large", 422: "invalid_request"}


def _error(status: int, code: str, message: str, details=None, headers=None) -> JSONResponse:
    error: dict = {"code": code, "message": message}
    if details:
        error["details"] = details
    return JSONResponse(status_code=status, content={"error": error}, headers=headers)


def _field(loc) -> str:
    """A validation error's field as the request names it: "envs.A", "cmd.0" (without pydantic's own
    names for the members of a union, such as "function-after[_text(), str]")."""
    import re

    return ".".join(str(part) for part in loc if part != "body" and (
        isinstance(part, int) or not re.fullmatch(r"[a-z-]+\[.*\]", str(part))))


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        headers = {"www-authenticate": "Bearer"} if exc.status == 401 else {}
        if exc.retry_after is not None:
            headers["retry-after"] = str(exc.retry_after)
        return JSONResponse(status_code=exc.status, content=exc.body(), headers=headers or None)

    @app.exception_handler(DatabaseUnavailable)
    async def database_unavailable(request: Request, exc: DatabaseUnavailable):
        # From any route (the key's check reads the database too): 503, never 401 or 500.
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return _error(503, "database_unavailable", database_message(exc), headers={"retry-after": str(RETRY_AFTER)})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "invalid_json", "the request body is not valid JSON")
        # Never echo the input back: it may be large, or someone's secret.
        details: list[dict] = []
        for e in errors:
            detail = {"field": _field(e.get("loc", ())), "problem": e.get("msg", "")}
            if detail not in details:
                details.append(detail)
        details = details[:20]
        summary = "; ".join(f"{d['field'] or 'body'}: {d['problem']}" for d in details[:3])
        return _error(422, "invalid_request", summary or "invalid request", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "invalid_request")
        message = exc.detail if isinstance(exc.detail, str) else "invalid request"
        if exc.status_code == 404:
            message = "no such route"
        elif exc.status_code == 405:
            message = "method not allowed on this route"
        return _error(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal_error", "internal error; the operator's log has the details")


# --- request body limits ----------------------------------------------------------------------------------

class _TooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class BodyLimit:
    """ASGI middleware: refuse bodies over the limit, early (Content-Length) or while they arrive."""

    def __init__(self, app, *, json_limit: int, upload_limit: int) -> None:
        self.app = app
        self.json_limit = json_limit
        self.upload_limit = upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "PUT" and "/files/" in scope["path"]
        limit = self.upload_limit if upload else self.json_limit
        length = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                length = value
        if length is not None:
            if not length.isdigit():
                await _send_json(send, 400, {"error": {"code": "invalid_request",
                                                       "message": "Content-Length is not a number"}})
                return
            if int(length) > limit:
                await _send_json(send, 413, {"error": {"code": "payload_too_large",
                                                       "message": f"the request body is larger than {limit} bytes"}})
                return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


async def _send_json(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})

