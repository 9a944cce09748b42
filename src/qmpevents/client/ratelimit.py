"""One WARNING per kind of trouble per interval, with a count of the rest.

A hostile or broken server can send a bad message per line: 200,000 events
without a timestamp must not become 200,000 log records.  The first of a
kind is logged at once; the others within :data:`INTERVAL` seconds are only
counted, and the next record logged says how many were suppressed.
"""

from __future__ import annotations

import logging
from typing import Final

from qmpevents.clock import Clock

INTERVAL: Final = 1.0


class RateLimitedLog:
    """Warnings for one connection, at most one per *kind* per *interval* seconds."""

    def __init__(self, logger: logging.Logger, clock: Clock, interval: float = INTERVAL) -> None:
        self._logger = logger
        self._clock = clock
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        #: Every warning asked for, logged or not, by kind.
        self.counts: dict[str, int] = {}

    def warning(self, kind: str, message: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = self._clock.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message = f"{message} ({suppressed} more like it in the last {self._interval:g} s)"
        self._logger.warning("%s", message)
