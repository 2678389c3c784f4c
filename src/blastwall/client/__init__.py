"""The Python SDK, shaped like the hosted sandboxes users know (E2B-style).

This first version drives a local backend in-process (no server yet)::

    from blastwall.client import Sandbox

    with Sandbox.create() as sbx:                      # a fresh private workspace
        sbx.files.write("hello.py", "print('hi')")
        result = sbx.commands.run("python3 hello.py", timeout=30)
        print(result.stdout)

Every command runs in a new sandbox of the chosen tier over the sandbox's
workspace, with the policy given at creation (default: the user's policy
with nothing but the workspace writable and no network).  ``files`` reads and
writes inside the workspace from the host, refusing any path that would leave
it (``..``, absolute paths, symlinks).  ``AsyncSandbox`` is the same, awaitable.
"""

from __future__ import annotations

from blastwall.client._sync import CommandExitError, CommandResult, Sandbox, SandboxClosedError, SandboxFileError
from blastwall.client._async import AsyncSandbox

__all__ = ["AsyncSandbox", "CommandExitError", "CommandResult", "Sandbox", "SandboxClosedError", "SandboxFileError"]
