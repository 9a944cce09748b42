"""The guest RTC and QEMU's event rate limiting for RTC_CHANGE.

QEMU (``monitor/monitor.c``, ``monitor_qapi_event_queue``) rate-limits some
events to one per second: the first goes out at once and opens a one-second
window; events during the window replace each other (the last one wins) and
the survivor is sent when the window closes, which opens another window.  The
delayed event keeps the timestamp of when it was *generated*, because QEMU
stamps an event when it builds it, not when it sends it.  The ``seed``
profile (the spec) has no such rule, so there every change is sent at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qmpevents.catalog import Timestamp
from qmpevents.sim.clock import Clock, Timer

Sink = Callable[[str, dict[str, Any] | None, Timestamp], None]

RTC_QOM_PATH = "/machine/unattached/device[9]"
"""Where QEMU 7.2's pc machine puts the mc146818rtc device (seen on the wire)."""


class Throttle:
    """One event name's rate limit: at most one per *period* seconds, last value wins."""

    def __init__(self, clock: Clock, sink: Sink, period: float = 1.0) -> None:
        self._clock = clock
        self._sink = sink
        self._period = period
        self._timer: Timer | None = None
        self._pending: tuple[str, dict[str, Any] | None, Timestamp] | None = None

    def submit(self, name: str, data: dict[str, Any] | None, stamp: Timestamp) -> None:
        if self._timer is None:
            self._sink(name, data, stamp)
            self._timer = self._clock.call_later(self._period, self._window_closed)
        else:
            self._pending = (name, data, stamp)

    def _window_closed(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            self._timer = None
            return
        self._sink(*pending)
        self._timer = self._clock.call_later(self._period, self._window_closed)

    def cancel(self) -> None:
        """Drop a pending event and the window (the machine is going away)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._pending = None


class Rtc:
    """The guest's RTC offset from host UTC, and its change events."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset

    def change(self, offset: int) -> dict[str, Any]:
        """The guest set its clock: the RTC_CHANGE data (richest form)."""
        self.offset = offset
        return {"offset": offset, "qom-path": RTC_QOM_PATH}
