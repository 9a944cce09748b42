"""Hand-written QMP servers for client tests: one asyncio handler on a private socket."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

GREETING = (b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, '
            b'"package": ""}, "capabilities": []}}\r\n')

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serving(handler: Handler, path: str | None = None) -> AsyncIterator[str]:
    """Serve *handler* on a Unix socket (at *path*, else in a fresh directory):
    its path.  On the way out every connection it accepted is closed."""
    directory = None if path is not None else tempfile.mkdtemp(prefix="qmpev-", dir="/tmp")
    where = path if path is not None else f"{directory}/qmp.sock"
    writers: list[asyncio.StreamWriter] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await handler(reader, writer)

    server = await asyncio.start_unix_server(tracked, where)
    try:
        yield where
    finally:
        server.close()
        for writer in writers:
            writer.close()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
