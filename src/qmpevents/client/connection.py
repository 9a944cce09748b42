"""The asyncio QMP client: one socket, many subscribers, replies matched by id.

Bytes go through the sans-IO :class:`~qmpevents.protocol.ClientConnection`
in whole socket reads (:data:`READ_SIZE` at a time): each read is decoded in one batch
and handed to every subscriber as one list, so the per-event cost is little
more than msgspec's decode.  The reader is an :class:`asyncio.Protocol`, not
a task: no extra wake-up per read, and backpressure is
``transport.pause_reading()``.

Within a read, messages are processed in arrival order: events that came
before a command's reply are in the subscribers' queues before ``execute``
returns, which is what makes "subscribe, act, then wait" race-free.

Events of the first connect -- those a server sends between
``qmp_capabilities`` and its reply too -- are held (once negotiated, the
reader pauses) until the code that called ``connect()`` next yields to the
event loop, so a
subscription made straight after ``connect()`` -- ``async with connect(a) as
qmp: async for ev in qmp.events():`` -- gets every one of them.

The library logs through ``logging.getLogger("qmpevents")``, which has a
``NullHandler``: nothing is printed unless the application configures logging.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as _ssl
import weakref
from collections.abc import Callable, Coroutine, Generator, Mapping
from types import TracebackType
from typing import Any, Final, Protocol, Self, overload

from qmpevents.addresses import Address, AddressLike, TcpAddress, UnixAddress, parse_address
from qmpevents.client.expect import Expectation, FirstMatch
from qmpevents.client.filters import E2, E, EventFilter, EventSpec, Predicate, QMPEvent
from qmpevents.client.ratelimit import RateLimitedLog
from qmpevents.client.subscriptions import (
    DEFAULT_MAXSIZE,
    ConnectionResumed,
    Overflow,
    Sink,
    Subscription,
)
from qmpevents.client.unreachable import connect_error, tls_refused
from qmpevents.clock import REAL_CLOCK, Clock, Timer, deadline, sleep
from qmpevents.codec import DEFAULT_MAX_MESSAGE_SIZE
from qmpevents.errors import (
    ConnectionLost,
    InvalidArguments,
    MessageTooLarge,
    MonitorBusy,
    QMPError,
    QMPEventsError,
    RemoteProtocolError,
    SendQueueFull,
    SubscriberStalled,
)
from qmpevents.protocol import (
    EVENT_CLASSES,
    ClientConnection,
    ClientEvent,
    ClientState,
    Greeting,
    ProtocolViolation,
    Reply,
    Resynced,
)

logging.getLogger("qmpevents").addHandler(logging.NullHandler())
logger = logging.getLogger("qmpevents.client")

READ_SIZE: Final = 256 * 1024
"""Bytes per socket read, at most: the event loop's work per read is paid
once per 1,400 events of a fast stream instead of 350 (6-10 % more events/s
than 64 KiB reads in ``benchmarks/bench_client.py``; 1 MiB gave no more).
A read is decoded in pieces of :data:`~qmpevents.codec.framing.BLOCK_PIECE`
bytes, which bound what a kept event keeps alive of it."""
PARSE_SLICE: Final = 4 * 1024
"""Bytes of the byte-by-byte parser's work per loop iteration (a message the
fast path cannot take, such as an oversized one): about 5 ms (10 ms on a slow
VM), so timers (``connect_timeout``, ``execute(timeout=)``) fire on time
meanwhile."""
MAX_UNSENT: Final = 1024 * 1024
"""Default bound on output the server has not read: ``execute`` raises beyond it."""
TLS_NUDGE: Final = b"\n"
"""Written as its own TLS record after every command.  QEMU (7.2) over TLS reads
its monitor one byte per wake-up of the socket: the rest of a command's TLS
record sits decrypted in GnuTLS's buffer, unseen, until more bytes arrive.
A following record keeps the socket readable until the command is consumed;
whitespace between JSON messages is ignored by every QMP server."""

EARLY_HELD_LIMIT: Final = 4096
"""Events held before the negotiation's reply, at most (see :meth:`_Link._events`)."""
EARLY_HELD_BYTES: Final = 64 << 20
"""Bytes received while events are held before the negotiation's reply, at most."""


BUSY_HINT: Final = ("QEMU serves one client per socket; add another -qmp socket, or "
                    "--multi-client to qmpevents serve")


def _unix_socket(address: UnixAddress) -> socket.socket:
    """A socket connected to *address*, or MonitorBusy if its backlog is full.

    A full backlog (QEMU listens with a backlog of 1: Linux queues two clients
    beyond the one it serves) makes a
    non-blocking connect() fail with EAGAIN, which asyncio would take for a
    connect under way and report as done: the socket, never connected, then
    fails at its first read with EINVAL.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect(address.path)
    except BlockingIOError:
        sock.close()
        raise MonitorBusy(str(address), f"its backlog is full (connections given up on "
                                        f"stay in it until the server takes them): the "
                                        f"monitor is busy ({BUSY_HINT})") from None
    except BaseException:
        sock.close()
        raise
    return sock


class LinkHost(Protocol):
    """What a link needs from the client that owns it (and nothing more)."""

    address: Address
    max_message_size: int
    trace: Callable[[str, bytes], None] | None
    ssl: _ssl.SSLContext | None
    max_unsent: int
    clock: Clock
    warnings: RateLimitedLog

    @property
    def reading_blocked(self) -> bool:
        """Whether a subscriber that applies backpressure is full."""

    def on_events(self, events: list[QMPEvent]) -> None:
        """Hand decoded events to the subscribers, in arrival order."""

    def on_resynced(self, status: Any) -> None:
        """A reconnect's fresh ``query-status`` is known (None if it failed)."""

    def on_fatal(self, link: _Link, error: BaseException) -> None:
        """*link* cannot go on (e.g. MessageTooLarge): end it and everyone waiting."""

    def on_lost(self, link: _Link, exc: Exception | None) -> None:
        """*link*'s connection ended."""

    def on_reader_held(self, held: bool) -> None:
        """The reader is paused by a full subscriber (True) or no longer (False)."""


class _Link(asyncio.Protocol):
    """One connection's lifetime: moves bytes between a socket and the sans-IO client.

    A reconnect makes a new link, so callbacks of a dead one cannot touch the
    next connection's state.
    """

    def __init__(self, host: LinkHost, *, resync: bool, hold: bool = False) -> None:
        self.host = host
        self.proto = ClientConnection(max_message_size=host.max_message_size, resync=resync)
        self.transport: asyncio.Transport | None = None
        self.pending: dict[str, asyncio.Future[Reply]] = {}
        loop = asyncio.get_running_loop()
        #: Resolved once negotiated (and, with *resync*, once the status is known).
        self.ready: asyncio.Future[None] = loop.create_future()
        self.ready.add_done_callback(_retrieve)
        self.lost: asyncio.Future[None] = loop.create_future()
        #: Resolved by the greeting: a socket that accepts and stays silent is busy.
        self.greeted: asyncio.Future[None] = loop.create_future()
        #: qmp_capabilities was answered: what is left is the resync status,
        #: which may be given up on.
        self.answered = False
        self.received_any = False
        self.negotiated = False
        self.paused = False
        self._parsing = False  # the parser's leftover work is scheduled
        self.quit_sent = False  # a connection lost after "quit" is an orderly end
        #: The server ended the connection (EOF or an error), not our close().
        self.server_ended = False
        self._quit_id: str | None = None
        #: Events of the first connect, held until connect() returns (see the
        #: module doc); those before negotiation's end too (a server may send
        #: events between qmp_capabilities and its reply).
        self.early: list[QMPEvent] | None = [] if hold else None
        self._early_bytes = 0  # received while self.early was filled before negotiation's end
        #: A fatal error that came while :attr:`early` was held: it ends the
        #: subscribers once they have what was held.
        self.fatal_while_held: BaseException | None = None
        self._resync = resync

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if hasattr(transport, "max_size"):  # the selector transports' recv() size
            transport.max_size = READ_SIZE

    def data_received(self, data: bytes) -> None:
        host = self.host
        if host.trace is not None:
            host.trace("in", data)
        self.received_any = True
        self._take(data)

    def _take(self, data: bytes) -> None:
        host = self.host
        proto = self.proto
        if self.early is not None and not self.negotiated:
            self._early_bytes += len(data)  # what the held events can take, at most
        try:
            if data:
                proto.receive_data(data, budget=PARSE_SLICE)
            else:
                proto.continue_parsing(PARSE_SLICE)
        except MessageTooLarge as exc:
            self._fail(exc)
            return
        if proto.parse_pending:
            self._parse_later()
        bulk = proto.only_events_ready
        items = proto.next_events()
        if not items:
            return
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: %d bytes, %d messages", host.address, len(data), len(items))
        if self.early is None and bulk:
            host.on_events(items)  # type: ignore[arg-type]  # all events: checked
        else:
            self._process(items)
        self.update_reading()

    def _fail(self, error: BaseException) -> None:
        """The connection cannot go on: what came before *error* is handed out first."""
        self._process(self.proto.next_events())
        if self.early is not None and self.negotiated:  # connect()'s caller is subscribing now
            self.fatal_while_held = error
            if self.transport is not None:
                self.transport.pause_reading()
            return
        self.hand_over_early()  # a connect that fails: to those subscribed before it
        self.host.on_fatal(self, error)

    def update_reading(self) -> None:
        """Pause while the parser has work left, events are held or a subscriber is
        full -- but never for a full subscriber while a command waits for its reply
        or before negotiation's end (its replies too): replies are always read."""
        if self.transport is None or self.lost.done():
            return
        blocked = self.host.reading_blocked
        holding = self.early is not None and self.negotiated  # the reply must be read first
        pause = self._parsing or holding or (blocked and self.negotiated and not self.pending)
        if pause != self.paused:
            self.paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()
        self.host.on_reader_held(pause and blocked)  # a full subscriber: for so long only

    def release_early(self) -> None:
        """connect() has returned and its caller subscribed: hand over what was held
        (then the fatal error that came while it was held, if one did)."""
        self.hand_over_early()
        if self.fatal_while_held is not None:
            self.host.on_fatal(self, self.fatal_while_held)
            return
        self.update_reading()

    def give_up_resync(self) -> None:
        """No status came in time: the events held for it go out after ``Resynced(None)``."""
        self.proto.give_up_resync()
        self._take(b"")

    def hand_over_early(self) -> None:
        """What is held, to the subscribers there are now; nothing is held after."""
        early, self.early = self.early, None
        if early:
            self.host.on_events(early)

    def _parse_later(self) -> None:
        """The parser has work left: go on in the next loop iteration, not reading meanwhile."""
        if self._parsing or self.transport is None:
            return
        self._parsing = True
        self.update_reading()
        asyncio.get_running_loop().call_soon(self._parse_on)

    def _parse_on(self) -> None:
        self._parsing = False
        if self.lost.done():
            return
        self._take(b"")  # no new bytes: the parser goes on
        self.update_reading()

    def eof_received(self) -> bool | None:
        """The server ended its output: hand out what it sent before, then close our side."""
        self.server_ended = True
        proto = self.proto
        if proto.state not in (ClientState.CLOSED, ClientState.ERROR):
            try:
                proto.receive_data(b"")
            except MessageTooLarge as exc:
                self._fail(exc)
                return False
            items = proto.next_events()
            if items:
                self._process(items)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:  # a reset, or the TLS stream cut: the server's end too
            self.server_ended = True
        if self.proto.state not in (ClientState.CLOSED, ClientState.ERROR):
            self.proto.close()
        if not self.lost.done():
            self.lost.set_result(None)
        self.host.on_lost(self, exc)

    # -- messages -----------------------------------------------------------

    def _process(self, items: list[ClientEvent]) -> None:
        """A read with more than events: keep the order, answer replies in place."""
        run: list[QMPEvent] = []
        for item in items:
            if type(item) in EVENT_CLASSES:
                run.append(item)  # type: ignore[arg-type]
                continue
            if run:
                self._events(run)
                run = []
            if isinstance(item, Reply):
                self._reply(item)
            elif isinstance(item, Resynced):
                self.host.on_resynced(item.status)
                self._set_ready()
            elif isinstance(item, Greeting):
                self._greeted()
            elif isinstance(item, ProtocolViolation):
                self.host.warnings.warning(
                    "protocol", f"{self.host.address}: protocol violation: {item.problem}")
                if self.proto.greeting is None:  # not a QMP server: say so now, not at timeout
                    self._fail_ready(RemoteProtocolError(
                        f"{self.host.address} is not a QMP server: {item.problem}"))
                    return
        if run:
            self._events(run)

    def _events(self, events: list[QMPEvent]) -> None:
        early = self.early
        if early is None:
            self.host.on_events(events)
            return
        early.extend(events)  # once negotiated, at most the rest of this read: reading pauses
        if self.negotiated:
            return
        if len(early) > EARLY_HELD_LIMIT or self._early_bytes > EARLY_HELD_BYTES:
            # Before the negotiation's reply reading goes on (the reply must be
            # read): a server that floods events there gets no unbounded hold;
            # they go to the subscriptions there are, which bound them.
            self.host.warnings.warning(  # counted, and said at most once a second
                "early", f"{self.host.address}: {len(early)} events ({self._early_bytes} "
                f"bytes) before the qmp_capabilities reply: handed to the subscriptions "
                f"made before connect(), not held")
            self.early, self._early_bytes = [], 0
            self.host.on_events(early)

    def _greeted(self) -> None:
        if not self.greeted.done():
            self.greeted.set_result(None)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: greeting %r", self.host.address, self.proto.greeting)
        self._send("qmp_capabilities")

    def _reply(self, reply: Reply) -> None:
        if reply.command == "qmp_capabilities":
            self.answered = True
            if reply.error is not None:
                self._fail_ready(QMPError(reply.error.error_class, reply.error.desc,
                                          command=reply.command, id=reply.id))
            elif not self._resync:
                self._set_ready()
            else:
                self._write()  # the protocol queued its resync query-status
            return
        future = self.pending.pop(reply.id, None)
        if future is not None and not future.done():
            future.set_result(reply)

    def _set_ready(self) -> None:
        self.negotiated = True
        if not self.ready.done():
            self.ready.set_result(None)

    def _fail_ready(self, error: BaseException) -> None:
        if not self.greeted.done():
            self.greeted.set_result(None)  # stop waiting for a greeting: ready says why
        if not self.ready.done():
            self.ready.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def _send(self, command: str, arguments: Mapping[str, Any] | None = None) -> str:
        request_id = self.proto.send_command(command, dict(arguments) if arguments else None)
        if command == "quit":
            self.quit_sent = True
            self._quit_id = request_id
        self._write()
        return request_id

    def _write(self) -> None:
        data = self.proto.data_to_send()
        assert self.transport is not None
        self.transport.write(data)
        if self.host.ssl is not None:
            self.transport.write(TLS_NUDGE)
        if self.host.trace is not None:
            self.host.trace("out", data)

    # -- commands -------------------------------------------------------------

    async def execute(self, command: str, arguments: Mapping[str, Any] | None,
                      timeout: float | None) -> Any:
        transport = self.transport
        assert transport is not None
        unsent = transport.get_write_buffer_size()
        if unsent > self.host.max_unsent:
            raise SendQueueFull(f"{self.host.address}: {unsent} bytes unsent (the bound is "
                                f"{self.host.max_unsent}): the server is not reading")
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        request_id = self._send(command, arguments)
        self.pending[request_id] = future
        self.update_reading()  # replies are always read
        try:
            async with deadline(self.host.clock, timeout, f"no reply to {command}"):
                reply = await future
        finally:
            if self.pending.pop(request_id, None) is not None:
                self.proto.forget(request_id)  # nobody waits: drop the reply when it comes
        if reply.error is not None:
            raise QMPError(reply.error.error_class, reply.error.desc, command=command,
                           id=request_id)
        return reply.value

    def fail_pending(self, error: BaseException, *, server_ended: bool = False) -> None:
        """Fail every pending command with *error*; with *server_ended* (the
        server closed or reset the connection, not our close()), a pending quit
        is answered instead."""
        pending, self.pending = self.pending, {}
        for request_id, future in pending.items():
            if future.done():
                continue
            if request_id == self._quit_id and server_ended:
                # The end of the connection is quit's answer: QEMU 7.2 over TLS
                # closes without writing the reply (its SHUTDOWN event comes).
                future.set_result(Reply("quit", request_id, value={}))
            else:
                future.set_exception(error)
                future.exception()  # a caller that gave up must not trigger a warning
        self._fail_ready(error)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class QMPClient:
    """An asyncio QMP client for event consumers.  Create with :func:`connect`.

    ``async with connect(address) as qmp:`` connects, negotiates and closes on
    exit; ``qmp = await connect(address)`` does the same without the block
    (then call :meth:`close`).

    Options:

    * *reconnect* -- when the connection drops, reconnect (with backoff from
      *reconnect_delay* up to *reconnect_max_delay* seconds) instead of
      ending the subscribers.  After each reconnect every subscriber receives a
      :class:`~qmpevents.client.subscriptions.ConnectionResumed` marker
      (name ``QMPEVENTS_RECONNECTED``) saying events may have been missed,
      whose ``data["status"]`` is a fresh ``query-status`` result, also kept
      in :attr:`last_status`.  Commands issued while disconnected raise
      :class:`~qmpevents.errors.ConnectionLost`.
    * *max_message_size* -- a bigger message from the server raises
      :class:`~qmpevents.errors.MessageTooLarge` in every pending ``execute``
      and every event iterator, is logged, and closes the connection (no
      reconnect: it would recur).
    * *connect_timeout* -- seconds for the greeting, the negotiation and (with
      *reconnect*) the resync ``query-status``: a server that negotiates but
      does not answer that is used without the status (``last_status`` None).
    * *ssl* -- an :class:`ssl.SSLContext` to talk TLS to a ``tcp:`` server
      (QEMU's ``tls-creds-x509``); :func:`qmpevents.tls.client_context`
      builds one from QEMU's credentials directory.  *server_hostname* is the
      name the server's certificate must carry (default: the address's host).
    * *greeting_timeout* -- seconds to wait for the greeting (and, with
      *ssl*, for the TLS handshake) once the socket is connected: a socket
      that accepts and says nothing is a QEMU monitor busy with another
      client (:class:`~qmpevents.errors.MonitorBusy`).
    * *stall_timeout* -- how long a full ``overflow="block"`` subscription may
      hold the reader before it is cut off
      (:class:`~qmpevents.errors.SubscriberStalled`); None: never.
    * *max_unsent* -- bytes of output the server has not read beyond which
      ``execute`` raises :class:`~qmpevents.errors.SendQueueFull`.
    * *close_grace* -- seconds :meth:`close` waits for unsent output to drain
      before it aborts the connection.
    * *clock* -- a :class:`~qmpevents.clock.Clock` for every timeout, back-off
      and the reconnect marker's times; tests pass a
      :class:`~qmpevents.clock.ManualClock`.
    * *trace* -- called as ``trace("in", data)`` with every chunk of bytes
      received and ``trace("out", data)`` with every message sent, in wire
      order (``qmpevents record --all-messages``).  Chunks are socket reads:
      a message may span two, and one may hold several.
    """

    def __init__(self, address: AddressLike, *, reconnect: bool = False,
                 reconnect_delay: float = 0.1, reconnect_max_delay: float = 2.0,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 connect_timeout: float = 10.0,
                 trace: Callable[[str, bytes], None] | None = None,
                 ssl: _ssl.SSLContext | None = None,
                 server_hostname: str | None = None,
                 greeting_timeout: float = 3.0,
                 stall_timeout: float | None = 10.0,
                 max_unsent: int = MAX_UNSENT,
                 close_grace: float = 1.0,
                 clock: Clock | None = None) -> None:
        self.address = parse_address(address)
        if ssl is not None and not isinstance(self.address, TcpAddress):
            raise ValueError(f"{self.address}: TLS is for tcp: addresses")
        self.ssl = ssl
        self.server_hostname = server_hostname
        #: Observer of the raw traffic (see *trace* above), or None.
        self.trace = trace
        self.reconnect = reconnect
        self.reconnect_delay = reconnect_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.max_message_size = max_message_size
        self.connect_timeout = connect_timeout
        self.greeting_timeout = greeting_timeout
        self.stall_timeout = stall_timeout
        self.max_unsent = max_unsent
        self.close_grace = close_grace
        self.clock: Clock = clock or REAL_CLOCK
        #: Warnings about what the server sent, rate-limited; ``.counts`` counts them all.
        self.warnings = RateLimitedLog(logger, self.clock)
        #: The latest ``query-status`` result from a (re)connect with *reconnect* on.
        self.last_status: Any = None
        #: How many times the connection has been re-established.
        self.reconnects = 0
        self._link: _Link | None = None
        self._held_link: _Link | None = None  # connect(hold_events=True): until released
        self._sinks: dict[int, weakref.ref[Sink]] = {}
        # A filtered subscription queues events sparsely: each would keep its
        # whole read alive until its raw is read, so raws are cut at decode.
        self._cut_raw_at_decode = False
        self._blocked: set[int] = set()
        self._closing = False
        self._ended: BaseException | None = None  # why subscribers were ended for good
        self._fatal_error: BaseException | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._lost_at = 0.0
        self._stall_timer: Timer | None = None

    # -- life cycle -----------------------------------------------------------

    @property
    def greeting(self) -> Greeting | None:
        """The server's greeting (version and capabilities) on the current connection."""
        return None if self._link is None else self._link.proto.greeting

    @property
    def connected(self) -> bool:
        """True while a negotiated connection is up."""
        link = self._link
        return link is not None and link.negotiated and not link.lost.done()

    async def connect(self, *, hold_events: bool = False) -> Self:
        """Connect and negotiate; raise OSError, TimeoutError or QMPError if that fails.

        With *reconnect*, a server that negotiates but leaves the resync
        ``query-status`` unanswered for ``connect_timeout`` is used without
        it (``last_status`` None), not refused.

        The events that come during and right after negotiation wait until the caller's
        code has run on (it subscribes now, in the same step); with
        *hold_events*, until :meth:`release_events` instead: for a caller that
        subscribes from another thread, such as the blocking facade.
        """
        if self._link is not None:
            raise RuntimeError("already connected")
        self._closing = False
        self._ended = None
        self._fatal_error = None  # a new connection: an old one's fatal error is history
        self._lost_at = 0.0
        self._held_link = None
        link = await self._open(hold=True)
        if link.fatal_while_held is not None:  # it ended before connect() could return
            link.release_early()  # what came before the error, to those subscribed already
            raise link.fatal_while_held
        if hold_events:
            self._held_link = link
        else:
            asyncio.get_running_loop().call_soon(link.release_early)  # once the caller subscribed
        return self

    def release_events(self) -> None:
        """Hand over the events ``connect(hold_events=True)`` held (reading resumes;
        ``execute()`` does it first, since a reply must be read)."""
        link, self._held_link = self._held_link, None
        if link is not None:
            link.release_early()

    async def _open(self, *, hold: bool = False) -> _Link:
        loop = asyncio.get_running_loop()
        link = _Link(self, resync=self.reconnect, hold=hold)
        link.proto.raw_demand.seen |= self._cut_raw_at_decode
        address = self.address
        status_only = False  # negotiated: only the resync status is awaited
        try:
            async with deadline(self.clock, self.connect_timeout, f"{address}: not connected"):
                try:
                    if isinstance(address, UnixAddress):
                        await loop.create_unix_connection(lambda: link,
                                                          sock=_unix_socket(address))
                    else:
                        assert isinstance(address, TcpAddress)
                        if self.ssl is None:
                            await loop.create_connection(lambda: link, address.host,
                                                         address.port)
                        else:
                            # A busy QEMU monitor leaves a second client in the backlog:
                            # no handshake, as no greeting, within greeting_timeout.
                            await loop.create_connection(
                                lambda: link, address.host, address.port, ssl=self.ssl,
                                server_hostname=self.server_hostname or address.host,
                                ssl_handshake_timeout=min(self.connect_timeout,
                                                          self.greeting_timeout))
                except _ssl.SSLError:  # says what failed; callers catch its classes
                    raise
                except ConnectionAbortedError as exc:
                    if self.ssl is None or "handshake" not in str(exc):
                        raise connect_error(address, exc, tls=self.ssl is not None) from exc
                    # asyncio's handshake timeout (its only report of it is this text)
                    raise MonitorBusy(str(address), self._silent_reason(
                        "TLS handshake", "it does not speak TLS (or its handshake is slow)",
                        min(self.connect_timeout, self.greeting_timeout))) from None
                except MonitorBusy:
                    raise
                except OSError as exc:  # the OS's error does not say which address
                    raise connect_error(address, exc, tls=self.ssl is not None) from exc
                self._link = link
                try:
                    await self._await_greeting(link)
                    await asyncio.shield(link.ready)
                except asyncio.CancelledError:
                    status_only = link.answered and not link.ready.done()
                    if not status_only:
                        self._abandon(link)
                    raise
                except BaseException as exc:
                    self._abandon(link)
                    if isinstance(exc, ConnectionLost) and self.ssl is not None \
                            and not link.received_any:  # a TLS server that refused this client
                        raise tls_refused(address, exc.__cause__) from exc
                    raise
        except TimeoutError:
            if not status_only:
                raise
            # A server that does not answer the resync query-status in time is
            # used without it: its held events go out after Resynced(None).
            logger.info("%s: no reply to query-status within %g s; going on without the "
                        "status", address, self.connect_timeout)
            link.give_up_resync()
            if not link.ready.done():  # the release did not happen: never return half-open
                self._abandon(link)
                raise
        except BaseException:
            if status_only:  # cancelled from outside while the status was awaited
                self._abandon(link)
            raise
        logger.info("%s: connected", address)
        return link

    def _abandon(self, link: _Link) -> None:
        """A connect attempt failed: its held events go to those subscribed already."""
        self._link = None
        link.hand_over_early()  # to those subscribed before connect()
        if link.transport is not None:
            link.transport.abort()

    async def _await_greeting(self, link: _Link) -> None:
        try:
            async with deadline(self.clock, self.greeting_timeout,
                                f"{self.address}: bytes, but no complete QMP greeting"):
                await asyncio.shield(link.greeted)
        except TimeoutError:
            if link.received_any:
                raise  # something that is not a greeting: the usual timeout
            raise MonitorBusy(str(self.address), self._silent_reason(
                "QMP greeting", "it expects TLS (--tls-creds), or this is not a QMP server",
                self.greeting_timeout)) from None

    def _silent_reason(self, missing: str, otherwise: str, waited: float) -> str:
        return (f"connected, but no {missing} within {waited:g} s: the monitor is busy "
                f"({BUSY_HINT}), or {otherwise}")

    async def close(self) -> None:
        """Close the connection; pending commands fail, iterators end.  Idempotent."""
        self._closing = True
        self._held_link = None  # held events die with their connection
        if self._reconnector is not None:
            self._reconnector.cancel()
            self._reconnector = None
        link = self._link
        if link is not None and link.transport is not None:
            link.transport.close()
            try:
                async with deadline(self.clock, self.close_grace):
                    await asyncio.shield(link.lost)
            except TimeoutError:  # the server stopped reading: do not wait for a drain
                logger.info("%s: output not drained in %g s; aborting", self.address,
                            self.close_grace)
                link.transport.abort()
                await link.lost
        self._end_all(ConnectionLost("the connection was closed"))

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def __await__(self) -> Generator[Any, None, Self]:
        return self.connect().__await__()

    # -- commands -------------------------------------------------------------

    async def execute(self, command: str, arguments: Mapping[str, Any] | None = None, *,
                      timeout: float | None = None) -> Any:
        """Run *command* and return its ``return`` value.

        Raises :class:`~qmpevents.errors.QMPError` on an error reply,
        :class:`TimeoutError` after *timeout* seconds (a late reply is then
        ignored), :class:`~qmpevents.errors.ConnectionLost` if the connection
        is down or drops before the reply, or the fatal error that ended it.
        """
        link = self._link
        if self._fatal_error is not None:
            raise self._fatal_error
        if not isinstance(command, str):
            raise InvalidArguments(f"the command is a string, not {type(command).__name__}")
        if arguments is not None and (not isinstance(arguments, Mapping)
                                      or not all(isinstance(key, str) for key in arguments)):
            raise InvalidArguments(f"{command}: arguments are a JSON object (a mapping with "
                                   f"string keys), not {type(arguments).__name__}")
        if link is None or not self.connected:
            raise ConnectionLost(f"not connected to {self.address}")
        self.release_events()  # held events pause the reader: the reply must be read
        return await link.execute(command, arguments, timeout)

    # -- events ---------------------------------------------------------------

    @overload
    def listen(self, event: type[E], /, *, match: Mapping[str, Any] | None = None,
               predicate: Predicate | None = None, maxsize: int = DEFAULT_MAXSIZE,
               overflow: Overflow = "block") -> Subscription[E]: ...
    @overload
    def listen(self, event: type[E], other: type[E2], /, *,
               match: Mapping[str, Any] | None = None, predicate: Predicate | None = None,
               maxsize: int = DEFAULT_MAXSIZE,
               overflow: Overflow = "block") -> Subscription[E | E2]: ...
    @overload
    def listen(self, *names: EventSpec, match: Mapping[str, Any] | None = None,
               predicate: Predicate | None = None, maxsize: int = DEFAULT_MAXSIZE,
               overflow: Overflow = "block") -> Subscription[QMPEvent]: ...

    def listen(self, *names: Any, match: Mapping[str, Any] | None = None,
               predicate: Predicate | None = None, maxsize: int = DEFAULT_MAXSIZE,
               overflow: Overflow = "block") -> Subscription[Any]:
        """Subscribe now to events by name (globs allowed) or class, data *match*, *predicate*.

        Use as ``async with qmp.listen("STOP") as events:``, then act, then
        ``await events.get(timeout=5)``: events are queued from this call on.
        With event classes (``listen(BlockIoError)``) the subscription is
        typed: ``get()`` returns a BlockIoError to the type checker too.
        """
        subscription: Subscription[Any] = Subscription(
            self, EventFilter(names, match, predicate), maxsize=maxsize, overflow=overflow)
        self._subscribe(subscription)
        return subscription

    @overload
    def events(self, event: type[E], /, *, match: Mapping[str, Any] | None = None,
               predicate: Predicate | None = None, maxsize: int = DEFAULT_MAXSIZE,
               overflow: Overflow = "block") -> Subscription[E]: ...
    @overload
    def events(self, event: type[E], other: type[E2], /, *,
               match: Mapping[str, Any] | None = None, predicate: Predicate | None = None,
               maxsize: int = DEFAULT_MAXSIZE,
               overflow: Overflow = "block") -> Subscription[E | E2]: ...
    @overload
    def events(self, *names: EventSpec, match: Mapping[str, Any] | None = None,
               predicate: Predicate | None = None, maxsize: int = DEFAULT_MAXSIZE,
               overflow: Overflow = "block") -> Subscription[QMPEvent]: ...

    def events(self, *names: Any, match: Mapping[str, Any] | None = None,
               predicate: Predicate | None = None, maxsize: int = DEFAULT_MAXSIZE,
               overflow: Overflow = "block") -> Subscription[Any]:
        """Every event (or those passing the filters), for ``async for``.

        The iteration ends normally when the connection ends (after the queued
        events); a fatal error such as MessageTooLarge is raised instead.
        """
        return self.listen(*names, match=match, predicate=predicate, maxsize=maxsize,
                           overflow=overflow)

    @overload
    def wait_for(self, event: type[E], /, *, timeout: float | None = None,
                 match: Mapping[str, Any] | None = None,
                 predicate: Predicate | None = None) -> Coroutine[Any, Any, E]: ...
    @overload
    def wait_for(self, event: type[E], other: type[E2], /, *, timeout: float | None = None,
                 match: Mapping[str, Any] | None = None,
                 predicate: Predicate | None = None) -> Coroutine[Any, Any, E | E2]: ...
    @overload
    def wait_for(self, *names: EventSpec, timeout: float | None = None,
                 match: Mapping[str, Any] | None = None,
                 predicate: Predicate | None = None) -> Coroutine[Any, Any, QMPEvent]: ...

    def wait_for(self, *names: Any, timeout: float | None = None,
                 match: Mapping[str, Any] | None = None,
                 predicate: Predicate | None = None) -> Coroutine[Any, Any, Any]:
        """The next event passing the filters: ``ev = await qmp.wait_for("RESET")``.

        Listening starts when this is called, not when it is awaited, so
        ``w = qmp.wait_for(...)``, then a command, then ``await w`` cannot
        miss the event; *timeout* counts from the await.  ``wait_for(Reset)``
        returns a Reset.  Raises TimeoutError or ConnectionLost.
        """
        waiter: FirstMatch[Any] = FirstMatch(EventFilter(names, match, predicate))
        self._subscribe(waiter)
        return self._first_match(waiter, timeout)

    async def _first_match(self, waiter: FirstMatch[E], timeout: float | None) -> E:
        try:
            names = ", ".join(waiter.filter.names) or "any event"
            async with deadline(self.clock, timeout, f"no {names}"):
                return await waiter.result
        finally:
            self._unsubscribe(waiter)

    def expect(self, *names: EventSpec, timeout: float | None = 10.0,
               match: Mapping[str, Any] | None = None) -> Expectation:
        """``async with qmp.expect("A", "B", timeout=5): ...`` -- see :class:`Expectation`."""
        return Expectation(self, names, timeout, match)

    # -- the hub: subscribers and flow control --------------------------------

    def _subscribe(self, sink: Sink) -> None:
        if isinstance(sink, Subscription) and not sink.filter.passes_all:
            self._cut_raw_at_decode = True
            if self._link is not None:
                self._link.proto.raw_demand.seen = True
        key = id(sink)
        self._sinks[key] = weakref.ref(sink, lambda _ref: self._forget(key))
        if self._ended is not None:
            sink.end(self._ended)

    def _unsubscribe(self, sink: Sink) -> None:
        self._sinks.pop(id(sink), None)

    def _forget(self, key: int) -> None:
        self._sinks.pop(key, None)
        self._unblock_key(key)

    def _block(self, sink: Sink) -> None:
        self._blocked.add(id(sink))

    def _unblock(self, sink: Sink) -> None:
        self._unblock_key(id(sink))

    def _unblock_key(self, key: int) -> None:
        blocked = self._blocked
        if key not in blocked:
            return
        blocked.discard(key)
        link = self._link
        if not blocked and link is not None:
            link.update_reading()

    def _stalled(self, sink: Subscription[Any]) -> None:
        """Cut off a subscriber that stayed full (see :mod:`.subscriptions`)."""
        logger.warning("%s: %r stayed full; cut off so that the rest keep receiving",
                       self.address, sink)
        sink.cut_off(SubscriberStalled(
            f"{sink!r} was cut off: it stayed full while the connection had to go on"))

    def on_reader_held(self, held: bool) -> None:
        if not held:
            if self._stall_timer is not None:
                self._stall_timer.cancel()
                self._stall_timer = None
        elif self.stall_timeout is not None and self._stall_timer is None:
            self._stall_timer = self.clock.call_later(self.stall_timeout, self._stall_expired)

    def _stall_expired(self) -> None:
        self._stall_timer = None
        for key in tuple(self._blocked):
            ref = self._sinks.get(key)
            sink = None if ref is None else ref()
            if isinstance(sink, Subscription):
                self._stalled(sink)
            else:
                self._unblock_key(key)

    def _live_sinks(self) -> list[Sink]:
        sinks = [ref() for ref in self._sinks.values()]
        return [sink for sink in sinks if sink is not None]

    @property
    def reading_blocked(self) -> bool:
        return bool(self._blocked)

    def on_events(self, events: list[QMPEvent]) -> None:
        for ref in tuple(self._sinks.values()):
            sink = ref()
            if sink is None:
                continue
            try:
                sink.deliver(events)
            except Exception as exc:  # e.g. a user's predicate: end that sink, not the link
                logger.exception("%s: a subscriber failed; ending it", self.address)
                sink.end(exc)

    def on_resynced(self, status: Any) -> None:
        self.last_status = status
        if self._lost_at == 0.0:
            return  # the first connection: nothing was missed
        downtime = self.clock.monotonic() - self._lost_at
        self._lost_at = 0.0
        self.reconnects += 1
        logger.info("%s: reconnected after %.3f s; events may have been missed",
                    self.address, downtime)
        marker = ConnectionResumed.make(self.clock.time(), status, self.reconnects, downtime)
        for sink in self._live_sinks():
            sink.resumed(marker)

    def _end_all(self, error: BaseException) -> None:
        self._ended = error
        for sink in self._live_sinks():
            sink.end(error)

    # -- failures -------------------------------------------------------------

    def on_fatal(self, link: _Link, error: BaseException) -> None:
        logger.error("%s: %s; closing the connection", self.address, error)
        self._fatal_error = error
        self._closing = True
        link.fail_pending(error)
        self._end_all(error)
        if link.transport is not None:
            link.transport.abort()

    def on_lost(self, link: _Link, exc: Exception | None) -> None:
        if link is not self._link:
            return
        self._link = None
        self._blocked.clear()
        self.on_reader_held(False)
        if link.quit_sent or self._closing:
            logger.info("%s: connection closed after %s", self.address,
                        "quit" if link.quit_sent else "close()")
        elif exc is not None:
            logger.warning("%s: connection lost: %s", self.address, exc)
        else:
            logger.info("%s: connection closed", self.address)
        lost = ConnectionLost(f"connection to {self.address} lost")
        lost.__cause__ = exc
        link.fail_pending(lost, server_ended=link.server_ended or not self._closing)
        if not link.negotiated:
            return  # a failed (re)connect attempt: _open raises it to its caller
        if self._closing or not self.reconnect:
            if self._fatal_error is None:
                self._end_all(lost)
            return
        self._lost_at = self.clock.monotonic()
        self._reconnector = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        delay = self.reconnect_delay
        while not self._closing:
            await sleep(self.clock, delay)  # backoff between attempts, not synchronisation
            try:
                await self._open()
            except (OSError, TimeoutError, QMPEventsError) as exc:
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("%s: reconnect failed: %s", self.address, exc)
                delay = min(delay * 2, self.reconnect_max_delay)
                continue
            break
        if self._reconnector is asyncio.current_task():  # a newer loop may have replaced us
            self._reconnector = None


def connect(address: AddressLike, **options: Any) -> QMPClient:
    """A client for *address* (``unix:PATH``, ``tcp:HOST:PORT`` or a path).

    Use it as ``async with connect(...) as qmp:`` or ``qmp = await connect(...)``;
    *options* are :class:`QMPClient`'s.
    """
    return QMPClient(address, **options)
