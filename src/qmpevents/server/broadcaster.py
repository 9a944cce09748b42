"""Fan-out of events: encoded once, the same bytes to every negotiated monitor.

QEMU builds an event's JSON text once and hands the same string to each QMP
monitor that has completed negotiation (``monitor_qapi_event_emit``).  This
does the same: one :func:`~qmpevents.codec.encode_message` per event whatever
the number of monitors, and one ordered set of recipients, so every monitor
sees identical bytes in the same order.  A monitor joins when it negotiates
and leaves when it goes away; nothing is kept for monitors that are not in
the set (events are never queued for later).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from qmpevents.codec import encode_message


class Recipient(Protocol):
    """What the broadcaster needs of a monitor: take one line of output."""

    def send(self, data: bytes) -> None: ...


class Broadcaster:
    """The negotiated monitors, and the counters the benchmark checks."""

    def __init__(self) -> None:
        # A dict rather than a set: insertion-ordered, O(1) removal, fast iteration.
        self._recipients: dict[Recipient, None] = {}
        self._on_join: list[Callable[[], None]] = []
        self._on_leave: list[Callable[[], None]] = []
        self.events_encoded = 0
        self.deliveries = 0

    def on_join(self, callback: Callable[[], None]) -> None:
        """Call *callback* whenever a monitor negotiates (a replay waits for its audience)."""
        self._on_join.append(callback)

    def on_leave(self, callback: Callable[[], None]) -> None:
        """Call *callback* whenever a negotiated monitor leaves (a replay sees its audience go)."""
        self._on_leave.append(callback)

    def __len__(self) -> int:
        return len(self._recipients)

    def add(self, recipient: Recipient) -> None:
        self._recipients[recipient] = None
        for callback in self._on_join:
            callback()

    def discard(self, recipient: Recipient) -> None:
        if recipient in self._recipients:
            del self._recipients[recipient]
            for callback in self._on_leave:
                callback()

    def publish(self, message: Mapping[str, Any]) -> bytes:
        """Encode *message* once and queue it on every negotiated monitor; returns the line.

        Recipients must not leave the set synchronously from ``send`` (a monitor
        that overflows aborts its transport, and leaves on ``connection_lost``).
        """
        line = encode_message(message)
        self.events_encoded += 1
        self.publish_line(line)
        return line

    def publish_line(self, line: bytes) -> None:
        """Send an already encoded event line (a replay sends recorded bytes as they were)."""
        self.deliveries += len(self._recipients)
        for recipient in self._recipients:
            recipient.send(line)
