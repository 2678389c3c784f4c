"""`blastwall mcp` spoken to as an MCP client would, over stdio."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import SECRET, bw_env, needs_bwrap

pytestmark = needs_bwrap


class Client:
    def __init__(self, *, home, workspace):
        self.proc = subprocess.Popen([sys.executable, "-m", "blastwall", "mcp", "--workspace", str(workspace)],
                                     cwd=workspace, env=bw_env(home), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.next_id = 0

    def raw(self, line: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def call(self, method: str, params: dict | None = None) -> dict:
        self.next_id += 1
        return self.raw(json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params or {}}))

    def tool(self, name: str, **arguments) -> dict:
        return self.call("tools/call", {"name": name, "arguments": arguments})["result"]

    def close(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(timeout=30)


def test_handshake_tools_and_calls(home, workspace):
    client = Client(home=home, workspace=workspace)
    try:
        init = client.call("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                          "clientInfo": {"name": "test", "version": "1"}})
        assert init["result"]["protocolVersion"] == "2025-06-18"
        assert "tools" in init["result"]["capabilities"]
        client.proc.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")
        names = [t["name"] for t in client.call("tools/list")["result"]["tools"]]
        assert names == ["run_command", "read_file", "write_file", "list_directory", "get_file_info",
                         "make_directory", "remove_path", "move_path"]
        assert client.tool("write_file", path="hello.py", content="print('hi')")["isError"] is False
        result = client.tool("run_command", command="python3 hello.py; cat ~/.aws/credentials")
        assert "hi" in result["content"][0]["text"] and SECRET not in result["content"][0]["text"]
        assert result["isError"] is True  # cat failed: the secret is hidden
        assert (workspace / "hello.py").read_text() == "print('hi')"
        assert client.tool("read_file", path="hello.py")["content"][0]["text"] == "print('hi')"
    finally:
        assert client.close() == 0
    assert workspace.exists()  # The user's workspace stays.


def test_attacks_on_the_server(home, workspace):
    client = Client(home=home, workspace=workspace)
    try:
        assert client.tool("read_file", path="../../../etc/passwd")["isError"] is True
        assert client.tool("write_file", path="/etc/blastwall-mcp", content="x")["isError"] is True
        assert client.raw("this is not json")["error"]["code"] == -32700
        assert client.raw('{"jsonrpc": "2.0", "id": 9, "method": 5}')["error"]["code"] == -32600
        assert client.call("prompts/list")["error"]["code"] == -32601
        assert client.call("tools/call", {"name": "rm_rf", "arguments": {}})["error"]["code"] == -32602
        # A bad argument is a tool error the model can correct, not a protocol error.
        bad = client.call("tools/call", {"name": "run_command", "arguments": {"command": 5}})["result"]
        assert bad["isError"] is True and "'command' must be a string" in bad["content"][0]["text"]
        assert client.call("ping")["result"] == {}  # Still serving after all that.
    finally:
        client.close()
    import os

    assert not os.path.exists("/etc/blastwall-mcp")
