"""JetStream's answers to the agent's publishes: matched by number, the acknowledged prefix.

Publish number N carries the reply subject ``<inbox>N``; its answer, a
PubAck or an error, comes back on that subject.  :class:`Acks` keeps the
spool position after each publish in flight and gives the positions
acknowledged as a prefix, so the spool's cursor only moves over events that
JetStream stored (or had already: a duplicate).

nats-py turns each answer into a ``Msg`` queued for the subscription's task
(about a third of the agent's time per event); :meth:`Acks.route` takes
them straight from the wire instead (:mod:`qmpevents.fleet.inbound`), as
:meth:`Acks.on_raw`; :meth:`Acks.on_reply` is the subscription's way, where
that cannot be done.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from qmpevents.fleet.inbound import route, unroute
from qmpevents.fleet.spool import Position

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg



class Acks:
    """The publishes in flight, numbered from 0, and which of them JetStream acknowledged."""

    def __init__(self, window: int, inbox: str) -> None:
        #: Spool position after each publish in flight, oldest first (number ``head``).
        self.positions: deque[Position] = deque()
        self.head = 0
        self.sent = 0
        #: When the oldest in flight became the oldest (its ack timeout runs from then).
        self.since = 0.0
        self._acked = 0  # every publish before this number is acknowledged
        self._early: set[int] = set()  # acknowledged, behind an unacknowledged one
        self.error: str | None = None
        self.closed = False
        #: Set when an ack or a publish happened; *room* when the window has room.
        self.progress = asyncio.Event()
        self.room = asyncio.Event()
        self._window = window
        self._inbox_size = len(inbox.encode())

    async def on_reply(self, msg: Msg) -> None:
        """An answer through the subscription (nats-py's ``Msg``)."""
        self._answer(msg.subject.rpartition(".")[2], msg.data,
                     (msg.headers or {}).get("Status"))

    def _answer(self, token: str | bytes, data: bytes, status: str | None) -> None:
        """JetStream's answer to publish number *token* (the reply subject's last token)."""
        if self.closed or self.error is not None:
            return
        try:
            number = int(token)
        except ValueError:
            return
        if not self.head <= number < self.sent:
            return  # not one of ours in flight (a late duplicate)
        if not data or b'"error"' in data:  # a status (503: no stream), maybe an API error
            self.error = reply_error(data, status)
        if self.error is None:
            acked = self._acked
            if number == acked:  # in order, as JetStream answers
                acked += 1
                early = self._early
                while early and acked in early:
                    early.discard(acked)
                    acked += 1
                self._acked = acked
            elif number > acked:
                self._early.add(number)
        self.progress.set()

    def on_raw(self, subject: bytes, reply: bytes, headers: bytes, data: bytes) -> None:
        """An answer as the wire carried it (see :mod:`qmpevents.fleet.inbound`)."""
        self._answer(subject[self._inbox_size:], data, status_of(headers) if headers else None)

    def route(self, nc: NATS, sid: int) -> Callable[[], None]:
        """Take the answers of subscription *sid* from *nc*'s parser; returns how to stop
        (a no-op when this nats-py cannot: the subscription then gets them)."""
        if not route(nc, sid, self.on_raw):
            return lambda: None
        return lambda: unroute(nc, sid)

    def take(self) -> list[Position]:
        """The positions newly acknowledged as a prefix, removed from the window."""
        count = self._acked - self.head
        if count <= 0:
            return []
        popleft = self.positions.popleft
        done = [popleft() for _ in range(count)]
        self.head = self._acked
        self.since = time.monotonic()
        self.room.set()
        return done


def status_of(headers: bytes) -> str | None:
    """The status of a header block (``NATS/1.0 503`` -> ``"503"``), or None."""
    if not headers.startswith(b"NATS/1.0 "):
        return None
    status = headers[9:].split(b"\r\n", 1)[0].split(b" ", 1)[0].strip()
    return status.decode("ascii", "replace") if status.isdigit() else None


def reply_error(data: bytes, status: str | None) -> str | None:
    """Why JetStream refused a publish, or None: a PubAck that only looked like an error."""
    if status == "503":
        return "no stream answers this subject (no responders)"
    if not data:
        return f"status {status or 'unknown'}"
    try:
        reply = json.loads(data)
    except ValueError:
        return "unreadable acknowledgement"
    if not isinstance(reply, dict):
        return "unreadable acknowledgement"
    if "error" not in reply:
        return None  # e.g. a stream named "error"
    error = reply["error"]
    description = error.get("description") if isinstance(error, dict) else None
    return str(description or error)
