"""A tiny raw-line QMP client for the server and simulator tests.

It sends bytes exactly as given and returns reply lines exactly as received
(CRLF included), so tests see the wire, not a library's idea of it.  Every
read has a deadline: a missing line fails the test fast instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any, Self

DEADLINE = 5.0

_STAMP = re.compile(rb'"seconds": \d+, "microseconds": \d+')


def mask(line: bytes) -> bytes:
    """Hide what varies between runs: timestamps, ports, auto node names, RTC offsets."""
    line = _STAMP.sub(b'"seconds": S, "microseconds": U', line)
    line = re.sub(rb'"service": "\d+"', b'"service": "P"', line)
    line = re.sub(rb'#block\d+', b'#blockN', line)
    return re.sub(rb'"offset": -?\d+', b'"offset": O', line)


class RawQMP:
    """One connection: ``send`` bytes, read ``line`` s, helpers for the usual steps."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def unix(cls, path: str) -> Self:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(path, limit=1 << 24), DEADLINE)
        return cls(reader, writer)

    @classmethod
    async def tcp(cls, host: str, port: int) -> Self:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=1 << 24), DEADLINE)
        return cls(reader, writer)

    async def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def line(self, timeout: float = DEADLINE) -> bytes:
        line = await asyncio.wait_for(self.reader.readline(), timeout)
        if not line:
            raise EOFError("connection closed")
        return line

    async def greeting(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(await self.line())
        assert "QMP" in value, value
        return value

    async def negotiate(self) -> None:
        await self.greeting()
        await self.send(b'{"execute": "qmp_capabilities"}\r\n')
        assert await self.line() == b'{"return": {}}\r\n'

    async def execute(self, name: str, arguments: dict[str, Any] | None = None,
                      **extra: Any) -> tuple[list[bytes], bytes]:
        """Run a command: the event lines that came before its reply, and the reply."""
        request: dict[str, Any] = {"execute": name, **extra}
        if arguments is not None:
            request["arguments"] = arguments
        await self.send(json.dumps(request).encode() + b"\r\n")
        events = []
        while True:
            line = await self.line()
            if line.startswith(b'{"timestamp"'):
                events.append(line)
            else:
                return events, line

    async def ok(self, name: str, arguments: dict[str, Any] | None = None) -> list[bytes]:
        """Run a command that must succeed; its event lines."""
        events, reply = await self.execute(name, arguments)
        assert json.loads(reply).get("return") is not None, reply
        return events

    async def event(self, timeout: float = DEADLINE) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(await self.line(timeout))
        assert "event" in value, value
        return value

    async def eof(self, timeout: float = DEADLINE) -> bytes:
        """Everything up to EOF (fails if the server keeps the connection open)."""
        return await asyncio.wait_for(self.reader.read(), timeout)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def names(lines: list[bytes]) -> list[str]:
    return [json.loads(line)["event"] for line in lines]


def reply(line: bytes) -> Any:
    return json.loads(line)
