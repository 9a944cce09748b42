"""Bounded per-subscriber event queues with an explicit overflow policy.

The connection's reader hands every subscriber each batch of events it
decodes (one batch per socket read).  A subscriber never makes the reader
buffer without bound:

* ``overflow="block"`` (the default): the queue holds *maxsize* events; what
  does not fit is parked on the subscription and the reader stops reading the
  socket until the consumer catches up: nothing is lost, the server is slowed
  down by TCP/unix flow control.  A consumer that stops reading never blocks
  command replies or the other subscribers for long:

  - while a command waits for its reply the reader keeps reading (replies are
    always read), and a subscription whose parked events reach another
    *maxsize* is cut off;
  - a paused reader resumes after the client's *stall_timeout* (default
    10 s) by cutting off the subscriptions still full.

  A subscription cut off keeps the events it had queued; once they are read,
  ``get()`` and iteration raise :class:`~qmpevents.errors.SubscriberStalled`
  (logged once as a WARNING).  Every other subscriber and the connection
  carry on.
* ``overflow="drop-oldest"``: the queue keeps the newest *maxsize* events and
  counts what it discarded in :attr:`Subscription.dropped`.  The reader never
  waits.

When the connection ends the queued events can still be read; then iteration
ends normally and :meth:`Subscription.get` raises
:class:`~qmpevents.errors.ConnectionLost`.  A fatal error (such as
:class:`~qmpevents.errors.MessageTooLarge`) is raised by both instead.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Final, Generic, Literal, Protocol, Self, cast

from qmpevents.catalog import Timestamp, UnknownEvent
from qmpevents.client.filters import RECONNECTED as RECONNECTED
from qmpevents.client.filters import E, EventFilter, QMPEvent
from qmpevents.clock import Clock, deadline
from qmpevents.errors import ConnectionLost, LocalProtocolError, SubscriberStalled

Overflow = Literal["block", "drop-oldest"]
OVERFLOW_POLICIES: Final[tuple[Overflow, ...]] = ("block", "drop-oldest")
DEFAULT_MAXSIZE: Final = 4096

class ConnectionResumed(UnknownEvent, kw_only=True, frozen=True):
    """Marker delivered to every subscription after a reconnect: events may be missing.

    Its name is :data:`RECONNECTED`; it is not a QMP event and has no ``raw``.
    ``data`` holds ``status`` (the fresh ``query-status`` result, or None if
    that failed), ``reconnects`` (how many reconnects so far) and ``downtime``
    (seconds without a connection).  Subscribers by name get it whatever their
    filters; a typed subscription (``listen(BlockIoError)``) gets it only when
    it lists this class, and counts reconnects in ``.reconnects`` either way.
    """

    @classmethod
    def make(cls, now: float, status: Any, reconnects: int, downtime: float) -> ConnectionResumed:
        return cls(event=RECONNECTED, stamp=Timestamp.from_float(now),
                   data={"status": status, "reconnects": reconnects, "downtime": downtime})


class Hub(Protocol):
    """What a subscriber needs from the connection that feeds it."""

    clock: Clock

    def _subscribe(self, sink: Sink) -> None: ...
    def _unsubscribe(self, sink: Sink) -> None: ...
    def _block(self, sink: Sink) -> None: ...
    def _unblock(self, sink: Sink) -> None: ...
    def _stalled(self, sink: Subscription[Any]) -> None: ...


class Sink(Protocol):
    """Anything the reader delivers events to (subscriptions, expectations, waits)."""

    def deliver(self, events: list[QMPEvent]) -> None:
        """Take one batch, in arrival order; call ``hub._block`` to pause the reader."""

    def resumed(self, marker: ConnectionResumed) -> None:
        """The connection was re-established; events may have been missed."""

    def end(self, error: BaseException) -> None:
        """No more events: *error* says why (ConnectionLost or a fatal error)."""


class _ClosedLocally(Exception):
    """Marks a subscription closed by its owner (never raised as is)."""


class Subscription(Generic[E]):
    """A bounded queue of the events that pass a filter; read it with ``get`` or ``async for``.

    Made by ``QMPClient.listen()`` / ``QMPClient.events()``; it receives events
    from the moment it is created, so subscribe first and act second.  Use it
    as an async context manager (or call :meth:`close`) to unsubscribe; one
    that is simply dropped is unsubscribed when it is garbage-collected.
    ``listen(BlockIoError)`` is a ``Subscription[BlockIoError]``: what it
    yields is typed for the type checker too.
    """

    def __init__(self, hub: Hub, event_filter: EventFilter, *, maxsize: int = DEFAULT_MAXSIZE,
                 overflow: Overflow = "block") -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, not {overflow!r}")
        self._hub = hub
        self.filter = event_filter
        self.maxsize = maxsize
        self.overflow: Overflow = overflow
        self._drop = overflow == "drop-oldest"
        self._queue: deque[E] = deque(maxlen=maxsize if self._drop else None)
        self._excess: list[E] = []  # block policy: what did not fit, at most maxsize
        self._low_water = maxsize // 2
        self._waiters: list[asyncio.Future[None]] = []
        self._end: BaseException | None = None  # why no more events will come
        self._iter_raises = False
        #: Events discarded by the ``drop-oldest`` policy (or when cut off) so far.
        self.dropped = 0
        #: Reconnects seen (each also queues a marker unless the subscription is typed).
        self.reconnects = 0

    # -- reader side ----------------------------------------------------------

    def deliver(self, events: list[QMPEvent]) -> None:
        if self._end is not None:
            return
        selected = cast("list[E]", self.filter.select(events))  # the filter passes only E
        if not selected:
            return
        queue = self._queue
        if self._drop:
            over = len(queue) + len(selected) - self.maxsize
            if over > 0:
                self.dropped += over
            queue.extend(selected)
        elif self._excess:
            self._excess.extend(selected)
            if len(self._excess) > self.maxsize:
                self._hub._stalled(self)  # the reader had to go on: cut off
                return
            self._hub._block(self)
        else:
            room = self.maxsize - len(queue)
            if len(selected) <= room:
                queue.extend(selected)
            else:
                queue.extend(selected[:room])
                self._excess.extend(selected[room:])  # in place: _iterate holds it
                self._hub._block(self)
        if self._waiters:
            self._wake()

    def resumed(self, marker: ConnectionResumed) -> None:
        if self._end is not None:
            return
        self.reconnects += 1
        if not self.filter.wants_marker:
            return
        item = cast("E", marker)  # named subscriptions yield QMPEvent, which includes it
        if self._drop:
            if len(self._queue) == self.maxsize:
                self.dropped += 1
            self._queue.append(item)
        elif self._excess or len(self._queue) >= self.maxsize:
            # One marker beyond the bound rather than blocking the reconnect.
            self._excess.append(item)
            self._hub._block(self)
        else:
            self._queue.append(item)
        self._wake()

    def end(self, error: BaseException) -> None:
        if self._end is None:
            self._end = error
            self._iter_raises = not isinstance(error, ConnectionLost | _ClosedLocally)
        self._wake()

    def cut_off(self, error: SubscriberStalled) -> None:
        """Stop feeding a subscriber that stayed full: keep its queue, drop the parked rest."""
        self.dropped += len(self._excess)
        self._excess.clear()
        self.end(error)
        self._detach()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- consumer side --------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once no more events will be added (disconnect or :meth:`close`)."""
        return self._end is not None

    def qsize(self) -> int:
        """Events ready to be read now (including any the reader parked)."""
        return len(self._queue) + len(self._excess)

    def get_nowait(self) -> E:
        """The next queued event; IndexError if none is queued right now."""
        event = self._queue.popleft()
        if self._excess:
            self._refill()
        return event

    async def get(self, timeout: float | None = None) -> E:
        """The next event.

        Raises :class:`TimeoutError` if none arrives within *timeout* seconds,
        :class:`~qmpevents.errors.ConnectionLost` once the connection has
        ended and the queue is empty, or the fatal error that ended it.
        """
        if self._queue:
            return self.get_nowait()
        event = await self._next(timeout)
        if event is None:
            raise self._end_error()
        return event

    def __aiter__(self) -> AsyncIterator[E]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[E]:
        """What ``async for`` runs: an async generator costs less per event than
        an ``__anext__`` coroutine.  Ends (or raises) as :meth:`__anext__` does."""
        queue, excess = self._queue, self._excess  # both only ever changed in place
        while True:
            while queue:
                event = queue.popleft()
                if excess:
                    self._refill()
                yield event
            waited = await self._wait()  # what __anext__ does, two coroutines fewer
            if waited is None:
                self._finish_iteration()
                return
            yield waited

    def batches(self) -> AsyncIterator[list[E]]:
        """``async for events in sub.batches():`` -- what is queued at each step,
        as one list of at least one event, in order; the end as ``async for``'s.

        For consumers of fast streams: in CPython 3.11 the async-iterator
        protocol alone costs about 1,000 CPU instructions per ``async for``
        step, a tenth of what a typed event costs from socket to consumer; a
        batch pays it once per read (``benchmarks/bench_client.py`` measures
        both).  Interleaving with ``get()`` or ``async for`` on the same
        subscription is allowed: each event goes to exactly one of them.
        """
        return self._batches()

    async def _batches(self) -> AsyncIterator[list[E]]:
        queue, excess = self._queue, self._excess  # both only ever changed in place
        while True:
            if not queue and not await self._ready():
                self._finish_iteration()
                return
            batch = list(queue)
            queue.clear()
            if excess:
                self._refill()  # the queue is empty: the parked ones move in
            yield batch

    async def __anext__(self) -> E:
        """Iteration ends normally at disconnect; a fatal error is raised."""
        queue = self._queue
        if queue:
            event = queue.popleft()
            if self._excess:
                self._refill()
            return event
        waited = await self._next(None)
        if waited is None:
            self._finish_iteration()
            raise StopAsyncIteration
        return waited

    def _finish_iteration(self) -> None:
        """No more events: unsubscribe, and raise the fatal error if one ended it."""
        self._detach()
        if self._iter_raises:
            raise self._end_error()

    async def _next(self, timeout: float | None) -> E | None:
        """Wait for an event; None when the subscription has ended."""
        if timeout is None:  # the iterator's case, once per read: no deadline to set up
            return await self._wait()
        async with deadline(self._hub.clock, timeout, f"no event for {self!r}"):
            return await self._wait()

    async def _wait(self) -> E | None:
        return self.get_nowait() if await self._ready() else None

    async def _ready(self) -> bool:
        """Wait until an event is queued (True) or the subscription has ended (False)."""
        loop = asyncio.get_running_loop()
        while not self._queue:
            if self._end is not None:
                return False
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return True

    def _end_error(self) -> BaseException:
        """A fresh exception per raise, so concurrent readers do not share a traceback."""
        end = self._end
        if isinstance(end, _ClosedLocally):
            return LocalProtocolError("the subscription is closed")
        if isinstance(end, ConnectionLost | SubscriberStalled):
            error = type(end)(*end.args)
            error.__cause__ = end.__cause__
            return error
        assert isinstance(end, BaseException)
        return end

    def _refill(self) -> None:
        """Move parked events into the queue once it is half empty; unpause the reader."""
        queue = self._queue
        if len(queue) > self._low_water:
            return
        room = self.maxsize - len(queue)
        excess = self._excess
        queue.extend(excess[:room])
        del excess[:room]
        if not excess:
            self._hub._unblock(self)

    def close(self) -> None:
        """Unsubscribe and discard what is queued; reading afterwards raises or ends."""
        if self._end is None:
            self._end = _ClosedLocally()
        self._detach()
        self._queue.clear()
        self._excess.clear()
        self._wake()

    def _detach(self) -> None:
        self._hub._unsubscribe(self)
        self._hub._unblock(self)

    async def aclose(self) -> None:
        """Same as :meth:`close`, for ``contextlib.aclosing`` and async generator habits."""
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        names = ",".join(self.filter.names) or "*"
        return (f"<Subscription {names} {len(self._queue)}/{self.maxsize} {self.overflow}"
                f" dropped={self.dropped}{' closed' if self.closed else ''}>")
