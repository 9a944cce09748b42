"""One QMP monitor per connection: the asyncio side of :class:`ServerConnection`.

The protocol's rules -- negotiation, QEMU's 8-request queue and input
slicing, events only to negotiated monitors and before the reply of the
command that caused them, answers to a half-closed client -- live in the
sans-IO :class:`~qmpevents.protocol.ServerConnection`.  This adapter moves
bytes and time:

Input.  Received bytes go to the connection; its
:attr:`~qmpevents.protocol.ServerConnection.wants_data` says when to pause
and resume reading the socket (the kernel's socket buffer then pushes back on
the client).  Requests run one per event-loop iteration, like QEMU's
dispatcher, so one monitor flooding commands cannot starve the others; a big
message on the byte-by-byte parser is parsed a few KiB per iteration too
(``EXACT_SLICE``).  What all monitors hold of unfinished messages is bounded
together by the server's :class:`~qmpevents.codec.HeldInputBudget`.

Replies are the client's own doing, so they are paced, not punished: while
the transport holds more than its high-water mark (the client is not reading
its replies), no request is run and the socket is not read.

Output.  Queued output is written once per loop iteration
(:class:`FlushQueue`): a burst of events costs one ``write`` per monitor
instead of one per event.  A reply that echoes a peer's huge value (an
``id``, a key named in an error) is encoded one bounded step (a few ms) per
iteration, and only while the transport is under its high-water mark, so
other monitors are answered in between, a peer that does not read holds up
only its own reply (and memory holds the value plus about a step), and that
monitor's next request runs once the reply is written.

Pretty output.  A monitor made with ``pretty=True`` writes everything, events
included, in QEMU's ``pretty=on`` layout (:func:`~qmpevents.codec.encoder.pretty_wire`),
applied as output is written, so the protocol and the broadcast stay compact.

Slow monitors.  Output not yet taken by the kernel is bounded by
``max_outbound`` bytes per monitor.  When an event is due for a monitor whose
unsent output already exceeds the bound, that monitor is **disconnected**
(its transport aborted, unsent output discarded) and a WARNING is logged on
``qmpevents.server.monitor``.  So memory per monitor stays below the bound plus
one message, and a monitor that stops reading never delays the others; it
simply loses its connection, as it would lose events anyway.

Departures.  A client that leaves while its input is being parsed (a big
message on the byte-by-byte parser) is noticed at once: reading goes on
during a parse as long as little input waits, and a Unix peer that closed its
end (not a half-close, which still gets its replies) has its unparsed input
dropped at its EOF.  When a connection ends, one INFO line on
``qmpevents.server.monitor`` says how (EOF, or the socket error) and how many
bytes of an unfinished request were discarded -- a client killed while
writing a command leaves exactly that trace, and nothing else changes for the
other monitors.
"""

from __future__ import annotations

import asyncio
import logging
import select
from collections.abc import Callable, Generator, Mapping
from typing import Any, Protocol

from qmpevents.codec import DEFAULT_MAX_MESSAGE_SIZE, HeldInputBudget
from qmpevents.codec.encoder import PrettyLayout
from qmpevents.errors import CommandFailure
from qmpevents.protocol import QUEUE_DEPTH, Command, ConnectionClosed, ServerConnection
from qmpevents.protocol.unexpected import LongKeys
from qmpevents.server.broadcaster import Broadcaster

_log = logging.getLogger(__name__)


class Executor(Protocol):
    """Runs one negotiated command: returns its value or raises :class:`CommandFailure`.

    A big value is encoded after ``execute`` returns, a step per loop
    iteration while the peer reads: return one that nothing changes
    afterwards (a fresh value, or one that is never mutated).
    """

    def execute(self, command: Command) -> Any: ...


class FlushQueue:
    """Writes every monitor's queued output once per loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: set[Monitor] = set()
        self._scheduled = False

    def add(self, monitor: Monitor) -> None:
        self._dirty.add(monitor)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, set()
        for monitor in dirty:
            monitor.flush()


class Monitor(asyncio.Protocol):
    """A QMP monitor on one accepted connection (an :class:`asyncio.Protocol`).

    *on_open* / *on_close* let the owner track it; *on_open* returning False
    refuses the connection (the server is closing): it is closed ungreeted.
    One client per socket is the listener's business: it does not accept a
    connection while another is served (:mod:`.listeners`).
    """

    def __init__(self, *, executor: Executor, broadcaster: Broadcaster, flusher: FlushQueue,
                 version: Mapping[str, Any], max_outbound: int,
                 on_open: Callable[[Monitor], bool], on_close: Callable[[Monitor], None],
                 queue_depth: int = QUEUE_DEPTH,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, pretty: bool = False,
                 held_budget: HeldInputBudget | None = None) -> None:
        self._executor = executor
        self._broadcaster = broadcaster
        self._flusher = flusher
        self._version = version
        self._max_outbound = max_outbound
        self._on_open = on_open
        self._on_close = on_close
        self._queue_depth = queue_depth
        self._max_message_size = max_message_size
        self._held_budget = held_budget  # shared by the server's monitors
        self._transport: asyncio.Transport | None = None
        self._conn: ServerConnection | None = None
        self._unsent = 0  # an upper bound: queued + held by the transport at the last flush
        self._pump_scheduled = False
        self._reading = True          # whether the transport is being read
        self._writing_paused = False  # the transport is above its high-water mark
        self._layout = PrettyLayout() if pretty else None  # QEMU's pretty=on layout
        self._close_when_written = False  # closed while a reply was still being encoded
        #: A command waiting while its long keys are hashed ahead, a step per iteration,
        #: and every batch of keys hashed for it (forgotten once it has run).
        self._hashing: tuple[Command, Generator[None, None, None]] | None = None
        self._hashed: list[LongKeys] = []
        self.closed = False
        self.peer = "?"

    # -- life cycle ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer) if peer else "unix"
        if not self._on_open(self):
            self.closed = True
            transport.close()
            return
        # The session starts: greeting now, then negotiation.
        self._conn = ServerConnection(version=self._version, queue_depth=self._queue_depth,
                                      max_message_size=self._max_message_size,
                                      held_budget=self._held_budget)
        self._conn.send_greeting()
        self._queue_flush()
        self._update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return
        conn = self._conn
        if _log.isEnabledFor(logging.INFO) and conn is not None:
            how = "EOF" if exc is None else f"{type(exc).__name__}: {exc}"
            _log.info("QMP monitor %s gone (%s); %d bytes of an unfinished request and "
                      "%d queued requests discarded", self.peer, how,
                      conn.buffered_bytes + conn.unfinished_at_end,
                      conn.pending_requests)
        self.closed = True
        self._broadcaster.discard(self)
        if conn is not None:
            conn.discard_input()  # frees unfinished input and its share of the held budget
        self._transport = None
        self._on_close(self)

    def close(self) -> None:
        """Write what is queued, then close (EOF to the client).

        A reply still being encoded is written out first, step by step (the
        transport is closed when :meth:`flush` has written its last piece).
        """
        if self._transport is None or self.closed:
            return
        self.flush()
        self.closed = True  # no more output; leaves the broadcast on connection_lost
        if self._conn is not None and self._conn.output_pending:
            self._close_when_written = True
            return
        self._transport.close()

    def abort(self) -> None:
        """Drop the connection now, unsent output and all (a close that cannot drain)."""
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    # -- input ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is None or self.closed:
            return
        conn.receive_data(data)  # kept unparsed if the queue is full (TLS reads on)
        self._update_reading()
        self._schedule_pump()

    def eof_received(self) -> bool:
        """Half-close: answer every request received, then close (as QEMU)."""
        conn = self._conn
        if conn is None or self.closed:
            return False
        conn.receive_data(b"")
        if conn.parsing and self._peer_hung_up():
            # Gone during a long parse: free what it held now, not when its
            # replies fail to be written.
            dropped = conn.drop_unparsed()
            _log.info("QMP monitor %s hung up; %d bytes of unparsed input dropped",
                      self.peer, dropped)
        self._schedule_pump()
        # A TLS transport cannot stay half-open; a plain socket can, for the replies.
        return self._transport is not None and self._transport.get_extra_info(
            "sslcontext") is None

    def _peer_hung_up(self) -> bool:
        """Whether the peer closed its end entirely, not just for writing (a Unix
        socket says so; a TCP peer's FIN looks like a half-close, and is one)."""
        sock = self._transport.get_extra_info("socket") if self._transport else None
        if sock is None:
            return False
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return any(events & select.POLLHUP for _fd, events in poller.poll(0))

    def _update_reading(self) -> None:
        """Read the socket only while the connection and the output allow it."""
        conn = self._conn
        if self._transport is None or conn is None or self.closed:
            return
        want = conn.wants_data and not self._writing_paused
        if want != self._reading:
            self._reading = want
            if want:
                self._transport.resume_reading()
            else:
                self._transport.pause_reading()

    def pause_writing(self) -> None:
        """The client does not read its replies: stop running its requests."""
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()
        self._queue_flush()  # the rest of a reply being encoded
        self._schedule_pump()

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
            self._internal_error()

    def _internal_error(self) -> None:
        _log.exception("QMP monitor %s: internal error; disconnecting it", self.peer)
        self.abort()

    def _pump_one(self) -> None:
        conn = self._conn
        if (conn is None or self.closed or self._writing_paused or conn.output_pending
                or self._hashing is not None):
            return  # resume_writing, the reply's end or the hashing's end pumps again
        request = conn.next_event()
        if conn.accepts_events:
            self._broadcaster.add(self)  # negotiated: events flow from now on
        if isinstance(request, Command):
            self._run(conn, request)
            if not self.closed:
                self._schedule_pump()
        elif isinstance(request, ConnectionClosed):
            self.close()
            return
        elif conn.has_unparsed_input:
            self._schedule_pump()  # the rest of the input, after the other monitors
        self._queue_flush()
        self._update_reading()

    def _run(self, conn: ServerConnection, command: Command) -> None:
        try:
            value = self._executor.execute(command)
        except LongKeys as long_keys:  # checked before any effect: run it again after
            self._hashing = (command, long_keys.steps())
            self._hashed.append(long_keys)
            asyncio.get_running_loop().call_soon(self._hash_on)
        except CommandFailure as failure:
            conn.send_failure(command, failure)
        except Exception as exc:  # a bug: answer anyway, so the client is not left waiting
            _log.exception("command %s failed", command.name)
            conn.send_error(command, "GenericError", f"internal error: {exc}")
        else:
            if self.closed:
                return  # the command ended the session (quit)
            conn.send_return(command, value)

    def _hash_on(self) -> None:
        """One step of hashing a command's long keys; the command once they are hashed."""
        hashing = self._hashing
        conn = self._conn
        if hashing is None or conn is None:
            return
        command, steps = hashing
        try:
            if self.closed:
                raise StopIteration
            next(steps)
        except StopIteration:
            self._hashing = None
            if not self.closed:
                self._run(conn, command)  # may find more long keys (nested): hashed next
            if self._hashing is None:
                self._forget_hashed()
                self._queue_flush()
                self._schedule_pump()
        except Exception:  # a bug below: drop this client, keep serving the others
            self._hashing = None
            self._forget_hashed()
            self._internal_error()
        else:
            asyncio.get_running_loop().call_soon(self._hash_on)

    def _forget_hashed(self) -> None:
        for long_keys in self._hashed:
            long_keys.release()
        self._hashed.clear()

    # -- output --------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue an event for this monitor; disconnect it if it is over its bound."""
        conn = self._conn
        if self.closed or conn is None:
            return
        if self._unsent > self._max_outbound:
            # The bound is stale once the transport drains: measure before judging.
            buffered = self._transport.get_write_buffer_size() if self._transport else 0
            self._unsent = conn.output_size + buffered
            if self._unsent > self._max_outbound:
                self._overflow()
                return
        was_empty = not conn.output_size
        if conn.send_event(data):
            self._unsent += len(data)
            if was_empty:  # the first line since the last flush: one flush is enough
                self._flusher.add(self)

    def _queue_flush(self) -> None:
        conn = self._conn
        if conn is not None and (conn.output_size or conn.output_pending):
            self._flusher.add(self)

    def flush(self) -> None:
        """Write what is queued, and one step of a reply being encoded.

        The rest of that reply follows one step per loop iteration, while the
        transport is under its high-water mark (a peer that does not read
        holds up only its own reply); its next request runs once it is written.
        """
        conn = self._conn
        transport = self._transport
        if conn is None or transport is None:
            return
        was_pending = conn.output_pending
        if was_pending and self._writing_paused:
            return  # resume_writing flushes again: a peer not reading gets no more steps
        try:
            data = conn.data_to_send(one_step=True)
        except Exception:  # a value that is not JSON, met in a later step: a bug above
            self._internal_error()
            return
        if data:
            transport.write(self._layout.feed(data) if self._layout is not None else data)
        self._unsent = transport.get_write_buffer_size()
        if conn.output_pending:
            if not self._writing_paused:
                self._flusher.add(self)  # the next step, after the other monitors
        elif self._close_when_written:
            self._close_when_written = False
            transport.close()
        elif was_pending and not self.closed:
            self._schedule_pump()  # requests waited while the reply was being encoded

    def _overflow(self) -> None:
        _log.warning("QMP monitor %s disconnected: %d bytes of output unread (limit %d)",
                     self.peer, self._unsent, self._max_outbound)
        self.abort()  # leaves the broadcast on connection_lost, not mid-publish
