"""Waiting for events without a queue: the first match, or a whole sequence.

Both are sinks that look at each batch as the reader delivers it and keep
only what they need, so they never block the reader and never buffer without
bound -- an ``expect`` block can run commands that produce thousands of
unrelated events without stalling their replies.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, Self, cast

from qmpevents.client.filters import E, EventFilter, EventSpec, QMPEvent, event_name
from qmpevents.client.subscriptions import ConnectionResumed
from qmpevents.clock import deadline
from qmpevents.errors import ConnectionLost, ExpectationFailed

if TYPE_CHECKING:
    from qmpevents.client.subscriptions import Hub

RECEIVED_KEPT: Final = 64
"""How many received event names an :class:`ExpectationFailed` lists (the latest)."""


class FirstMatch(Generic[E]):
    """Resolves a future with the first event that passes a filter."""

    def __init__(self, event_filter: EventFilter) -> None:
        self.filter = event_filter
        self.result: asyncio.Future[E] = asyncio.get_running_loop().create_future()

    def deliver(self, events: list[QMPEvent]) -> None:
        if self.result.done():
            return
        for event in events:
            if self.filter(event):
                self.result.set_result(cast("E", event))  # the filter passes only E
                return

    def resumed(self, marker: ConnectionResumed) -> None:
        """A wait spans reconnects: the event may still come."""

    def end(self, error: BaseException) -> None:
        if not self.result.done():
            self.result.set_exception(error)


class Expectation:
    """``async with qmp.expect("A", "B", timeout=5):`` -- the body must cause A then B.

    Listening starts on entry, so events caused by the body cannot be missed.
    On a normal exit it waits up to *timeout* seconds for the names to arrive
    in that order (other events may come in between; names may be globs or
    event classes; *match* must hold for each of them, see
    :class:`~qmpevents.client.EventFilter`), then :attr:`events` holds the
    matched events.  Otherwise it raises
    :class:`~qmpevents.errors.ExpectationFailed` listing what did arrive (the
    latest :data:`RECEIVED_KEPT` names), also when the connection ends first.
    If the body raises, its exception propagates and nothing is awaited.
    """

    def __init__(self, hub: Hub, names: Sequence[EventSpec], timeout: float | None,
                 match: Mapping[str, Any] | None = None) -> None:
        if not names:
            raise ValueError("expect() needs at least one event name")
        self._hub = hub
        self._steps = [EventFilter((name,), match) for name in names]
        self._match = match
        self.expected = [step.names[0] for step in self._steps]
        self.timeout = timeout
        #: The matched events, one per expected name, once complete.
        self.events: list[QMPEvent] = []
        self._received: deque[str] = deque(maxlen=RECEIVED_KEPT)
        self._received_total = 0
        self._done: asyncio.Future[None] | None = None

    @property
    def complete(self) -> bool:
        return len(self.events) == len(self._steps)

    def deliver(self, events: list[QMPEvent]) -> None:
        if self.complete:
            return
        self._received_total += len(events)
        for event in events:
            name = event_name(event)
            self._received.append(name)
            step = len(self.events)
            if self._steps[step](event):
                self.events.append(event)
                if self.complete:
                    self._finish(None)
                    return

    def resumed(self, marker: ConnectionResumed) -> None:
        self._received.append(marker.name)
        self._received_total += 1

    def end(self, error: BaseException) -> None:
        self._finish(error)

    def _finish(self, error: BaseException | None) -> None:
        done = self._done
        if done is None or done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def _failure(self) -> ExpectationFailed:
        received = list(self._received)
        hidden = self._received_total - len(received)
        if hidden > 0:
            received.insert(0, f"... {hidden} earlier")
        return ExpectationFailed(self.expected, received, self._match)

    async def __aenter__(self) -> Self:
        self._done = asyncio.get_running_loop().create_future()
        self._hub._subscribe(self)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        done = self._done
        assert done is not None
        try:
            if exc_type is not None or self.complete:
                return
            try:
                async with deadline(self._hub.clock, self.timeout):
                    await done
            except TimeoutError:
                raise self._failure() from None
            except ConnectionLost as lost:
                raise self._failure() from lost
        finally:
            self._hub._unsubscribe(self)
            if done.done() and not done.cancelled():
                done.exception()  # retrieved: an abandoned failure is not logged as lost
