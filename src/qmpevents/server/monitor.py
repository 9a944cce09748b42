"""One QMP monitor per connection: the asyncio side of :class:`ServerConnection`.

Input.  Bytes go to the sans-IO :class:`~qmpevents.protocol.ServerConnection`
in slices of at most :data:`INPUT_SLICE` bytes; requests are run one per
event-loop iteration, like QEMU's dispatcher, so one monitor flooding
commands cannot starve the others.  As in QEMU, at most ``queue_depth`` (8)
parsed requests wait per monitor: when that many are queued the rest of the
read waits (unparsed) and the monitor stops reading its socket; reading
resumes when the queue and that backlog are drained.  The kernel's socket
buffer then pushes back on the client.  Slicing bounds what one burst of bad
input can cost: every malformed message is answered at once (QEMU's error
reply), and a slice of garbage yields at most a few hundred KiB of them.

Replies are the client's own doing, so they are paced, not punished: while
the transport holds more than its high-water mark (the client is not reading
its replies), no request is run and the socket is not read.

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

Departures.  When a connection ends, one INFO line on
``qmpevents.server.monitor`` says how (EOF, or the socket error) and how many
bytes of an unfinished request were discarded -- a client killed while
writing a command leaves exactly that trace, and nothing else changes for the
other monitors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from qmpevents.codec import DEFAULT_MAX_MESSAGE_SIZE
from qmpevents.protocol import NEED_DATA, CommandFailure, ServerConnection
from qmpevents.protocol.server import Command
from qmpevents.server.broadcaster import Broadcaster

_log = logging.getLogger(__name__)

QUEUE_DEPTH = 8
"""QEMU's ``QMP_REQ_QUEUE_LEN_MAX``: requests parsed but not yet run, per monitor."""

INPUT_SLICE = 8 * 1024
"""Bytes parsed at a time: bounds the replies one burst of garbage produces at once."""


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
                 queue_depth: int = QUEUE_DEPTH,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._executor = executor
        self._broadcaster = broadcaster
        self._flusher = flusher
        self._version = version
        self._max_outbound = max_outbound
        self._on_open = on_open
        self._on_close = on_close
        self._queue_depth = queue_depth
        self._max_message_size = max_message_size
        self._transport: asyncio.Transport | None = None
        self._conn: ServerConnection | None = None
        self._out: list[bytes] = []
        self._unsent = 0  # an upper bound: queued here + held by the transport at the last flush
        self._queued_bytes = 0  # queued here since the last flush
        self._queued = False
        self._pump_scheduled = False
        self._reading_paused = False
        self._writing_paused = False
        self._backlog = b""  # received, not parsed yet (the request queue was full)
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
        self._conn = ServerConnection(version=self._version,
                                      max_message_size=self._max_message_size)
        self._transport.resume_reading()
        self._reply(self._conn.greeting())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed and self._transport is None:
            return
        if _log.isEnabledFor(logging.INFO):
            how = "EOF" if exc is None else f"{type(exc).__name__}: {exc}"
            partial = self._conn.buffered_bytes if self._conn is not None else 0
            pending = self._conn.pending_requests if self._conn is not None else 0
            _log.info("QMP monitor %s gone (%s); %d bytes of an unfinished request and "
                      "%d queued requests discarded", self.peer, how, partial, pending)
        self.closed = True
        self._broadcaster.discard(self)
        self._out.clear()
        self._backlog = b""
        self._transport = None
        self._on_close(self)

    def close(self) -> None:
        """Write what is queued, then close (EOF to the client)."""
        if self._transport is None or self.closed:
            return
        self.flush()
        self.closed = True  # no more output; leaves the broadcast on connection_lost
        self._transport.close()

    def abort(self) -> None:
        """Drop the connection now, unsent output and all (a close that cannot drain)."""
        self.closed = True
        self._out.clear()
        if self._transport is not None:
            self._transport.abort()

    # -- input ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is None or self.closed:
            return
        if self._backlog:  # bytes may still come after pause_reading (TLS)
            self._backlog += data
        else:
            self._parse(conn, data)
        self._update_reading()
        self._schedule_pump()

    def _parse(self, conn: ServerConnection, data: bytes) -> None:
        """Feed *data* slice by slice until the request queue is full; keep the rest."""
        pos = 0
        end = len(data)
        while pos < end and conn.pending_requests < self._queue_depth:
            conn.receive_data(data[pos:pos + INPUT_SLICE] if pos or end > INPUT_SLICE else data)
            pos += INPUT_SLICE
        self._backlog = data[pos:] if pos < end else b""

    def _update_reading(self) -> None:
        """Read the socket only while the queue, the backlog and the output allow it."""
        conn = self._conn
        if self._transport is None or conn is None or self.closed:
            return
        held = self._backlog != b"" or self._writing_paused
        if not self._reading_paused:
            if held or conn.pending_requests >= self._queue_depth:
                self._reading_paused = True
                self._transport.pause_reading()
        elif not held and not conn.pending_requests:  # resume once the queue is drained
            self._reading_paused = False
            self._transport.resume_reading()

    def pause_writing(self) -> None:
        """The client does not read its replies: stop running its requests."""
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()
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
        try:
            self._pump_one()
        except Exception:  # a bug below: drop this client, keep serving the others
            _log.exception("QMP monitor %s: internal error; disconnecting it", self.peer)
            self.closed = True
            if self._transport is not None:
                self._transport.abort()

    def _pump_one(self) -> None:
        conn = self._conn
        if conn is None or self.closed or self._writing_paused:
            return  # resume_writing pumps again
        request = conn.next_event()
        self._drain_protocol(conn)
        if request is not NEED_DATA:
            assert isinstance(request, Command)
            self._run(conn, request)
        if self.closed:
            return
        if not conn.pending_requests and self._backlog:
            self._parse(conn, self._backlog)
        if conn.pending_requests:
            self._schedule_pump()
        self._update_reading()

    def _drain_protocol(self, conn: ServerConnection) -> None:
        """Move the protocol's replies out, and join the broadcast once negotiated.

        Done before a command runs, so a negotiation reply precedes any event
        that the next command causes.
        """
        out = conn.data_to_send()
        if out:
            self._reply(out)
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
        """Queue an event for this monitor; disconnect it if it is over its bound."""
        if self.closed:
            return
        if self._unsent > self._max_outbound:
            # The bound is stale once the transport drains: measure before judging.
            buffered = self._transport.get_write_buffer_size() if self._transport else 0
            self._unsent = self._queued_bytes + buffered
            if self._unsent > self._max_outbound:
                self._overflow()
                return
        self._reply(data)

    def _reply(self, data: bytes) -> None:
        """Queue output the client asked for (paced by :meth:`pause_writing`)."""
        if self.closed:
            return
        self._out.append(data)
        self._unsent += len(data)
        self._queued_bytes += len(data)
        if not self._queued:
            self._queued = True
            self._flusher.add(self)

    def flush(self) -> None:
        self._queued = False
        if not self._out or self._transport is None:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._queued_bytes = 0
        self._transport.write(data)
        self._unsent = self._transport.get_write_buffer_size()

    def _overflow(self) -> None:
        _log.warning("QMP monitor %s disconnected: %d bytes of output unread (limit %d)",
                     self.peer, self._unsent, self._max_outbound)
        self.closed = True  # leaves the broadcast on connection_lost, not mid-publish
        self._out.clear()
        if self._transport is not None:
            self._transport.abort()
