"""A client of `blastwall mcp` written with the official MCP Python SDK (run by .venv-mcp's Python).

``python mcp_client.py SCENARIO -- SERVER-ARGV...`` runs one scenario against the server started with
SERVER-ARGV over stdio and prints one JSON object: what the client saw.  The test judges it, and the host.
"""

from __future__ import annotations

import json
import sys
import time

import anyio
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import McpError


def text(result) -> str:
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def basic(session) -> dict:
    listed = await session.list_tools()
    out: dict = {"tools": {t.name: {"annotations": t.annotations.model_dump() if t.annotations else None,
                                    "output_schema": bool(t.outputSchema)} for t in listed.tools}}
    wrote = await session.call_tool("write_file", {"path": "hello.py", "content": "print('hi')"})
    out["write"] = wrote.structuredContent
    ran = await session.call_tool("run_command", {"command": "python3 hello.py; echo err >&2"})
    out["run"] = {"is_error": ran.isError, "structured": ran.structuredContent, "text": text(ran)}
    failed = await session.call_tool("run_command", {"command": "exit 3"})
    out["failed"] = {"is_error": failed.isError, "exit_code": failed.structuredContent["exit_code"]}
    out["read"] = (await session.call_tool("read_file", {"path": "hello.py"})).structuredContent
    out["list"] = [e["name"] for e in (await session.call_tool("list_directory", {})).structuredContent["entries"]]
    resources = await session.list_resources()
    out["resources"] = [str(r.uri) for r in resources.resources]
    read = await session.read_resource("workspace:///hello.py")
    out["resource_text"] = read.contents[0].text
    bad = await session.call_tool("run_command", {"command": 5})
    out["bad_argument"] = {"is_error": bad.isError, "text": text(bad)}
    refused = await session.call_tool("write_file", {"path": ".git/hooks/pre-commit", "content": "echo pwned"})
    out["refused"] = {"is_error": refused.isError, "text": text(refused)}
    try:
        await session.call_tool("no_such_tool", {})
        out["unknown_tool"] = "answered"
    except McpError as exc:
        out["unknown_tool"] = exc.error.code
    return out


async def concurrent_and_cancel(session) -> dict:
    out: dict = {}
    async with anyio.create_task_group() as group:
        rid = session._request_id  # the id the next request gets: the one to cancel
        state = {}

        async def long_call():
            try:
                state["result"] = await session.call_tool("run_command", {"command": "sleep 4; touch after-cancel"})
            except anyio.get_cancelled_exc_class():
                state["cancelled"] = True
                raise

        group.start_soon(long_call)
        await anyio.sleep(1.5)  # booted and running
        started = time.monotonic()
        await session.send_ping()
        out["ping_seconds"] = time.monotonic() - started
        quick = await session.call_tool("run_command", {"command": "echo quick"})
        out["quick"] = quick.structuredContent["stdout"]
        out["quick_seconds"] = time.monotonic() - started
        await session.send_notification(types.ClientNotification(types.CancelledNotification(
            params=types.CancelledNotificationParams(requestId=rid, reason="the test cancels it"))))
        await anyio.sleep(0.5)
        group.cancel_scope.cancel()
    control = await session.call_tool("run_command", {"command": "sleep 1; touch control"})
    out["control"] = control.isError
    await anyio.sleep(4.5)  # past when the cancelled command would have touched its file
    out["after"] = (await session.call_tool("run_command", {"command": "ls"})).structuredContent["stdout"]
    return out


async def progress(session) -> dict:
    seen: list = []

    async def on_progress(value, total, message):
        seen.append((value, message))

    result = await session.call_tool("run_command", {"command": "for i in 1 2 3; do echo line$i; sleep 1; done"},
                                     progress_callback=on_progress)
    return {"progress": seen, "stdout": result.structuredContent["stdout"]}


async def capped(session) -> dict:
    result = await session.call_tool("run_command", {"command": "head -c 9000000 /dev/zero | tr '\\0' a"})
    return {"length": len(result.structuredContent["stdout"]), "truncated": result.structuredContent["truncated"],
            "text_length": len(text(result)), "marked": "truncated" in text(result)}


async def startup(session) -> dict:
    raise AssertionError("not reached: initialize is expected to fail")


SCENARIOS = {"basic": basic, "concurrent_and_cancel": concurrent_and_cancel, "progress": progress,
             "capped": capped, "startup": startup}


async def main(scenario: str, argv: list[str], cwd: str) -> dict:
    params = StdioServerParameters(command=argv[0], args=argv[1:], cwd=cwd, env=json.loads(sys.stdin.read()))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            try:
                await session.initialize()
            except McpError as exc:
                return {"initialize_error": exc.error.code, "message": exc.error.message}
            return await SCENARIOS[scenario](session)


if __name__ == "__main__":
    scenario, cwd, separator, *server = sys.argv[1:]
    assert separator == "--"
    print(json.dumps(anyio.run(main, scenario, server, cwd)))
