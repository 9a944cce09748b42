"""The two sans-IO roles wired together in memory: QMP with no socket and no loop.

For tests of code that speaks QMP through :mod:`qmpevents.protocol` (and for
our own protocol tests): every byte the client queues goes to the server,
every byte the server queues goes back, in chunks of *chunk_size* bytes if
given (to exercise any split), until neither side has anything to say.
Commands are answered by *handler*, which may send events through
:meth:`MemoryQMP.emit` while it runs, so they precede the reply, as QEMU's do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from qmpevents.catalog import Timestamp
from qmpevents.codec import encode_message
from qmpevents.errors import CommandFailure, QMPError
from qmpevents.protocol import (
    ClientConnection,
    ClientEvent,
    Command,
    Reply,
    ServerConnection,
)

Handler = Callable[[Command], Any]
"""Runs one command: its return value, or raise :class:`~qmpevents.errors.CommandFailure`."""

DEFAULT_VERSION: Final = {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""}


def unknown_command(command: Command) -> Any:
    """The default handler: every command is unknown, with QEMU's text."""
    raise CommandFailure("CommandNotFound", f"The command {command.name} has not been found")


class MemoryQMP:
    """A :class:`ClientConnection` and a :class:`ServerConnection` joined in memory."""

    def __init__(self, handler: Handler = unknown_command, *,
                 version: Mapping[str, Any] = DEFAULT_VERSION, chunk_size: int | None = None,
                 resync: bool = False, clock: Callable[[], float] = lambda: 0.0) -> None:
        self.client = ClientConnection(resync=resync)
        self.server = ServerConnection(version=version)
        self._handler = handler
        self._chunk = chunk_size
        self._clock = clock
        #: Everything the client handed out, in order (greeting, events, replies...).
        self.received: list[ClientEvent] = []
        self.server.send_greeting()

    def emit(self, name: str, data: Mapping[str, Any] | None = None) -> bool:
        """Send event *name* from the server (dropped unless negotiated, as in QEMU)."""
        message: dict[str, Any] = {"event": name}
        if data is not None:
            message["data"] = dict(data)
        stamp = Timestamp.from_float(self._clock())
        message["timestamp"] = {"seconds": stamp.seconds, "microseconds": stamp.microseconds}
        return self.server.send_event(encode_message(message))

    def pump(self) -> list[ClientEvent]:
        """Move bytes both ways until both sides are quiet; what the client handed out."""
        start = len(self.received)
        while True:
            moved = self._deliver(self.server.data_to_send(), self.client.receive_data)
            self.received.extend(self.client.next_events())
            moved |= self._deliver(self.client.data_to_send(), self.server.receive_data)
            moved |= self._serve()
            if not moved:
                return self.received[start:]

    def negotiate(self) -> None:
        """Greeting in, ``qmp_capabilities`` out, its reply back."""
        self.pump()
        self.client.send_command("qmp_capabilities")
        self.pump()

    def execute(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run *name* through both roles; its value, or :class:`QMPError`."""
        request_id = self.client.send_command(name, arguments)
        for item in self.pump():
            if isinstance(item, Reply) and item.id == request_id:
                if item.error is not None:
                    raise QMPError(item.error.error_class, item.error.desc, command=name,
                                   id=request_id)
                return item.value
        raise AssertionError(f"no reply to {name} ({request_id})")

    def close_client_output(self) -> list[ClientEvent]:
        """The client half-closes: the server answers what it has, then closes."""
        self.server.receive_data(b"")
        events = self.pump()
        self.client.receive_data(b"")
        return events + self.pump()

    def _deliver(self, data: bytes, receive: Callable[[bytes], None]) -> bool:
        if not data:
            return False
        step = self._chunk or len(data)
        for start in range(0, len(data), step):
            receive(data[start:start + step])
        return True

    def _serve(self) -> bool:
        served = False
        for command in self.server.commands():
            served = True
            try:
                value = self._handler(command)
            except CommandFailure as failure:
                self.server.send_failure(command, failure)
            else:
                self.server.send_return(command, value)
        return served
