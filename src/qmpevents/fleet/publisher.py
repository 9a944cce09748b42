"""Drains the spool into JetStream, in order: a record is done when JetStream acked it.

Publishing is pipelined: a *sender* publishes spooled records as they come,
up to a window of unacknowledged ones, and an *acker* takes the
acknowledgements in order and advances the spool's cursor over the
acknowledged prefix.  After a failure (broker gone, ack timeout, stream
missing) everything in flight is abandoned and reading starts again at the
first unacknowledged record: records that did reach the stream are sent
again with the same ``Nats-Msg-Id`` and JetStream's duplicate window drops
them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from qmpevents.fleet.broker import BrokerOptions, StreamSettings, connect, describe, ensure_stream
from qmpevents.fleet.spool import Position, Spool, SpoolRecord
from qmpevents.fleet.subjects import Headers, subject

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.api import PubAck

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 1024
DEFAULT_ACK_TIMEOUT = 5.0
#: The cursor is written at least every this many acknowledgements (and when idle).
COMMIT_EVERY = 512
RETRY_DELAY = 0.25
MAX_RETRY_DELAY = 2.0

Note = Callable[[str], None]
InFlight = tuple["asyncio.Future[PubAck]", Position]


class _Failed(Exception):
    """Something in flight was not acknowledged: start again from the cursor."""


class Publisher:
    """One agent's link to JetStream; :attr:`published` counts acknowledged events."""

    def __init__(self, spool: Spool, options: BrokerOptions, stream: StreamSettings, *,
                 note: Note, window: int = DEFAULT_WINDOW,
                 ack_timeout: float = DEFAULT_ACK_TIMEOUT) -> None:
        self._spool = spool
        self._options = options
        self._stream = stream
        self._note = note
        self._window = window
        self._ack_timeout = ack_timeout
        self._connected = asyncio.Event()
        self._stream_ready = False
        self._failing = False
        self._closing = False
        self.published = 0
        #: Called after acknowledgements with their number.
        self.on_published: Callable[[int], None] = lambda count: None
        #: Called when the broker connection comes up (True) or goes down (False).
        self.on_link: Callable[[bool], None] = lambda up: None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _lost(self) -> None:
        if self._closing:
            return
        self._connected.clear()
        self.on_link(False)
        self._note(f"broker lost; spooling to {self._spool.directory}")

    def _back(self) -> None:
        self._connected.set()
        self.on_link(True)
        self._note(f"broker back; draining {self._spool.pending_bytes} spooled bytes")

    async def run(self) -> None:
        """Publish forever (cancel to stop); spooled records wait while the broker is away."""
        nc = await connect(
            self._options, deadline=None, on_disconnect=self._lost, on_reconnect=self._back,
            on_error=lambda why: self._note(f"broker: {why}; spooling to "
                                            f"{self._spool.directory} and retrying"))
        self._connected.set()
        self.on_link(True)
        self._note(f"connected to {nc.connected_url.netloc if nc.connected_url else 'broker'}")
        js = nc.jetstream(publish_async_max_pending=self._window)
        delay = RETRY_DELAY
        try:
            while True:
                await self._connected.wait()
                if self._stream_ready or await self._prepare(js):
                    try:
                        await self._pump(js)
                    except _Failed as exc:
                        log.debug("publishing interrupted: %s", exc)
                    self._spool.rewind()
                    self._stream_ready = False  # the stream may be gone: check it again
                await asyncio.sleep(delay)  # retry backoff
                delay = min(delay * 2, MAX_RETRY_DELAY)
        finally:
            self._closing = True
            await nc.close()

    async def _prepare(self, js: JetStreamContext) -> bool:
        try:
            if await ensure_stream(js, self._stream):
                self._note(f"created stream {self._stream.name}")
        except Exception as exc:  # nats-py's timeouts and API errors share no base class
            if not self._failing:
                self._note(f"stream {self._stream.name} not ready ({describe(exc)}); retrying")
                self._failing = True
            return False
        self._failing = False
        self._stream_ready = True
        return True

    async def _pump(self, js: JetStreamContext) -> None:
        """Send and acknowledge until something fails (raises _Failed)."""
        in_flight: deque[InFlight] = deque()  # bounded by nats-py's window semaphore
        sent = asyncio.Event()
        sender = asyncio.create_task(self._send(js, in_flight, sent))
        try:
            await self._ack(in_flight, sent, sender)
        finally:
            while not sender.done():
                sender.cancel()
                # nats-py's flush swallows CancelledError and Python 3.11's wait_for can
                # drop one that coincides with its result: cancel until it is done.
                await asyncio.wait({sender}, timeout=1.0)
            if not sender.cancelled():
                sender.exception()  # retrieved: it is why we stopped, or nothing
            for future, _ in in_flight:  # abandoned: a late ack changes nothing
                future.cancel()

    async def _send(self, js: JetStreamContext, in_flight: deque[InFlight],
                    sent: asyncio.Event) -> None:
        while True:
            await self._connected.wait()
            for record, position in await self._spool.read(self._window):
                headers = Headers(record.host, record.vm, record.received, record.seq,
                                  record.id)
                try:
                    future = await js.publish_async(
                        subject(record.host, record.vm, _event_name(record)),
                        bytes(record.message), stream=self._stream.name,
                        headers=headers.to_nats())  # the window bounds what is in flight
                except Exception as exc:  # closed, client buffer full
                    raise _Failed(f"publish: {describe(exc)}") from None
                in_flight.append((future, position))
                sent.set()

    async def _ack(self, in_flight: deque[InFlight], sent: asyncio.Event,
                   sender: asyncio.Task[None]) -> None:
        """Take acknowledgements in publishing order; commit the acknowledged prefix."""
        acked = 0
        last: Position | None = None
        while True:
            if not in_flight:
                if last is not None:  # idle: record progress now
                    self._commit(last, acked)
                    acked, last = 0, None
                sent.clear()
                waiting = asyncio.ensure_future(sent.wait())
                try:
                    await asyncio.wait({waiting, sender}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiting.cancel()
                if sender.done():
                    sender.result()  # raises the sender's _Failed
                    raise _Failed("sender ended")
                continue
            future, position = in_flight[0]
            try:
                if not future.done():
                    async with asyncio.timeout(self._ack_timeout):  # not wait_for: see above
                        await asyncio.shield(future)
                future.result()  # an API error (no stream, wrong stream) raises here
            except Exception as exc:
                if last is not None:
                    self._commit(last, acked)
                raise _Failed(f"acknowledgement: {describe(exc)}") from None
            in_flight.popleft()
            acked += 1
            last = position
            if acked >= COMMIT_EVERY:
                self._commit(last, acked)
                acked, last = 0, None

    def _commit(self, position: Position, count: int) -> None:
        self._spool.commit(position)
        self.published += count
        self.on_published(count)


def _event_name(record: SpoolRecord) -> str:
    return record.id.split("/")[-2]
