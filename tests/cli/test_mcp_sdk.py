"""`blastwall mcp` driven by the official MCP Python SDK as the client (in its own environment, .venv-mcp).

Each scenario is a client program (tests/cli/mcp_client.py); what it saw is judged here, and the host too:
a cancelled command's file never appears while a control command's does, the refused hook is not written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import bw_env, needs_bwrap

ROOT = Path(__file__).resolve().parents[2]
MCP_PYTHON = ROOT / ".venv-mcp" / "bin" / "python"

pytestmark = [needs_bwrap, pytest.mark.skipif(not MCP_PYTHON.exists(), reason=(
    "the official MCP SDK is not installed in .venv-mcp (bash scripts/setup.sh test installs it)"))]


def client(scenario: str, home, workspace, *extra: str) -> dict:
    argv = [sys.executable, "-m", "blastwall", "mcp", "--workspace", str(workspace), *extra]
    env = {**bw_env(home), "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([str(MCP_PYTHON), str(Path(__file__).with_name("mcp_client.py")), scenario,
                          str(workspace), "--", *argv], input=json.dumps(env), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_tools_results_resources_and_errors(home, workspace):
    (workspace / ".git" / "hooks").mkdir(parents=True)
    seen = client("basic", home, workspace)
    tools = seen["tools"]
    assert set(tools) == {"run_command", "read_file", "write_file", "list_directory", "get_file_info",
                          "make_directory", "remove_path", "move_path"}
    assert all(t["output_schema"] for t in tools.values())  # the SDK validated each structured result against it
    assert tools["read_file"]["annotations"]["readOnlyHint"] is True
    assert tools["run_command"]["annotations"]["destructiveHint"] is True
    assert seen["write"] == {"path": "hello.py", "size": 11} and (workspace / "hello.py").read_text() == "print('hi')"
    assert seen["run"]["is_error"] is False
    assert seen["run"]["structured"] | {"stdout": "", "stderr": ""} == {"exit_code": 0, "stdout": "", "stderr": "",
                                                                        "timed_out": False, "truncated": False}
    assert (seen["run"]["structured"]["stdout"], seen["run"]["structured"]["stderr"]) == ("hi\n", "err\n")
    assert seen["failed"] == {"is_error": True, "exit_code": 3}
    assert seen["read"] == {"content": "print('hi')", "truncated": False}
    assert "hello.py" in seen["list"]
    assert "workspace:///hello.py" in seen["resources"] and seen["resource_text"] == "print('hi')"
    assert seen["bad_argument"]["is_error"] is True and "must be a string" in seen["bad_argument"]["text"]
    assert seen["refused"]["is_error"] is True and not (workspace / ".git" / "hooks" / "pre-commit").exists()
    assert seen["unknown_tool"] == -32602


def test_requests_are_concurrent_and_cancellation_kills_the_command(home, workspace):
    seen = client("concurrent_and_cancel", home, workspace)
    assert seen["ping_seconds"] < 1.0, seen  # not behind the 4 s command
    assert seen["quick"] == "quick\n" and seen["quick_seconds"] < 3.0, seen
    assert seen["control"] is False and (workspace / "control").exists()  # positive control: a command ran to its end
    assert not (workspace / "after-cancel").exists(), seen  # the cancelled one was killed before its touch
    assert "after-cancel" not in seen["after"]


def test_progress_while_a_command_runs(home, workspace):
    seen = client("progress", home, workspace)
    assert seen["stdout"] == "line1\nline2\nline3\n"
    assert len(seen["progress"]) >= 1 and all(value > 0 for value, _ in seen["progress"])
    assert any("line" in (message or "") for _, message in seen["progress"])


def test_output_is_capped_and_the_cut_marked(home, workspace):
    from blastwall.cli.mcp import MAX_OUTPUT

    seen = client("capped", home, workspace)
    assert seen["truncated"] is True and seen["marked"] is True
    assert seen["length"] == MAX_OUTPUT and seen["text_length"] < MAX_OUTPUT + 1000


def test_a_broken_policy_is_a_clear_error_for_the_client(home, workspace, tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[network\nallow = 5\n")
    seen = client("startup", home, workspace, "--policy", str(broken))
    assert seen["initialize_error"] == -32000
    assert "cannot start" in seen["message"] and "broken.toml" in seen["message"]
