"""The Python SDK, shaped like the hosted sandboxes users know (E2B-style).

Two backends behind one API.  Local (no server)::

    from blastwall.client import Sandbox

    with Sandbox.create() as sbx:                      # a fresh private workspace
        sbx.files.write("hello.py", "print('hi')")
        result = sbx.commands.run("python3 hello.py", timeout=30)
        print(result.stdout)

Every command runs in a new sandbox of the chosen tier over the sandbox's
workspace, with the policy given at creation (default: the user's policy with
nothing but the workspace writable and no network).

Remote, a ``blastwall serve`` service (``api_url``/``api_key``, or the
``BLASTWALL_API_URL``/``BLASTWALL_API_KEY`` environment variables)::

    with Sandbox.create(api_url="http://127.0.0.1:8700", api_key=key,
                        policy={"network": {"allow": ["pypi.org"]}}, timeout=600) as sbx:
        sbx.commands.run("pip download requests", on_stdout=print)

One gVisor sandbox that lives until ``kill()`` (the ``with`` block's end) or
its TTL, its workspace at ``/home/user``.  ``files`` (read, write, list,
get_info, exists, make_dir, remove, rename) refuses any path that would leave
the workspace (``..``, other absolute paths, symlinks), and anything a command
inside would be refused (a protected or hidden path), on either backend.  ``AsyncSandbox`` is the same, awaitable.  Errors: see ``_errors``.
"""

from __future__ import annotations

from blastwall.client._async import AsyncCommandHandle, AsyncSandbox
from blastwall.client._errors import (AuthenticationError, CeilingExceededError, CommandExitError, CommandResult,
                                      EntryInfo, InvalidRequestError, QuotaExceededError, RateLimitError, SandboxClosedError,
                                      SandboxError, SandboxFileError, SandboxLostError, SandboxNotFoundError,
                                      ServiceError)
from blastwall.client._sync import UNSET, CommandHandle, Sandbox

__all__ = [
    "AsyncCommandHandle",
    "AsyncSandbox",
    "AuthenticationError",
    "CeilingExceededError",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "EntryInfo",
    "InvalidRequestError",
    "QuotaExceededError",
    "RateLimitError",
    "Sandbox",
    "SandboxClosedError",
    "SandboxError",
    "SandboxFileError",
    "SandboxLostError",
    "SandboxNotFoundError",
    "ServiceError",
    "UNSET",
]
