"""The Python SDK, shaped like the hosted sandboxes users know (E2B-style).

Two backends behind one API.  Local (no server)::

    from blastwall.client import Sandbox

    with Sandbox.create() as sbx:                      # a fresh private workspace
        sbx.files.write("hello.py", "print('hi')")
        result = sbx.commands.run("python3 hello.py", timeout=30)
        print(result.stdout)

Commands run in one session of the policy's tier over the sandbox's
workspace (booted on the first command, kept until ``kill()``), with the
policy given at creation (default: the user's policy with nothing but the
workspace writable and no network); they share its processes and ``/tmp``.

Remote, a ``blastwall serve`` service (``api_url``/``api_key``, or the
``BLASTWALL_API_URL``/``BLASTWALL_API_KEY`` environment variables)::

    with Sandbox.create(api_url="http://127.0.0.1:8700", api_key=key,
                        policy={"network": {"allow": ["pypi.org"]}}, timeout=600) as sbx:
        sbx.commands.run("pip download requests", on_stdout=print)

One gVisor sandbox that lives until ``kill()`` (the ``with`` block's end) or
its TTL, its workspace at ``/home/user``.

E2B's shapes on both: ``commands.run`` (bash; ``background=True`` gives a
``CommandHandle`` with ``pid``, iteration, ``wait(on_stdout=)``, ``kill()``,
``send_stdin``), ``commands.list/kill/connect``; ``files.read`` (text, bytes,
stream), ``write`` (str, bytes, a file object) and ``write_files``, ``list``,
``get_info``, ``exists``, ``make_dir``, ``remove``, ``rename``;
``Sandbox.list/connect/kill(id)``, ``is_running``, ``get_info`` (a
``SandboxInfo``), ``set_timeout``, ``create(metadata=)``; E2B's exception names.
``files`` refuses any path that would leave the workspace (``..``, other
absolute paths, symlinks), and anything a command inside would be refused (a
protected or hidden path), on either backend.  ``AsyncSandbox`` is the same,
awaitable.  Errors: see ``_errors``.
"""

from __future__ import annotations

from blastwall.client._async import AsyncCommandHandle, AsyncSandbox
from blastwall.client._errors import (AuthenticationError, AuthenticationException, CeilingExceededError,
                                      CommandExitError, CommandExitException, CommandResult, CommandStdinError,
                                      EntryInfo, FileNotFoundException, FileType, InvalidArgumentException,
                                      InvalidRequestError, NotEnoughSpaceException, NotFoundException,
                                      QuotaExceededError, RateLimitError, RateLimitException, SandboxClosedError,
                                      SandboxError, SandboxException, SandboxFileError, SandboxLostError,
                                      SandboxNotFoundError, ServiceError, TimeoutException, WriteInfo)
from blastwall.client._sync import UNSET, CommandHandle, ProcessInfo, Sandbox, SandboxInfo, WriteEntry

__all__ = [
    "AsyncCommandHandle", "AsyncSandbox", "AuthenticationError", "AuthenticationException", "CeilingExceededError",
    "CommandExitError", "CommandExitException", "CommandHandle", "CommandResult", "CommandStdinError", "EntryInfo",
    "FileNotFoundException", "FileType", "InvalidArgumentException", "InvalidRequestError",
    "NotEnoughSpaceException", "NotFoundException", "ProcessInfo", "QuotaExceededError", "RateLimitError",
    "RateLimitException", "Sandbox", "SandboxClosedError", "SandboxError", "SandboxException", "SandboxFileError",
    "SandboxInfo", "SandboxLostError", "SandboxNotFoundError", "ServiceError", "TimeoutException", "UNSET",
    "WriteEntry", "WriteInfo",
]
