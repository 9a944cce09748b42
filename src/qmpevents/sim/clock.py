"""Time for the simulator: wall-clock stamps and timers, injectable.

Event timestamps need the host's wall clock; throttling and the simulated
guest's delays need timers.  Both go through a :class:`Clock` so tests can use
a :class:`ManualClock` and advance time instead of sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    """A scheduled callback that can be cancelled (``asyncio.TimerHandle`` is one)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Wall-clock time for timestamps and monotonic timers for delays."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...


class LoopClock:
    """The real clock: ``time.time()`` and the running event loop's timers."""

    def time(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback)


class _ManualTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told: :meth:`advance` runs the timers that fall due."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._counter = itertools.count()
        self._timers: list[tuple[float, int, _ManualTimer, Callable[[], None]]] = []

    def time(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = _ManualTimer()
        heapq.heappush(self._timers, (self._now + delay, next(self._counter), timer, callback))
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward, running due callbacks in order, each at its own time."""
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer, callback = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            if not timer.cancelled:
                callback()
        self._now = target
