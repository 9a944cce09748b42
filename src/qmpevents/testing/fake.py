"""A fake QMP server for testing QMP clients: QEMU's protocol, a tiny command table.

Built on :class:`qmpevents.protocol.ServerConnection`, so greeting,
negotiation and request errors are QEMU's; the commands only exist to drive a
client into the situations worth testing:

=================================  ============================================
``query-status``                   returns :attr:`FakeQMP.status`
``emit {"events": [{"name",        sends those events (``data`` optional; an
"data"?}, ...]}``                  unknown name goes out as given), then returns
``x-sim-io-error {"device",        BLOCK_IO_ERROR (action ``stop``) and STOP
"operation"}``
``blast {"count": N}``             N RTC_CHANGE events, ``offset`` 0 to N-1 (so
                                   a test sees any gap), then returns
``big {"size": N}``                returns a string of N bytes
``hang``                           never answers (sets :attr:`FakeQMP.hung`)
``hangup``                         closes the connection instead of answering
``fail``                           a ``GenericError``
=================================  ============================================

Anything else is ``CommandNotFound``.  Events are the ``qemu-7.2`` profile's,
written before the reply of the command that caused them, as QEMU does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from qmpevents.catalog import Timestamp, build_event
from qmpevents.codec import encode_message
from qmpevents.protocol import NEED_DATA, Command, ServerConnection

__all__ = ["STATUS", "VERSION", "VNC_CLIENT", "VNC_SERVER", "FakeQMP", "FakeSession",
           "event_line"]

#: The greeting's version.
VERSION = {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "fake"}
#: What ``query-status`` returns unless :attr:`FakeQMP.status` is changed.
STATUS = {"status": "running", "singlestep": False, "running": True}

#: ``server`` and ``client`` members of a VNC event in the ``qemu-7.2`` profile, for ``emit``.
VNC_SERVER = {"auth": "none", "family": "ipv4", "service": "5910", "host": "127.0.0.1",
              "websocket": False}
VNC_CLIENT = {"family": "ipv4", "service": "44302", "host": "127.0.0.1", "websocket": False}


def event_line(name: str, data: dict[str, Any] | None = None) -> bytes:
    """One event as QEMU 7.2 writes it; unknown names go out as given."""
    stamp = Timestamp.from_float(time.time())
    try:
        wire = build_event(name, data, stamp, "qemu-7.2")
    except KeyError:
        wire = {"event": name, "timestamp": {"seconds": stamp.seconds,
                                             "microseconds": stamp.microseconds}}
        if data is not None:
            wire["data"] = data
    return encode_message(wire)


class FakeSession:
    """One client's connection to a :class:`FakeQMP`."""

    def __init__(self, server: FakeQMP, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        #: The protocol state: ``conn.accepts_events`` once negotiated.
        self.conn = ServerConnection(version=VERSION)

    async def run(self) -> None:
        writer = self.writer
        self.conn.send_greeting()
        writer.write(self.conn.data_to_send())
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    return
                self.conn.receive_data(data)
                while True:
                    negotiating = not self.conn.accepts_events
                    command = self.conn.next_event()  # answers negotiation and bad input
                    just_negotiated = negotiating and self.conn.accepts_events
                    if just_negotiated and self.server.event_before_reply:
                        writer.write(event_line("RESUME"))
                    writer.write(self.conn.data_to_send())
                    if just_negotiated:
                        writer.write(b"".join(
                            event_line("RTC_CHANGE", {"offset": i, "qom-path": "/machine/rtc"})
                            for i in range(self.server.events_after_negotiation)))
                    if command is NEED_DATA:
                        if self.conn.has_unparsed_input:
                            await asyncio.sleep(0)  # a bounded step done: let others run
                            continue
                        break
                    assert isinstance(command, Command)
                    if not await self.run_command(command):
                        return
                    writer.write(self.conn.data_to_send())
                await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()

    async def run_command(self, command: Command) -> bool:
        """Run one command; False to hang up instead of answering."""
        args = command.arguments
        writer = self.writer
        name = command.name
        if name == "query-status":
            self.conn.send_return(command, self.server.status)
        elif name == "emit":
            for item in args.get("events", []):
                writer.write(event_line(item["name"], item.get("data")))
            self.conn.send_return(command, {})
        elif name == "x-sim-io-error":
            writer.write(event_line("BLOCK_IO_ERROR", {
                "device": args["device"], "node-name": "#block290", "operation": args["operation"],
                "action": "stop", "nospace": False, "reason": "Input/output error"}))
            writer.write(event_line("STOP"))
            self.conn.send_return(command, {})
        elif name == "blast":
            # RTC_CHANGE with offset = sequence number, so the test can see gaps.
            lines = [event_line("RTC_CHANGE", {"offset": i, "qom-path": "/machine/rtc"})
                     for i in range(args["count"])]
            for start in range(0, len(lines), 512):
                writer.write(b"".join(lines[start:start + 512]))
                await writer.drain()
            self.conn.send_return(command, {})
        elif name == "big":
            self.conn.send_return(command, "x" * args["size"])
        elif name == "hang":
            self.server.hung.set()
            await self.server.closing.wait()
            return False
        elif name == "hangup":
            return False
        elif name == "fail":
            self.conn.send_error(command, "GenericError", "it failed")
        else:
            self.conn.send_error(command, "CommandNotFound",
                                 f"The command {name} has not been found")
        return True


class FakeQMP:
    """``async with FakeQMP() as server:`` -- a QMP server on a Unix socket (or TCP).

    Connect a client to :attr:`address`.  :meth:`emit` sends an event to
    every negotiated client; :meth:`drop` hangs up on every client (the server
    keeps listening, for reconnect tests).  With *event_before_reply*, a
    RESUME event is written right before the reply to ``qmp_capabilities``.
    """

    def __init__(self, *, tcp: bool = False, event_before_reply: bool = False,
                 events_after_negotiation: int = 0) -> None:
        self.tcp = tcp
        self.event_before_reply = event_before_reply
        #: RTC_CHANGE events (offset 0, 1, ...) written right after the negotiation reply.
        self.events_after_negotiation = events_after_negotiation
        self.status: dict[str, Any] = dict(STATUS)
        #: The connected clients.
        self.sessions: list[FakeSession] = []
        #: Set while at least one client is connected (cleared by :meth:`drop`).
        self.connected = asyncio.Event()
        #: Set once a client's ``hang`` command arrived.
        self.hung = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="qmpev-fake-"))
        #: Set when the server shuts down: ends the ``hang`` commands.
        self.closing = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def path(self) -> str:
        """The Unix socket's path (without ``unix:``)."""
        return os.fspath(self._dir / "qmp.sock")

    @property
    def address(self) -> str:
        """Where to connect: ``unix:PATH`` or, with *tcp*, ``tcp:127.0.0.1:PORT``."""
        if self.tcp:
            assert self._server is not None
            host, port = self._server.sockets[0].getsockname()[:2]
            return f"tcp:{host}:{port}"
        return f"unix:{self.path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = FakeSession(self, reader, writer)
        self.sessions.append(session)
        self.connected.set()
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await session.run()
        finally:
            self._tasks.discard(task)
            self.sessions.remove(session)

    async def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        """Send one event to every negotiated client."""
        for session in self.sessions:
            if session.conn.accepts_events:
                session.writer.write(event_line(name, data))
                await session.writer.drain()

    def drop(self) -> None:
        """Hang up on every client now."""
        self.connected.clear()
        for session in self.sessions:
            session.writer.transport.abort()

    async def __aenter__(self) -> Self:
        if self.tcp:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        else:
            self._server = await asyncio.start_unix_server(self._handle, self.path)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._server is not None
        self._server.close()
        self.closing.set()
        self.drop()
        # Every session ends by itself now (not cancelled: asyncio's stream
        # server would log a cancelled handler as an error).
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        await self._server.wait_closed()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            self._dir.rmdir()
