"""JetStream's answers to the agent's publishes: matched by number, the acknowledged prefix.

Publish number N carries the reply subject ``<inbox>N``; its answer, a
PubAck or an error, comes back on that subject.  :class:`Acks` keeps the
spool position after each publish in flight and gives the positions
acknowledged as a prefix, so the spool's cursor only moves over events that
JetStream stored (or had already: a duplicate).

nats-py turns each answer into a ``Msg`` queued for the subscription's task
(about a third of the agent's time per event); :meth:`Acks.intercept`
takes the plain answers (no headers) straight from nats-py's parser
instead.  Answers with headers (statuses such as 503, no stream) still go
the subscription's way, to :meth:`Acks.on_reply`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from qmpevents.fleet.spool import Position

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg

#: nats-py's ``Client._process_msg`` parameters, as :meth:`Acks.intercept` calls it.
_PROCESS_MSG = ["self", "sid", "subject", "reply", "data", "headers"]


class Acks:
    """The publishes in flight, numbered from 0, and which of them JetStream acknowledged."""

    def __init__(self, window: int, inbox: str) -> None:
        #: Spool position after each publish in flight, oldest first (number ``head``).
        self.positions: deque[Position] = deque()
        self.head = 0
        self.sent = 0
        #: When the oldest in flight became the oldest (its ack timeout runs from then).
        self.since = 0.0
        self._early: set[int] = set()  # acknowledged, behind an unacknowledged one
        self.error: str | None = None
        self.closed = False
        #: Set when an ack or a publish happened; *room* when the window has room.
        self.progress = asyncio.Event()
        self.room = asyncio.Event()
        self._window = window
        self._inbox = inbox.encode()

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
            self._early.add(number)
        self.progress.set()

    def intercept(self, nc: NATS) -> Callable[[], None]:
        """Take plain answers from *nc*'s parser; returns how to stop (or a no-op)."""
        original = getattr(nc, "_process_msg", None)
        try:
            names = list(inspect.signature(type(nc)._process_msg).parameters)
        except (AttributeError, TypeError, ValueError):
            names = []
        if original is None or names != _PROCESS_MSG:
            return lambda: None  # another nats-py: the subscription gets everything
        inbox, size, answer, stats = self._inbox, len(self._inbox), self._answer, nc.stats

        async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes,
                              headers: bytes) -> None:
            if not headers and subject.startswith(inbox):
                stats["in_msgs"] += 1
                stats["in_bytes"] += len(data)
                answer(subject[size:], data, None)
                return
            await original(sid, subject, reply, data, headers)

        nc._process_msg = process_msg  # type: ignore[method-assign]

        def restore() -> None:
            if nc.__dict__.get("_process_msg") is process_msg:
                del nc.__dict__["_process_msg"]
        return restore

    def take(self) -> list[Position]:
        """The positions newly acknowledged as a prefix, removed from the window."""
        done: list[Position] = []
        early, positions = self._early, self.positions
        while self.head in early:
            early.discard(self.head)
            done.append(positions.popleft())
            self.head += 1
        if done:
            self.since = time.monotonic()
            self.room.set()
        return done


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
