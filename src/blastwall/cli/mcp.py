"""``blastwall mcp``: an MCP server (stdio) exposing sandboxed tools to any MCP-speaking agent.

Tools: ``run_command`` (in a new sandbox of the policy's tier over the
workspace) and the file tools (``read_file``, ``write_file``,
``list_directory``, ``get_file_info``, ``make_directory``, ``remove_path``,
``move_path``), held to the same plan as the command: a path the command
could not write or read is refused with its reason, as a tool error.
Configure an agent with one line, e.g. ``{"command": "blastwall", "args":
["mcp", "--workspace", "/path/to/project"]}``.

The transport is MCP's stdio framing: one JSON-RPC 2.0 message per line.  The
official MCP SDK is not used because its HTTP stack pins h11 >= 0.16, which
mitmproxy 11 (the egress gateway) cannot run with; this handler only speaks the
small stdio subset (initialize, ping, tools/list, tools/call).  Every message
is answered or refused; malformed input gets a JSON-RPC error and changes nothing.
"""

from __future__ import annotations

import json
import sys

__all__ = ["serve"]

PROTOCOL_VERSIONS = ("2025-06-18", "2025-03-26", "2024-11-05")


def _paths(*names: str) -> dict:
    return {"type": "object", "properties": {name: {"type": "string"} for name in names}, "required": list(names)}
MAX_LINE = 8 << 20

TOOLS = [
    {"name": "run_command",
     "description": "Run a shell command in a blastwall sandbox over the workspace (no secrets, no network "
                    "unless the policy allows it). Returns exit code, stdout and stderr.",
     "inputSchema": {"type": "object", "properties": {
         "command": {"type": "string", "description": "shell command"},
         "timeout": {"type": "number", "description": "seconds (default 60)"}},
         "required": ["command"]}},
    {"name": "read_file", "description": "Read a text file inside the workspace.",
     "inputSchema": _paths("path")},
    {"name": "write_file", "description": "Write a text file inside the workspace (whole or not at all).",
     "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                     "required": ["path", "content"]}},
    {"name": "list_directory", "description": "List a directory inside the workspace (default: the workspace).",
     "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}}},
    {"name": "get_file_info", "description": "Type, size, mode and whether the sandbox may write a path.",
     "inputSchema": _paths("path")},
    {"name": "make_directory", "description": "Make a directory (and its parents) inside the workspace.",
     "inputSchema": _paths("path")},
    {"name": "remove_path", "description": "Remove a file, or a directory with its contents, inside the workspace.",
     "inputSchema": _paths("path")},
    {"name": "move_path", "description": "Move a file or directory to a new path inside the workspace.",
     "inputSchema": _paths("source", "target")},
]


def _error(msg_id, code: int, message: str) -> dict:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


def _text(text: str, *, is_error: bool = False) -> dict:
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


def handle(message: object, sandbox) -> dict | None:
    """One JSON-RPC message to its reply (None for notifications)."""
    from blastwall.client import CommandExitError, SandboxFileError, TimeoutException

    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0" or not isinstance(message.get("method"), str):
        return _error(message.get("id") if isinstance(message, dict) else None, -32600, "invalid request")
    method, msg_id, params = message["method"], message.get("id"), message.get("params") or {}
    if "id" not in message:
        return None  # A notification (e.g. notifications/initialized): no reply.
    if not isinstance(params, dict):
        return _error(msg_id, -32602, "params must be an object")
    if method == "initialize":
        asked = params.get("protocolVersion")
        version = asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0]
        return {"jsonrpc": "2.0", "id": msg_id, "result": {
            "protocolVersion": version, "capabilities": {"tools": {}},
            "serverInfo": {"name": "blastwall", "version": "0.1.0"}}}
    if method == "ping":
        return {"jsonrpc": "2.0", "id": msg_id, "result": {}}
    if method == "tools/list":
        return {"jsonrpc": "2.0", "id": msg_id, "result": {"tools": TOOLS}}
    if method != "tools/call":
        return _error(msg_id, -32601, f"method not found: {method}")
    name, args = params.get("name"), params.get("arguments") or {}
    if not isinstance(args, dict):
        return _error(msg_id, -32602, "arguments must be an object")
    try:
        if name == "run_command":
            command, timeout = args.get("command"), args.get("timeout", 60)
            if not isinstance(command, str) or not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
                return _error(msg_id, -32602, "run_command needs a string command and a numeric timeout")
            try:
                result = sandbox.commands.run(command, timeout=max(1.0, min(float(timeout), 3600.0)))
                error = False
            except (CommandExitError, TimeoutException) as exc:
                result, error = exc.result, True
            text = ("timed out: killed after its timeout\n" if result.timed_out else "") + f"exit code: {result.exit_code}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
            reply = _text(text, is_error=error)
        elif name in _FILE_TOOLS:
            reply = _file_tool(name, args, sandbox.files)
        else:
            return _error(msg_id, -32602, f"unknown tool {name!r}")
    except SandboxFileError as exc:
        # A tool error the agent can act on: what was refused and why, as a command inside would be.
        why = exc.details[0].get("reason") if exc.details and isinstance(exc.details[0], dict) else None
        reply = _text(f"{exc}" + (f" [{exc.code}{': ' + why if why else ''}]" if exc.code else ""), is_error=True)
    except Exception as exc:  # noqa: BLE001 - a tool failure is reported, never a crash
        reply = _text(f"blastwall: {exc}", is_error=True)
    return {"jsonrpc": "2.0", "id": msg_id, "result": reply}


_FILE_TOOLS = ("read_file", "write_file", "list_directory", "get_file_info", "make_directory", "remove_path",
               "move_path")


def _file_tool(name: str, args: dict, files) -> dict:
    """One file tool's result; a bad argument or a refusal is a tool error (SandboxFileError), not a crash."""
    from blastwall.client import SandboxFileError

    def arg(key: str, default: str | None = None) -> str:
        value = args.get(key, default)
        if not isinstance(value, str):
            raise SandboxFileError(f"{name} needs a string {key}", code="invalid_argument")
        return value

    if name == "read_file":
        return _text(files.read(arg("path")))
    if name == "write_file":
        content = arg("content")
        files.write(arg("path"), content)
        return _text(f"wrote {len(content.encode())} bytes to {arg('path')}")
    if name == "list_directory":
        entries = files.list(arg("path", ""))
        lines = [f"{e.type}\t{e.size}\t{e.state}\t{e.name}" for e in entries]
        return _text("\n".join(lines) if lines else "(empty)")
    if name == "get_file_info":
        e = files.get_info(arg("path"))
        return _text(f"type: {e.type}\nsize: {e.size}\nmode: {e.mode:o}\nsandbox: {e.state}")
    if name == "make_directory":
        return _text("created" if files.make_dir(arg("path")) else "already a directory")
    if name == "remove_path":
        files.remove(arg("path"))
        return _text(f"removed {arg('path')}")
    files.rename(arg("source"), arg("target"))
    return _text(f"moved {arg('source')} to {arg('target')}")


def serve(sandbox, stdin=None, stdout=None) -> int:
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout
    while True:
        line = stdin.readline(MAX_LINE + 1)
        if not line:
            return 0
        if len(line) > MAX_LINE:
            reply = _error(None, -32700, "message too large")
            while line and not line.endswith(b"\n"):  # Skip the rest of it.
                line = stdin.readline(MAX_LINE)
        elif not line.strip():
            continue
        else:
            try:
                message = json.loads(line)
            except (ValueError, RecursionError):
                reply = _error(None, -32700, "parse error")
            else:
                reply = handle(message, sandbox)
        if reply is not None:
            stdout.write(json.dumps(reply) + "\n")
            stdout.flush()
