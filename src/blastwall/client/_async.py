"""The asynchronous SDK: the same operations, awaited (run in worker threads)."""

from __future__ import annotations

import asyncio

from blastwall.client._sync import Sandbox

__all__ = ["AsyncSandbox"]


class _AsyncCommands:
    def __init__(self, sync) -> None:
        self._sync = sync

    async def run(self, cmd, **kwargs):
        return await asyncio.to_thread(self._sync.run, cmd, **kwargs)


class _AsyncFiles:
    def __init__(self, sync) -> None:
        self._sync = sync

    async def write(self, path: str, data) -> None:
        await asyncio.to_thread(self._sync.write, path, data)

    async def read(self, path: str, format: str = "text"):  # noqa: A002
        return await asyncio.to_thread(self._sync.read, path, format)


class AsyncSandbox:
    def __init__(self, sync: Sandbox) -> None:
        self._sync = sync
        self.workspace = sync.workspace
        self.commands = _AsyncCommands(sync.commands)
        self.files = _AsyncFiles(sync.files)

    @classmethod
    async def create(cls, **kwargs) -> "AsyncSandbox":
        return cls(await asyncio.to_thread(Sandbox.create, **kwargs))

    async def kill(self) -> None:
        await asyncio.to_thread(self._sync.kill)

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.kill()
