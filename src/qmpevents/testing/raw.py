"""A raw-bytes QMP client: the wire as it is, for tests of a QMP server.

:class:`RawQMP` sends bytes exactly as given and returns lines exactly as
received (CRLF included): no JSON framing, no reordering, no retries behind
the test's back, so a test sees what a server really wrote, malformed input
and all.  It works against real QEMU and any other QMP server.

Every read has a deadline (:data:`DEADLINE` seconds unless told): a line that
never comes fails the test fast instead of hanging it.  A ``None`` timeout
waits for ever, for a reader task that runs until end of input.

QEMU serves one client at a time per ``-qmp`` socket: a second connection is
accepted by the kernel but greeted only once the first is gone.  Open with
``retry=True`` while the previous client's connection may still be in
tear-down, and end with :meth:`RawQMP.aclose` (half-close, wait for the
server's end of input) before the next client connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

from qmpevents.addresses import AddressLike, TcpAddress, parse_address

__all__ = ["DEADLINE", "PROBE_ID", "ProbeTimeoutError", "RawQMP"]

#: Seconds a read or a connect waits unless told otherwise.
DEADLINE = 5.0
#: ``id`` of the ``query-status`` probe sent by :meth:`RawQMP.sync`.
PROBE_ID = "__probe__"
_PROBE = b'{"execute": "query-status", "id": "' + PROBE_ID.encode() + b'"}\r\n'
# QEMU's largest message is 64 MiB; a stream limit below that would fail big replies.
_STREAM_LIMIT = 64 * 1024 * 1024
_RETRY_INTERVAL = 0.02
_Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class ProbeTimeoutError(TimeoutError):
    """The probe's reply did not come; :attr:`lines` holds what did.

    It happens when earlier input left the server's JSON parser inside a
    message (an unterminated ``{`` or string swallows the probe).
    """

    def __init__(self, lines: list[bytes]) -> None:
        super().__init__(f"no reply to the QMP probe ({len(lines)} other lines received)")
        self.lines = lines


class RawQMP:
    """One QMP connection at the byte level.

    ``send`` writes bytes verbatim; ``line`` reads one line; the helpers
    (:meth:`greeting`, :meth:`negotiate`, :meth:`execute`, :meth:`sync`, ...)
    are the usual steps spelled out with those two.  :attr:`reader` and
    :attr:`writer` are the underlying asyncio streams, for what the helpers
    do not cover.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    # -- opening -----------------------------------------------------------

    @classmethod
    async def connect(cls, address: AddressLike, *, timeout: float = DEADLINE,
                      retry: bool = False) -> Self:
        """Connect to a QMP address (``unix:PATH``, ``tcp:HOST:PORT``, a socket path).

        With *retry*, a refused connection or a socket file that does not
        exist yet is tried again until *timeout* seconds have passed.
        """
        parsed = parse_address(address)
        if isinstance(parsed, TcpAddress):
            return await cls.tcp(parsed.host, parsed.port, timeout=timeout, retry=retry)
        return await cls.unix(parsed.path, timeout=timeout, retry=retry)

    @classmethod
    async def unix(cls, path: str | os.PathLike[str], *, timeout: float = DEADLINE,
                   retry: bool = False) -> Self:
        """Connect to the Unix socket *path* (see :meth:`connect` for *retry*)."""
        return await cls._open(lambda: asyncio.open_unix_connection(
            os.fspath(path), limit=_STREAM_LIMIT), timeout, retry)

    @classmethod
    async def tcp(cls, host: str, port: int, *, timeout: float = DEADLINE,
                  retry: bool = False) -> Self:
        """Connect to *host*:*port* over TCP (see :meth:`connect` for *retry*)."""
        return await cls._open(lambda: asyncio.open_connection(
            host, port, limit=_STREAM_LIMIT), timeout, retry)

    @classmethod
    async def _open(cls, opener: Callable[[], Awaitable[_Streams]], timeout: float,
                    retry: bool) -> Self:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    opener(), max(deadline - loop.time(), 0.01))
                return cls(reader, writer)
            except (ConnectionRefusedError, FileNotFoundError):
                if not retry or loop.time() >= deadline:
                    raise
            # A server starting, or QEMU tearing down the previous client:
            # polling with a deadline is all a client can do.
            await asyncio.sleep(_RETRY_INTERVAL)

    # -- bytes -------------------------------------------------------------

    async def send(self, data: bytes | str) -> None:
        """Write *data* verbatim (nothing added, not even a newline) and drain."""
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def line(self, timeout: float | None = DEADLINE) -> bytes:
        """The next line, with its line end (QEMU's is CRLF).

        If the server closed in the middle of a line, that unterminated tail
        is returned; at end of input :class:`EOFError`.  :class:`TimeoutError`
        if no complete line comes within *timeout* seconds.
        """
        try:
            return await asyncio.wait_for(self.reader.readuntil(b"\n"), timeout)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                return exc.partial
            raise EOFError("the server closed the connection") from None

    async def eof(self, timeout: float = DEADLINE) -> bytes:
        """Everything up to end of input (a :class:`TimeoutError` if it does not come)."""
        return await asyncio.wait_for(self.reader.read(), timeout)

    # -- the usual steps -----------------------------------------------------

    async def greeting(self, timeout: float = DEADLINE) -> dict[str, Any]:
        """Read the greeting line; its value (``{"QMP": {...}}``)."""
        return _member(await self.line(timeout), "QMP", "the QMP greeting")

    async def negotiate(self, timeout: float = DEADLINE) -> None:
        """Read the greeting, send ``qmp_capabilities``, check its empty return."""
        await self.greeting(timeout)
        await self.send(b'{"execute": "qmp_capabilities"}\r\n')
        reply = await self.line(timeout)
        if reply != b'{"return": {}}\r\n':
            raise AssertionError(f"negotiation failed: {reply!r}")

    async def execute(self, name: str, arguments: dict[str, Any] | None = None,
                      **extra: Any) -> tuple[list[bytes], bytes]:
        """Run one command: the event lines that came before its reply, and the reply.

        *extra* members go into the request as given (``id=...``).
        """
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
        """Run a command that must succeed; the event lines before its reply."""
        events, reply = await self.execute(name, arguments)
        if json.loads(reply).get("return") is None:
            raise AssertionError(f"{name} failed: {reply!r}")
        return events

    async def event(self, timeout: float = DEADLINE) -> dict[str, Any]:
        """The next line, which must be an event; its value."""
        return _member(await self.line(timeout), "event", "an event")

    async def sync(self, timeout: float = 60.0, quiet: float = 2.0) -> list[bytes]:
        """Every line the server sends before it has caught up with our input.

        Sends a ``query-status`` probe with the id :data:`PROBE_ID` and
        returns the lines that come before the probe's reply (which is
        consumed).  A QMP server handles a monitor's input in order, so this
        proves everything sent earlier was handled, without sleeping.
        :class:`ProbeTimeoutError` (with the lines so far) if no line comes
        for *quiet* seconds, the reply is not there after *timeout* seconds,
        or the connection ends first.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        lines: list[bytes] = []
        await self.send(_PROBE)
        while (remaining := deadline - loop.time()) > 0:
            try:
                line = await self.line(min(quiet, remaining))
            except (TimeoutError, EOFError):
                break
            if not line.endswith(b"\n"):
                lines.append(line)  # the unterminated tail before the end of input
                break
            if _is_probe_reply(line):
                return lines
            lines.append(line)
        raise ProbeTimeoutError(lines)

    async def lines_until_quiet(self, quiet: float = 2.0, timeout: float = 60.0) -> list[bytes]:
        """Every line until none comes for *quiet* seconds, end of input, or *timeout*.

        For input after which the server cannot answer a probe; otherwise
        :meth:`sync` is exact and faster.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        lines: list[bytes] = []
        while (remaining := deadline - loop.time()) > 0:
            try:
                lines.append(await self.line(min(quiet, remaining)))
            except (TimeoutError, EOFError):
                break
        return lines

    # -- closing -------------------------------------------------------------

    def half_close(self) -> None:
        """Send end of input (the server sees EOF); reading goes on."""
        with contextlib.suppress(ConnectionError, OSError):
            if self.writer.can_write_eof():
                self.writer.write_eof()

    async def aclose(self, timeout: float = DEADLINE) -> list[bytes]:
        """Half-close, wait for the server to close its side, then close.

        Returns the lines that arrived meanwhile.  Once it returns the server
        has dropped the connection: QEMU's socket is free for the next client.
        """
        self.half_close()
        lines: list[bytes] = []
        try:
            lines = await self.lines_until_quiet(quiet=timeout, timeout=timeout)
        except (ConnectionError, OSError):
            pass
        finally:
            await self.close()
        return lines

    async def close(self) -> None:
        """Close now, without waiting for the server."""
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


def _member(line: bytes, key: str, what: str) -> dict[str, Any]:
    """*line*'s value, which must be an object with *key*."""
    value = json.loads(line)
    if not isinstance(value, dict) or key not in value:
        raise AssertionError(f"expected {what}, got {line!r}")
    return value


def _is_probe_reply(line: bytes) -> bool:
    if PROBE_ID.encode() not in line:
        return False
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return (isinstance(value, dict) and value.get("id") == PROBE_ID
            and ("return" in value or "error" in value))
