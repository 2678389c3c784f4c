"""The SDK (local backend): its own calls, and attacks on its file API.

What both backends do alike is tested once for both: tests/service/test_sdk_backends.py.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from blastwall.client import AsyncSandbox, Sandbox, SandboxClosedError, SandboxFileError
from tests.conftest import SECRET, bw_env, needs_bwrap

pytestmark = needs_bwrap


@pytest.fixture
def env(home):
    return {**os.environ, **bw_env(home)}


def test_create_write_run_read_close(env):
    with Sandbox.create(environ=env) as sbx:
        workspace = sbx.workspace
        sbx.files.write("src/hello.py", "print('hi from the sandbox')")
        result = sbx.commands.run("python3 src/hello.py > out.txt; cat out.txt")
        assert result.stdout == "hi from the sandbox\n" and result.exit_code == 0
        assert sbx.files.read("out.txt") == "hi from the sandbox\n"
        assert sbx.files.read("out.txt", format="bytes") == b"hi from the sandbox\n"
    assert not os.path.exists(workspace)  # Destroyed with the sandbox.
    with pytest.raises(SandboxClosedError):
        sbx.commands.run("true")


def test_envs_and_cwd_and_no_secrets(env):
    env = {**env, "GITHUB_TOKEN": SECRET}
    with Sandbox.create(environ=env) as sbx:
        sbx.files.write("sub/x.txt", "x")
        result = sbx.commands.run("pwd; echo $GREETING; env", envs={"GREETING": "hello"}, cwd="sub")
        assert result.stdout.startswith(os.path.join(sbx.workspace, "sub") + "\nhello\n")
        assert SECRET not in result.stdout


@pytest.mark.parametrize("path", ["../escape.txt", "/etc/passwd", "a/../../escape.txt", "", "a/\x00b", "..", "./.."])
def test_file_paths_cannot_leave_the_workspace(env, path):
    with Sandbox.create(environ=env) as sbx:
        parent = os.path.dirname(sbx.workspace)
        before = sorted(os.listdir(parent))
        with pytest.raises(SandboxFileError):
            sbx.files.write(path, "pwned")
        with pytest.raises(SandboxFileError):
            sbx.files.read(path)
        assert sorted(os.listdir(parent)) == before


def test_symlinks_planted_by_the_sandbox_are_not_followed(env, scratch):
    target = scratch / "host-file.txt"
    target.write_text(SECRET)
    with Sandbox.create(environ=env) as sbx:
        sbx.commands.run(f"ln -s {target} leak.txt; ln -s {scratch} dirlink")
        with pytest.raises(SandboxFileError):
            sbx.files.read("leak.txt")
        with pytest.raises(SandboxFileError):
            sbx.files.write("leak.txt", "overwritten")
        with pytest.raises(SandboxFileError):
            sbx.files.write("dirlink/new.txt", "planted")
    assert target.read_text() == SECRET
    assert not (scratch / "new.txt").exists()


def test_oversized_upload_is_refused(env):
    with Sandbox.create(environ=env) as sbx:
        with pytest.raises(SandboxFileError):
            sbx.files.write("big.bin", b"\0" * ((64 << 20) + 1))
        assert not os.path.exists(os.path.join(sbx.workspace, "big.bin"))


def test_async_sandbox(env):
    async def main():
        async with await AsyncSandbox.create(environ=env) as sbx:
            await sbx.files.write("a.txt", "async")
            result = await sbx.commands.run("cat a.txt")
            return result.stdout

    assert asyncio.run(main()) == "async"


def test_a_session_whose_plan_no_longer_covers_the_host_is_replaced(env, scratch):
    """The host's git obeys a new hooksPath after boot: the next command runs in a sandbox that protects it."""
    import subprocess

    workspace = scratch / "repo"
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    marker = scratch / "hook-ran"
    with Sandbox.create(environ=env, workspace=str(workspace)) as sbx:
        sbx.commands.run("echo before > /tmp/state")
        # What husky or `npm install` does on the host while the agent's sandbox runs.
        subprocess.run(["git", "-C", str(workspace), "config", "core.hooksPath", ".husky"], check=True)
        (workspace / ".husky").mkdir()
        result = sbx.commands.run(f"printf '#!/bin/sh\\ntouch {marker}\\n' > .husky/pre-commit 2>&1; "
                                  "chmod +x .husky/pre-commit 2>/dev/null; cat /tmp/state 2>&1; echo control > ok.txt")
        assert (workspace / "ok.txt").read_text() == "control\n"  # The control: the workspace is writable.
        assert not (workspace / ".husky" / "pre-commit").exists(), result.stdout
        assert "before" not in result.stdout  # A new sandbox: the old one's /tmp is gone with it.
    subprocess.run(["git", "-C", str(workspace), "-c", "user.name=h", "-c", "user.email=h@h", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True, capture_output=True)
    assert not marker.exists()
