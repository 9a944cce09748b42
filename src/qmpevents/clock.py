"""Time, injectable: wall-clock stamps, a monotonic clock and timers.

The simulator stamps events with the host's wall clock and runs its delays on
timers; the client times out commands, backs off between reconnects and
measures downtime.  Both go through a :class:`Clock`, so tests pass a
:class:`ManualClock` and :meth:`~ManualClock.advance` it instead of sleeping.

:func:`sleep` and :class:`deadline` are ``asyncio.sleep`` and
``asyncio.timeout`` on any clock (with the :class:`LoopClock` they are
exactly those).  No module here imports anything but asyncio.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, Self


class Timer(Protocol):
    """A scheduled callback that can be cancelled (``asyncio.TimerHandle`` is one)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Wall-clock time for timestamps, monotonic time and timers for delays."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...


class LoopClock:
    """The real clock: ``time.time()``, ``time.monotonic()`` and the running loop's timers."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback)


class _ManualTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told: :meth:`advance` runs the timers that fall due.

    ``time()`` and ``monotonic()`` move together.  Callbacks run inside
    :meth:`advance`, on the caller's thread: advance from the event loop's
    thread (a test's coroutine), then let the loop run (``await
    asyncio.sleep(0)``) so that the tasks the timers woke can proceed.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._counter = itertools.count()
        self._timers: list[tuple[float, int, _ManualTimer, Callable[[], None]]] = []

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = _ManualTimer()
        heapq.heappush(self._timers, (self._now + delay, next(self._counter), timer, callback))
        return timer

    @property
    def pending(self) -> int:
        """Timers scheduled and not yet run or cancelled (what a test waits to appear)."""
        return sum(not timer.cancelled for _, _, timer, _ in self._timers)

    async def advance_when_waiting(self, seconds: float, *, timers: int = 1) -> None:
        """Let the event loop run until *timers* timers are pending, then :meth:`advance`.

        What a test does to make a timeout fire: the code under test must
        first get to its ``await`` and arm the timer, maybe after socket I/O.
        Polls (every turn of the loop, then every millisecond) for at most 10
        real seconds, then raises RuntimeError: a hung test says so.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 10.0
        turns = 0
        while self.pending < timers:
            if loop.time() > give_up:
                raise RuntimeError(f"no {timers} timer(s) armed on the manual clock: "
                                   "nothing waits")
            turns += 1
            await asyncio.sleep(0 if turns < 100 else 0.001)
        self.advance(seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        """Move time forward, running due callbacks in order, each at its own time."""
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer, callback = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            if not timer.cancelled:
                callback()
        self._now = target


REAL_CLOCK: LoopClock = LoopClock()
"""The default clock of everything that takes one."""


async def sleep(clock: Clock, delay: float) -> None:
    """``asyncio.sleep(delay)`` on *clock*'s timers."""
    if isinstance(clock, LoopClock):
        await asyncio.sleep(delay)
        return
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    timer = clock.call_later(delay, wake)
    try:
        await future
    finally:
        timer.cancel()


class deadline:
    """``async with deadline(clock, seconds, what):`` -- ``asyncio.timeout`` on *clock*.

    Raises :class:`TimeoutError` saying *what* did not happen in time (a
    bare TimeoutError tells a user nothing): "*what* within N s".  None
    means no limit.
    """

    def __init__(self, clock: Clock, seconds: float | None, what: str = "no result") -> None:
        self._clock = clock
        self._seconds = seconds
        self._what = what
        self._timer: Timer | None = None
        self._task: asyncio.Task[object] | None = None
        self._expired = False

    async def __aenter__(self) -> Self:
        if self._seconds is not None:
            self._task = asyncio.current_task()
            self._timer = self._clock.call_later(max(self._seconds, 0.0), self._expire)
        return self

    def _expire(self) -> None:
        if self._task is not None and not self._task.done():
            self._expired = True
            self._task.cancel()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._expired and exc_type is asyncio.CancelledError:
            assert self._task is not None
            if self._task.uncancel() == 0:
                raise TimeoutError(f"{self._what} within {self._seconds:g} s") from exc
