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

    async def wait(self, timeout: float | None = None):
        return await asyncio.to_thread(self._sync.wait, timeout)

    async def kill(self) -> None:
        await asyncio.to_thread(self._sync.kill)


class _AsyncCommands:
    def __init__(self, sync) -> None:
        self._sync = sync

    async def run(self, cmd, **kwargs):
        result = await asyncio.to_thread(self._sync.run, cmd, **kwargs)
        return AsyncCommandHandle(result) if isinstance(result, CommandHandle) else result


class _AsyncFiles:
    def __init__(self, sync) -> None:
        self._sync = sync

    async def write(self, path: str, data):
        return await asyncio.to_thread(self._sync.write, path, data)

    async def read(self, path: str, format: str = "text"):  # noqa: A002
        return await asyncio.to_thread(self._sync.read, path, format)

    async def list(self, path: str = ""):
        return await asyncio.to_thread(self._sync.list, path)

    async def get_info(self, path: str):
        return await asyncio.to_thread(self._sync.get_info, path)

    async def exists(self, path: str) -> bool:
        return await asyncio.to_thread(self._sync.exists, path)

    async def make_dir(self, path: str) -> bool:
        return await asyncio.to_thread(self._sync.make_dir, path)

    async def remove(self, path: str) -> None:
        await asyncio.to_thread(self._sync.remove, path)

    async def rename(self, old_path: str, new_path: str):
        return await asyncio.to_thread(self._sync.rename, old_path, new_path)


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
    async def connect(cls, sandbox_id: str, *, api_url=UNSET, api_key=UNSET, environ=None) -> "AsyncSandbox":
        return cls(await asyncio.to_thread(Sandbox.connect, sandbox_id, api_url=api_url, api_key=api_key,
                                           environ=environ))

    @property
    def sandbox_id(self) -> str:
        return self._sync.sandbox_id

    @property
    def workspace(self) -> str:
        return self._sync.workspace

    async def get_info(self) -> dict:
        return await asyncio.to_thread(self._sync.get_info)

    async def set_timeout(self, seconds: int) -> None:
        await asyncio.to_thread(self._sync.set_timeout, seconds)

    async def kill(self) -> None:
        await asyncio.to_thread(self._sync.kill)

    close = kill

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.kill()
