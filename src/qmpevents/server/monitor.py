"""One QMP monitor per connection: the asyncio side of :class:`ServerConnection`.

Input.  Bytes go to the sans-IO :class:`~qmpevents.protocol.ServerConnection`;
requests are run one per event-loop iteration, like QEMU's dispatcher, so one
monitor flooding commands cannot starve the others.  As in QEMU, at most
``queue_depth`` (8) parsed requests wait per monitor: when that many are
queued the monitor stops reading its socket, and reading resumes when the
queue is drained.  The kernel's socket buffer then pushes back on the client.

Output.  Replies and events go through one per-monitor queue, so an event a
command causes is always written before that command's reply.  Queued output
is written once per loop iteration (:class:`FlushQueue`): a burst of events
costs one ``write`` per monitor instead of one per event.

Slow monitors.  Output not yet taken by the kernel is bounded by
``max_outbound`` bytes per monitor.  When a message is due for a monitor whose
unsent output already exceeds the bound, that monitor is **disconnected**
(its transport aborted, unsent output discarded) and a WARNING is logged on
``qmpevents.server.monitor``.  So memory per monitor stays below the bound plus
one message, and a monitor that stops reading never delays the others; it
simply loses its connection, as it would lose events anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from qmpevents.protocol import NEED_DATA, CommandFailure, ServerConnection
from qmpevents.protocol.server import Command
from qmpevents.server.broadcaster import Broadcaster

_log = logging.getLogger(__name__)

QUEUE_DEPTH = 8
"""QEMU's ``QMP_REQ_QUEUE_LEN_MAX``: requests parsed but not yet run, per monitor."""


class Executor(Protocol):
    """Runs one negotiated command: returns its value or raises :class:`CommandFailure`."""

    def execute(self, command: Command) -> Any: ...


class FlushQueue:
    """Writes every monitor's queued output once per loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[Monitor] = []
        self._scheduled = False

    def add(self, monitor: Monitor) -> None:
        self._dirty.append(monitor)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for monitor in dirty:
            monitor.flush()


class Monitor(asyncio.Protocol):
    """A QMP monitor on one accepted connection (an :class:`asyncio.Protocol`).

    *on_open* / *on_close* let the owner track it; *admit* returning False
    holds the connection silent (no greeting, not read) until :meth:`admit`
    is called, which is how one-client-per-socket is mimicked.
    """

    def __init__(self, *, executor: Executor, broadcaster: Broadcaster, flusher: FlushQueue,
                 version: Mapping[str, Any], max_outbound: int,
                 on_open: Callable[[Monitor], bool], on_close: Callable[[Monitor], None],
                 queue_depth: int = QUEUE_DEPTH) -> None:
        self._executor = executor
        self._broadcaster = broadcaster
        self._flusher = flusher
        self._version = version
        self._max_outbound = max_outbound
        self._on_open = on_open
        self._on_close = on_close
        self._queue_depth = queue_depth
        self._transport: asyncio.Transport | None = None
        self._conn: ServerConnection | None = None
        self._out: list[bytes] = []
        self._unsent = 0  # queued here + held by the transport at the last flush
        self._queued = False
        self._pump_scheduled = False
        self._reading_paused = False
        self._negotiated = False
        self.closed = False
        self.peer = "?"

    # -- life cycle ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer) if peer else "unix"
        if self._on_open(self):
            self.admit()
        else:
            transport.pause_reading()  # a waiting client is not read, as in QEMU

    def admit(self) -> None:
        """Start the QMP session: greeting now, then negotiation."""
        assert self._transport is not None
        if self.closed or self._conn is not None:
            return
        self._conn = ServerConnection(version=self._version)
        self._transport.resume_reading()
        self.send(self._conn.greeting())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed and self._transport is None:
            return
        self.closed = True
        self._broadcaster.discard(self)
        self._out.clear()
        self._transport = None
        self._on_close(self)

    def close(self) -> None:
        """Write what is queued, then close (EOF to the client)."""
        if self._transport is None or self.closed:
            return
        self.flush()
        self.closed = True  # no more output; leaves the broadcast on connection_lost
        self._transport.close()

    # -- input ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is None or self.closed:
            return
        conn.receive_data(data)
        if conn.pending_requests >= self._queue_depth and self._transport is not None:
            self._transport.pause_reading()
            self._reading_paused = True
        self._schedule_pump()

    def eof_received(self) -> bool:
        # Answer what was already received, then close: QEMU does the same on EOF.
        return False

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        """Run one request (answering malformed ones on the way)."""
        self._pump_scheduled = False
        conn = self._conn
        if conn is None or self.closed:
            return
        request = conn.next_event()
        self._drain_protocol(conn)
        if request is not NEED_DATA:
            assert isinstance(request, Command)
            self._run(conn, request)
        if self.closed:
            return
        if conn.pending_requests:
            self._schedule_pump()
        elif self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    def _drain_protocol(self, conn: ServerConnection) -> None:
        """Move the protocol's replies out, and join the broadcast once negotiated.

        Done before a command runs, so a negotiation reply precedes any event
        that the next command causes.
        """
        out = conn.data_to_send()
        if out:
            self.send(out)
        if not self._negotiated and conn.accepts_events:
            self._negotiated = True
            self._broadcaster.add(self)

    def _run(self, conn: ServerConnection, command: Command) -> None:
        try:
            value = self._executor.execute(command)
        except CommandFailure as failure:
            conn.send_error(command, failure.error_class, failure.desc)
        except Exception as exc:  # a bug: answer anyway, so the client is not left waiting
            _log.exception("command %s failed", command.name)
            conn.send_error(command, "GenericError", f"internal error: {exc}")
        else:
            conn.send_return(command, value)
        self._drain_protocol(conn)

    # -- output --------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue *data* for this monitor; disconnect it if it is over its bound."""
        if self.closed:
            return
        if self._unsent > self._max_outbound:
            self._overflow()
            return
        self._out.append(data)
        self._unsent += len(data)
        if not self._queued:
            self._queued = True
            self._flusher.add(self)

    def flush(self) -> None:
        self._queued = False
        if not self._out or self._transport is None:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._transport.write(data)
        self._unsent = self._transport.get_write_buffer_size()

    def _overflow(self) -> None:
        _log.warning("QMP monitor %s disconnected: %d bytes of output unread (limit %d)",
                     self.peer, self._unsent, self._max_outbound)
        self.closed = True  # leaves the broadcast on connection_lost, not mid-publish
        self._out.clear()
        if self._transport is not None:
            self._transport.abort()
