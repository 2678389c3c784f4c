"""The asynchronous SDK: the same operations, awaitable.

Each call runs the synchronous SDK in a worker thread (``asyncio.to_thread``):
one implementation of every check and of both backends, and an event loop
that never blocks on a sandbox.  A streamed command holds one thread while it
runs.
"""

from __future__ import annotations

import asyncio

from blastwall.client._sync import UNSET, CommandHandle, Sandbox

__all__ = ["AsyncCommandHandle", "AsyncSandbox"]


class AsyncCommandHandle:
    def __init__(self, sync: CommandHandle) -> None:
        self._sync = sync

    @property
    def id(self):
        return self._sync.id

    @property
    def pid(self) -> int:
        return self._sync.pid

    async def wait(self, timeout: float | None = None, *, on_stdout=None, on_stderr=None):
        return await asyncio.to_thread(self._sync.wait, timeout, on_stdout=on_stdout, on_stderr=on_stderr)

    async def kill(self) -> bool:
        return await asyncio.to_thread(self._sync.kill)

    async def send_stdin(self, data) -> None:
        await asyncio.to_thread(self._sync.send_stdin, data)

    async def close_stdin(self) -> None:
        await asyncio.to_thread(self._sync.close_stdin)


class _Async:
    """Every public method of a sync object, awaitable (a CommandHandle it returns: an AsyncCommandHandle)."""

    def __init__(self, sync) -> None:
        self._sync = sync

    def __getattr__(self, name: str):
        method = getattr(self._sync, name)
        if name.startswith("_") or not callable(method):
            raise AttributeError(name)

        async def call(*args, **kwargs):
            result = await asyncio.to_thread(method, *args, **kwargs)
            return AsyncCommandHandle(result) if isinstance(result, CommandHandle) else result

        return call


class _AsyncCommands(_Async):
    """run, list, kill, connect, send_stdin, close_stdin."""


class _AsyncFiles(_Async):
    """read, write, write_files, list, get_info, exists, make_dir, remove, rename."""


class AsyncSandbox:
    """``Sandbox``, awaitable: ``await AsyncSandbox.create(...)``, ``async with``, ``await sbx.commands.run(...)``."""

    def __init__(self, sync: Sandbox) -> None:
        self._sync = sync
        self.commands = _AsyncCommands(sync.commands)
        self.files = _AsyncFiles(sync.files)

    @classmethod
    async def create(cls, *args, **kwargs) -> "AsyncSandbox":
        return cls(await asyncio.to_thread(Sandbox.create, *args, **kwargs))

    @classmethod
    async def connect(cls, sandbox_id: str, api_key=UNSET, *, api_url=UNSET, environ=None) -> "AsyncSandbox":
        return cls(await asyncio.to_thread(Sandbox.connect, sandbox_id, api_key, api_url=api_url, environ=environ))

    @classmethod
    async def list(cls, api_key=UNSET, *, api_url=UNSET, environ=None):
        return await asyncio.to_thread(Sandbox.list, api_key, api_url=api_url, environ=environ)

    @property
    def sandbox_id(self) -> str:
        return self._sync.sandbox_id

    @property
    def workspace(self) -> str:
        return self._sync.workspace

    async def get_info(self):
        return await asyncio.to_thread(self._sync.get_info)

    async def is_running(self) -> bool:
        return await asyncio.to_thread(self._sync.is_running)

    async def set_timeout(self, seconds: int) -> None:
        await asyncio.to_thread(self._sync.set_timeout, seconds)

    async def kill(self) -> bool:
        return await asyncio.to_thread(self._sync.kill)

    close = kill

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.kill()
