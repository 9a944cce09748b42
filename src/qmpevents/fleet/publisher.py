"""Drains the spool into JetStream, in order: a record is done when JetStream acked it.

Publishing is pipelined (a batch of asynchronous publishes, then their
acknowledgements); the spool's cursor advances over the acknowledged
*prefix* of each batch only.  After a failure (broker gone, ack timeout,
stream missing) reading starts again at the first unacknowledged record:
records of that batch that did reach the stream are sent again with the
same ``Nats-Msg-Id`` and JetStream's duplicate window drops them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from qmpevents.fleet.broker import BrokerOptions, StreamSettings, connect, describe, ensure_stream
from qmpevents.fleet.spool import Position, Spool, SpoolRecord
from qmpevents.fleet.subjects import Headers, subject

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.js import JetStreamContext
    from nats.js.api import PubAck

log = logging.getLogger(__name__)

DEFAULT_BATCH = 512
DEFAULT_ACK_TIMEOUT = 5.0
RETRY_DELAY = 0.25
MAX_RETRY_DELAY = 2.0

Note = Callable[[str], None]


class Publisher:
    """One agent's link to JetStream; :attr:`published` counts acknowledged events."""

    def __init__(self, spool: Spool, options: BrokerOptions, stream: StreamSettings, *,
                 note: Note, batch: int = DEFAULT_BATCH,
                 ack_timeout: float = DEFAULT_ACK_TIMEOUT) -> None:
        self._spool = spool
        self._options = options
        self._stream = stream
        self._note = note
        self._batch = batch
        self._ack_timeout = ack_timeout
        self._connected = asyncio.Event()
        self._stream_ready = False
        self._failing = False
        self.published = 0
        #: Called after each acknowledged batch with its size.
        self.on_published: Callable[[int], None] = lambda count: None
        #: Called when the broker connection comes up (True) or goes down (False).
        self.on_link: Callable[[bool], None] = lambda up: None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _lost(self) -> None:
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
        js = nc.jetstream(publish_async_max_pending=self._batch)
        delay = RETRY_DELAY
        try:
            while True:
                await self._connected.wait()
                if not self._stream_ready and not await self._prepare(js):
                    await asyncio.sleep(delay)  # retry backoff
                    delay = min(delay * 2, MAX_RETRY_DELAY)
                    continue
                batch = await self._spool.read(self._batch)
                acked = await self._publish(nc, js, batch)
                if acked:
                    self._spool.commit(batch[acked - 1][1])
                    self.published += acked
                    self.on_published(acked)
                if acked == len(batch):
                    self._failing = False
                    delay = RETRY_DELAY
                    continue
                self._spool.rewind()
                self._stream_ready = False  # the stream may be gone: check it again
                await asyncio.sleep(delay)  # retry backoff
                delay = min(delay * 2, MAX_RETRY_DELAY)
        finally:
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
        self._stream_ready = True
        return True

    async def _publish(self, nc: NATS, js: JetStreamContext,
                       batch: list[tuple[SpoolRecord, Position]]) -> int:
        """Publish *batch*; the number of records acknowledged in order from its start."""
        futures: list[asyncio.Future[PubAck]] = []
        for record, _ in batch:
            headers = Headers(record.host, record.vm, record.received, record.seq, record.id)
            try:
                sent = await js.publish_async(
                    subject(record.host, record.vm, _event_name(record)),
                    bytes(record.message), stream=self._stream.name,
                    headers=headers.to_nats(), wait_stall=self._ack_timeout)
            except Exception as exc:  # closed, stalled, buffer full
                log.debug("publish failed: %s", describe(exc))
                break
            futures.append(sent)
        if futures:
            try:
                await nc.flush(timeout=max(1, int(self._ack_timeout)))
                async with asyncio.timeout(self._ack_timeout):
                    await asyncio.wait(futures)
            except Exception as exc:  # flush timeout, ack timeout
                log.debug("acknowledgements incomplete: %s", describe(exc))
        acked = 0
        for future in futures:
            if not future.done() or future.cancelled() or future.exception() is not None:
                break
            acked += 1
        for future in futures:
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # retrieved: no "never retrieved" warnings
        return acked


def _event_name(record: SpoolRecord) -> str:
    return record.id.split("/")[-2]
