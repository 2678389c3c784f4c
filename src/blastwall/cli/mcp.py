"""``blastwall mcp``: an MCP server (stdio) exposing sandboxed tools to any MCP-speaking agent.

Tools: ``run_command`` (in the sandbox of the policy's tier over the
workspace: one session, booted on the first command) and the file tools
(``read_file``, ``write_file``, ``list_directory``, ``get_file_info``,
``make_directory``, ``remove_path``, ``move_path``), held to the same plan as
the command: a path the command could not write or read is refused with its
reason, as a tool error.  The workspace's files are also resources
(``resources/list``, ``resources/read``).  Configure an agent with one line,
e.g. ``{"command": "blastwall", "args": ["mcp", "--workspace", "/path"]}``.

The transport is MCP's stdio framing: one JSON-RPC 2.0 message per line.  The
official MCP SDK is not used here because its HTTP stack pins h11 >= 0.16,
which mitmproxy 11 (the egress gateway) cannot run with; the suite drives this
server with the official SDK as the client.

- Requests are served concurrently (a ``ping`` never waits for a command);
  replies are written whole, one per line, under one lock.
- ``notifications/cancelled`` kills the command of the request it names (and
  what it started); a cancelled request gets no reply, as the specification says.
- A call with a ``progressToken`` gets ``notifications/progress`` while its
  command runs (seconds elapsed, and the last line of output).
- Results carry ``structuredContent`` matching each tool's ``outputSchema``;
  tools carry annotations (read-only, destructive, idempotent, open world).
- Output is capped (``MAX_OUTPUT`` bytes of each stream, ``MAX_READ`` of a
  file), the cut marked in the text and in ``truncated``.
- A bad argument is a tool error (``isError``) the model can correct; an
  unknown tool or method, or a malformed message, is a JSON-RPC error.
- When the sandbox cannot be set up (a broken policy file, a missing
  primitive), every request is answered with that error and its fix.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import sys
import threading
import time

__all__ = ["Server", "serve"]

PROTOCOL_VERSIONS = ("2025-06-18", "2025-03-26", "2024-11-05")
MAX_LINE = 8 << 20          # bytes of one incoming message
MAX_OUTPUT = 256 << 10      # bytes of each of a command's streams in a result
MAX_READ = 1 << 20          # bytes of a file in a result
MAX_RESOURCES = 500         # files listed as resources
MAX_RESOURCE_DIRS = 200     # directories looked into for them
MAX_CONCURRENT = 8          # tool calls served at once; more wait their turn
PROGRESS_EVERY = 1.0        # seconds between progress notifications
STARTUP_ERROR = -32000      # every request's JSON-RPC error when the sandbox could not be set up (-32002 is MCP's
                            # "resource not found")


def _paths(*names: str) -> dict:
    return {"type": "object", "properties": {name: {"type": "string"} for name in names}, "required": list(names),
            "additionalProperties": False}


def _object(**properties) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties)}


_ENTRY = _object(name={"type": "string"}, path={"type": "string"}, type={"type": "string"}, size={"type": "integer"},
                 mode={"type": "integer"}, state={"type": "string"})


def _annotations(title: str, *, read_only: bool = False, destructive: bool = False, idempotent: bool = False,
                 open_world: bool = False) -> dict:
    return {"title": title, "readOnlyHint": read_only, "destructiveHint": destructive, "idempotentHint": idempotent,
            "openWorldHint": open_world}


def tools(open_world: bool = False) -> list[dict]:
    """The tools; ``open_world``: the policy lets commands reach some hosts."""
    return [
        {"name": "run_command",
         "description": "Run a bash command in a blastwall sandbox over the workspace (no secrets, no network "
                        "unless the policy allows it). Returns exit code, stdout and stderr (each capped).",
         "inputSchema": {"type": "object", "properties": {
             "command": {"type": "string", "description": "bash command"},
             "timeout": {"type": "number", "description": "seconds (default 60, at most 3600)",
                         "exclusiveMinimum": 0, "maximum": 3600}},
             "required": ["command"], "additionalProperties": False},
         "outputSchema": _object(exit_code={"type": "integer"}, stdout={"type": "string"},
                                 stderr={"type": "string"}, timed_out={"type": "boolean"},
                                 truncated={"type": "boolean"}),
         "annotations": _annotations("Run a command in the sandbox", destructive=True, open_world=open_world)},
        {"name": "read_file", "description": f"Read a text file inside the workspace (at most {MAX_READ} bytes).",
         "inputSchema": _paths("path"),
         "outputSchema": _object(content={"type": "string"}, truncated={"type": "boolean"}),
         "annotations": _annotations("Read a file", read_only=True, idempotent=True)},
        {"name": "write_file", "description": "Write a text file inside the workspace (whole or not at all).",
         "inputSchema": _paths("path", "content"),
         "outputSchema": _object(path={"type": "string"}, size={"type": "integer"}),
         "annotations": _annotations("Write a file", destructive=True, idempotent=True)},
        {"name": "list_directory", "description": "List a directory inside the workspace (default: the workspace).",
         "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}, "additionalProperties": False},
         "outputSchema": _object(entries={"type": "array", "items": _ENTRY}),
         "annotations": _annotations("List a directory", read_only=True, idempotent=True)},
        {"name": "get_file_info", "description": "Type, size, mode and whether the sandbox may write a path.",
         "inputSchema": _paths("path"), "outputSchema": _ENTRY,
         "annotations": _annotations("Describe a path", read_only=True, idempotent=True)},
        {"name": "make_directory", "description": "Make a directory (and its parents) inside the workspace.",
         "inputSchema": _paths("path"), "outputSchema": _object(created={"type": "boolean"}),
         "annotations": _annotations("Make a directory", idempotent=True)},
        {"name": "remove_path", "description": "Remove a file, or a directory with its contents, inside the workspace.",
         "inputSchema": _paths("path"), "outputSchema": _object(removed={"type": "string"}),
         "annotations": _annotations("Remove a path", destructive=True, idempotent=True)},
        {"name": "move_path", "description": "Move a file or directory to a new path inside the workspace.",
         "inputSchema": _paths("source", "target"), "outputSchema": _ENTRY,
         "annotations": _annotations("Move a path", destructive=True)},
    ]


TOOL_NAMES = tuple(tool["name"] for tool in tools())


def _error(msg_id, code: int, message: str) -> dict:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


def _result(msg_id, result: dict) -> dict:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


def _text(text: str, *, is_error: bool = False, structured: dict | None = None) -> dict:
    reply: dict = {"content": [{"type": "text", "text": text}], "isError": is_error}
    if structured is not None:
        reply["structuredContent"] = structured
    return reply


class BadArgument(ValueError):
    """A tool's argument is missing or of the wrong type: a tool error the model can correct."""


def _arg(args: dict, key: str, *, default: str | None = None) -> str:
    value = args.get(key, default)
    if not isinstance(value, str):
        raise BadArgument(f"needs a string {key!r}" if value is None else f"{key!r} must be a string")
    return value


def _cap(text: str, limit: int) -> tuple[str, bool]:
    data = text.encode()
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", "ignore"), True


def _entry(e) -> dict:
    return {"name": e.name, "path": e.path, "type": str(e.type), "size": e.size, "mode": e.mode, "state": e.state}


class _Call:
    """A tools/call being served: cancelled by notifications/cancelled (its command is killed)."""

    def __init__(self) -> None:
        self.cancelled = False
        self.handle = None
        self.lock = threading.Lock()

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            handle = self.handle
        if handle is not None:
            handle.kill()

    def attach(self, handle) -> None:
        with self.lock:
            self.handle = handle
            cancelled = self.cancelled
        if cancelled:
            handle.kill()


class Server:
    """One client on ``output``: each message dispatched; tool calls run on a pool of worker threads."""

    def __init__(self, sandbox, output, *, startup_error: str | None = None, open_world: bool = False) -> None:
        self.sandbox = sandbox
        self.output = output
        self.startup_error = startup_error
        self.tools = tools(open_world)
        self._write_lock = threading.Lock()
        self._calls: dict = {}
        self._calls_lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=MAX_CONCURRENT, thread_name_prefix="mcp")

    # -- the wire ------------------------------------------------------------------------------------
    def send(self, message: dict) -> None:
        line = json.dumps(message) + "\n"
        with self._write_lock:
            self.output.write(line)
            self.output.flush()

    def receive(self, line: bytes) -> None:
        if len(line) > MAX_LINE:
            self.send(_error(None, -32700, "message too large"))
            return
        if not line.strip():
            return
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            self.send(_error(None, -32700, "parse error"))
            return
        reply = self.dispatch(message)
        if reply is not None:
            self.send(reply)

    def close(self) -> None:
        with self._calls_lock:
            calls = list(self._calls.values())
        for call in calls:
            call.cancel()  # The client went away: so do its commands.
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- messages -----------------------------------------------------------------------------------
    def dispatch(self, message: object) -> dict | None:
        """The reply to one message now, or None (a notification, or a tool call answered later)."""
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0" \
                or not isinstance(message.get("method"), str):
            return _error(message.get("id") if isinstance(message, dict) else None, -32600, "invalid request")
        method, params = message["method"], message.get("params") or {}
        if "id" not in message:
            if method == "notifications/cancelled" and isinstance(params, dict):
                self._cancel(params.get("requestId"))
            return None  # Other notifications (notifications/initialized, ...): nothing to answer.
        msg_id = message["id"]
        if isinstance(msg_id, bool) or not isinstance(msg_id, (str, int)):
            return _error(None, -32600, "invalid request: id must be a string or a number")
        if not isinstance(params, dict):
            return _error(msg_id, -32602, "params must be an object")
        if method == "ping":
            return _result(msg_id, {})
        if self.startup_error is not None:
            return _error(msg_id, STARTUP_ERROR, self.startup_error)
        if method == "initialize":
            asked = params.get("protocolVersion")
            version = asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0]
            return _result(msg_id, {"protocolVersion": version,
                                    "capabilities": {"tools": {}, "resources": {}},
                                    "serverInfo": {"name": "blastwall", "version": "0.1.0"}})
        if method == "tools/list":
            return _result(msg_id, {"tools": self.tools})
        if method == "resources/list":
            return self._guarded(msg_id, lambda: _result(msg_id, {"resources": self._resources()}))
        if method == "resources/templates/list":
            return _result(msg_id, {"resourceTemplates": [
                {"uriTemplate": "workspace:///{path}", "name": "workspace file",
                 "description": "a file of the workspace, as the sandbox may read it"}]})
        if method == "resources/read":
            return self._guarded(msg_id, lambda: _result(msg_id, self._read_resource(params.get("uri"))))
        if method != "tools/call":
            return _error(msg_id, -32601, f"method not found: {method}")
        name, args = params.get("name"), params.get("arguments") or {}
        if name not in TOOL_NAMES:
            return _error(msg_id, -32602, f"unknown tool {str(name)[:100]!r}")
        if not isinstance(args, dict):
            return _result(msg_id, _text("arguments must be an object", is_error=True))
        meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
        call = _Call()
        key = (type(msg_id).__name__, msg_id)
        with self._calls_lock:
            self._calls[key] = call
        self._pool.submit(self._serve_call, msg_id, key, call, name, args, meta.get("progressToken"))
        return None

    def _cancel(self, request_id) -> None:
        if isinstance(request_id, bool) or not isinstance(request_id, (str, int)):
            return
        with self._calls_lock:
            call = self._calls.get((type(request_id).__name__, request_id))
        if call is not None:
            call.cancel()

    def _serve_call(self, msg_id, key, call: _Call, name: str, args: dict, progress_token) -> None:
        try:
            reply = self._tool(name, args, call, progress_token)
        except Exception as exc:  # noqa: BLE001 - a tool failure is reported, never a crash
            reply = _text(f"blastwall: {exc}", is_error=True)
        finally:
            with self._calls_lock:
                self._calls.pop(key, None)
        if not call.cancelled:  # A cancelled request is not answered.
            self.send(_result(msg_id, reply))

    def _guarded(self, msg_id, answer) -> dict:
        from blastwall.client import SandboxError

        try:
            return answer()
        except BadArgument as exc:
            return _error(msg_id, -32602, str(exc))
        except SandboxError as exc:
            return _error(msg_id, -32002 if exc.code == "file_not_found" else -32603, str(exc))

    # -- tools --------------------------------------------------------------------------------------
    def _tool(self, name: str, args: dict, call: _Call, progress_token) -> dict:
        from blastwall.client import SandboxError, SandboxFileError

        try:
            if name == "run_command":
                return self._run(args, call, progress_token)
            return self._file_tool(name, args)
        except BadArgument as exc:
            return _text(f"{name}: {exc}", is_error=True)
        except SandboxFileError as exc:
            # A tool error the agent can act on: what was refused and why, as a command inside would be.
            why = exc.details[0].get("reason") if exc.details and isinstance(exc.details[0], dict) else None
            return _text(f"{exc}" + (f" [{exc.code}{': ' + why if why else ''}]" if exc.code else ""), is_error=True)
        except SandboxError as exc:
            return _text(f"blastwall: {exc}", is_error=True)

    def _run(self, args: dict, call: _Call, progress_token) -> dict:
        from blastwall.client import CommandExitError, TimeoutException

        command, timeout = _arg(args, "command"), args.get("timeout", 60)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
            raise BadArgument("'timeout' must be a number of seconds, more than 0 and at most 3600")
        unknown = set(args) - {"command", "timeout"}
        if unknown:
            raise BadArgument(f"unknown argument {sorted(unknown)[0]!r} (known: command, timeout)")
        handle = self.sandbox.commands.run(command, background=True, timeout=float(timeout))
        call.attach(handle)
        streams = {"stdout": [], "stderr": []}
        kept = {"stdout": 0, "stderr": 0}
        truncated = False
        started = last_progress = time.monotonic()
        last_line = ""
        for stdout, stderr, _pty in handle:
            for name, text in (("stdout", stdout), ("stderr", stderr)):
                if text is None:
                    continue
                room = MAX_OUTPUT - kept[name]
                piece, cut = _cap(text, max(room, 0))
                streams[name].append(piece)
                kept[name] += len(piece.encode())
                truncated = truncated or cut
                last_line = (text.rstrip("\n").rsplit("\n", 1)[-1] or last_line)[-200:]
            now = time.monotonic()
            if progress_token is not None and now - last_progress >= PROGRESS_EVERY:
                last_progress = now
                self._progress(progress_token, now - started, last_line)
        try:
            result = handle.wait()
            failed = False
        except (CommandExitError, TimeoutException) as exc:
            result, failed = exc.result, True
        stdout, stderr = "".join(streams["stdout"]), "".join(streams["stderr"])
        mark = f"\n[... truncated at {MAX_OUTPUT} bytes]"
        out_mark = mark if truncated and kept["stdout"] >= MAX_OUTPUT else ""
        err_mark = mark if truncated and kept["stderr"] >= MAX_OUTPUT else ""
        text = (("timed out: killed after its timeout\n" if result.timed_out else "")
                + f"exit code: {result.exit_code}\n--- stdout ---\n{stdout}{out_mark}"
                + f"\n--- stderr ---\n{stderr}{err_mark}")
        return _text(text, is_error=failed, structured={"exit_code": result.exit_code, "stdout": stdout,
                                                        "stderr": stderr, "timed_out": result.timed_out,
                                                        "truncated": truncated})

    def _progress(self, token, elapsed: float, line: str) -> None:
        self.send({"jsonrpc": "2.0", "method": "notifications/progress",
                   "params": {"progressToken": token, "progress": round(elapsed, 1),
                              "message": f"running for {elapsed:.0f}s" + (f": {line}" if line else "")}})

    def _file_tool(self, name: str, args: dict) -> dict:
        files = self.sandbox.files
        known = {prop for tool in self.tools if tool["name"] == name for prop in tool["inputSchema"]["properties"]}
        unknown = set(args) - known
        if unknown:
            raise BadArgument(f"unknown argument {sorted(unknown)[0]!r} (known: {', '.join(sorted(known))})")
        if name == "read_file":
            data = files.read(_arg(args, "path"), format="bytes")
            text, cut = _cap(data.decode("utf-8", "replace"), MAX_READ)
            return _text(text + (f"\n[... truncated at {MAX_READ} bytes]" if cut else ""),
                         structured={"content": text, "truncated": cut})
        if name == "write_file":
            path, content = _arg(args, "path"), _arg(args, "content")
            files.write(path, content)
            size = len(content.encode())
            return _text(f"wrote {size} bytes to {path}", structured={"path": path, "size": size})
        if name == "list_directory":
            entries = [_entry(e) for e in files.list(_arg(args, "path", default=""))]
            lines = [f"{e['type']}\t{e['size']}\t{e['state']}\t{e['name']}" for e in entries]
            return _text("\n".join(lines) if lines else "(empty)", structured={"entries": entries})
        if name == "get_file_info":
            e = _entry(files.get_info(_arg(args, "path")))
            return _text(f"type: {e['type']}\nsize: {e['size']}\nmode: {e['mode']:o}\nsandbox: {e['state']}",
                         structured=e)
        if name == "make_directory":
            created = bool(files.make_dir(_arg(args, "path")))
            return _text("created" if created else "already a directory", structured={"created": created})
        if name == "remove_path":
            path = _arg(args, "path")
            files.remove(path)
            return _text(f"removed {path}", structured={"removed": path})
        source, target = _arg(args, "source"), _arg(args, "target")
        moved = _entry(files.rename(source, target))
        return _text(f"moved {source} to {target}", structured=moved)

    # -- resources ------------------------------------------------------------------------------------
    def _resources(self) -> list[dict]:
        """The workspace's files (breadth first, at most MAX_RESOURCES from MAX_RESOURCE_DIRS directories),
        as the file tools see them."""
        found, level, visited = [], [""], 0
        while level and len(found) < MAX_RESOURCES and visited < MAX_RESOURCE_DIRS:
            below = []
            for directory in level[:MAX_RESOURCE_DIRS - visited]:
                visited += 1
                for entry in self.sandbox.files.list(directory):
                    relative = _relative(self.sandbox.workspace, entry.path)
                    if entry.type == "dir":
                        below.append(relative)
                    elif entry.type == "file" and len(found) < MAX_RESOURCES:
                        found.append({"uri": f"workspace:///{relative}", "name": relative, "size": entry.size,
                                      "mimeType": "application/octet-stream"})
            level = below
        return found

    def _read_resource(self, uri) -> dict:
        if not isinstance(uri, str) or not uri.startswith("workspace:///"):
            raise BadArgument("resources/read needs a workspace:///PATH uri")
        data = self.sandbox.files.read(uri[len("workspace:///"):], format="bytes")[:MAX_READ]
        try:
            return {"contents": [{"uri": uri, "mimeType": "text/plain", "text": data.decode()}]}
        except UnicodeDecodeError:
            return {"contents": [{"uri": uri, "mimeType": "application/octet-stream",
                                  "blob": base64.b64encode(data).decode()}]}


def _relative(workspace: str, path: str) -> str:
    for root in (workspace, "/home/user"):
        if path.startswith(root.rstrip("/") + "/"):
            return path[len(root.rstrip("/")) + 1:]
    return path


def serve(sandbox, stdin=None, stdout=None, *, startup_error: str | None = None) -> int:
    """Serve one client on stdin/stdout until it closes stdin; then its running commands are killed."""
    stdin = stdin or sys.stdin.buffer
    open_world = bool(getattr(getattr(sandbox, "policy", None), "network", None)
                      and sandbox.policy.network.allow) if sandbox is not None else False
    server = Server(sandbox, stdout or sys.stdout, startup_error=startup_error, open_world=open_world)
    try:
        while True:
            line = stdin.readline(MAX_LINE + 1)
            if not line:
                return 0
            if len(line) > MAX_LINE:
                while line and not line.endswith(b"\n"):  # Skip the rest of it.
                    line = stdin.readline(MAX_LINE)
                server.send(_error(None, -32700, "message too large"))
                continue
            server.receive(line)
    finally:
        server.close()
