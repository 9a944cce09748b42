"""Drains the spool into JetStream, in order: a record is done when JetStream acked it.

Publishing is pipelined: a *sender* publishes spooled records as they come,
up to a window of unacknowledged ones, and an *acker* advances the spool's
cursor over the acknowledged prefix.  Each publish is a core NATS publish
whose reply subject carries its number, so JetStream's acknowledgement is
matched to it without a future, a timer or a parsed PubAck per message.
After a failure (broker gone, ack timeout, stream missing) everything in
flight is abandoned and reading starts again at the first unacknowledged
record: records that did reach the stream are sent again with the same
``Nats-Msg-Id`` and JetStream's duplicate window drops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from qmpevents.fleet.acks import Acks
from qmpevents.fleet.broker import BrokerOptions, StreamSettings, connect, describe, ensure_stream
from qmpevents.fleet.frames import Framer
from qmpevents.fleet.spool import Position, Spool, SpoolRecord
from qmpevents.fleet.subjects import event_of, message_headers, subject

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.js import JetStreamContext

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 4096
DEFAULT_ACK_TIMEOUT = 5.0
#: The cursor is written at least every this many acknowledgements (and when idle).
COMMIT_EVERY = 512
RETRY_DELAY = 0.25
MAX_RETRY_DELAY = 2.0

Note = Callable[[str], None]


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
        js = nc.jetstream()
        delay = RETRY_DELAY
        try:
            while True:
                await self._connected.wait()
                if self._stream_ready or await self._prepare(js):
                    try:
                        await self._pump(nc)
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

    async def _pump(self, nc: NATS) -> None:
        """Send and acknowledge until something fails (raises _Failed)."""
        inbox = f"{nc.new_inbox()}."
        acks = Acks(self._window, inbox)
        sub = await nc.subscribe(f"{inbox}*", cb=acks.on_reply)
        restore = acks.route(nc, sub._id)
        sender = asyncio.create_task(self._send(nc, inbox, acks))
        try:
            await self._ack(acks, sender)
        finally:
            restore()
            while not sender.done():
                sender.cancel()
                # nats-py's flush swallows CancelledError and Python 3.11's wait_for can
                # drop one that coincides with its result: cancel until it is done.
                await asyncio.wait({sender}, timeout=1.0)
            if not sender.cancelled():
                sender.exception()  # retrieved: it is why we stopped, or nothing
            acks.closed = True  # abandoned: a late ack changes nothing
            with contextlib.suppress(Exception):  # the connection may be gone
                await sub.unsubscribe()

    async def _send(self, nc: NATS, inbox: str, acks: Acks) -> None:
        """Publish spooled records with a reply subject each, within the window.

        The reply subject ``<inbox>.<n>`` numbers the publish: the ack says
        which one it acknowledges without a future per message.  What fits
        in the window of a batch read from the spool goes out as one write.
        """
        wire = Wire(nc, self._stream.name)
        window = self._window
        while True:
            await self._connected.wait()
            try:
                batch = await self._spool.read(window)
                while batch:
                    room = window - len(acks.positions)
                    if room <= 0:
                        await wire.flush()  # what is queued must go out to be acked
                        await acks.room.wait()
                        acks.room.clear()
                        continue
                    chunk, batch = batch[:room], batch[room:]
                    number = acks.sent
                    await wire.publish_all([(record, f"{inbox}{n}") for n, (record, _)
                                            in enumerate(chunk, start=number)])
                    if not acks.positions:  # the acker waits for these from now on
                        acks.since = time.monotonic()
                        acks.progress.set()
                    acks.positions.extend(position for _, position in chunk)
                    acks.sent = number + len(chunk)
                await wire.flush()
            except _NatsError as exc:  # closed, client buffer full
                raise _Failed(f"publish: {describe(exc)}") from None

    async def _ack(self, acks: Acks, sender: asyncio.Task[None]) -> None:
        """Follow the acknowledged prefix; commit it; fail when the oldest is overdue."""
        acked = 0
        last: Position | None = None
        while True:
            if acks.error is not None:
                if last is not None:
                    self._commit(last, acked)
                raise _Failed(f"acknowledgement: {acks.error}")
            done = acks.take()
            if done:
                acked += len(done)
                last = done[-1]
                if acked >= COMMIT_EVERY or not acks.positions:  # or idle: record progress
                    self._commit(last, acked)
                    acked, last = 0, None
                continue
            if sender.done():
                sender.result()  # raises the sender's _Failed
                raise _Failed("sender ended")
            acks.progress.clear()
            timeout = None
            if acks.positions:  # the oldest in flight must be acknowledged in time
                timeout = acks.since + self._ack_timeout - time.monotonic()
                if timeout <= 0:
                    if last is not None:
                        self._commit(last, acked)
                    raise _Failed("acknowledgement: timed out")
            waiting = asyncio.ensure_future(acks.progress.wait())
            try:
                await asyncio.wait({waiting, sender}, return_when=asyncio.FIRST_COMPLETED,
                                   timeout=timeout)
            finally:
                waiting.cancel()

    def _commit(self, position: Position, count: int) -> None:
        self._spool.commit(position)
        self.published += count
        self.on_published(count)


class _NatsError(Exception):
    """nats-py's errors: they share no base class but Exception (see :class:`Wire`)."""


class Wire:
    """Publishing through one nats-py connection, a batch of records as one write.

    When connected, and with the nats-py internals this was measured with
    (its pending-buffer ``_send_command`` and flusher), a batch goes out as
    its :class:`~qmpevents.fleet.frames.Framer` frames joined into one
    command on that buffer: nats-py's ``publish()`` costs several times more
    per message in header encoding.
    Otherwise (reconnecting, an oversized message, another nats-py) it is
    ``publish()``, whose checks and errors then apply.
    """

    def __init__(self, nc: NATS, stream: str, *, frames: bool = True) -> None:
        self._nc = nc
        self._stream = stream
        self._framer = Framer(stream)
        self._frames = frames and all(
            hasattr(nc, name) for name in ("_send_command", "_flush_pending", "_flush_queue"))
        self._queued = False

    async def publish(self, record: SpoolRecord, reply: str) -> None:
        """Queue one record (raises _NatsError); :meth:`flush` sends what is queued."""
        await self.publish_all([(record, reply)])

    async def publish_all(self, items: list[tuple[SpoolRecord, str]]) -> None:
        """Queue records, each with its reply subject, as one write (raises _NatsError)."""
        nc = self._nc
        try:
            if not (self._frames and nc.is_connected):
                for record, reply in items:
                    await self._publish(record, reply)
                return
            out = bytearray()
            frame_into, max_payload = self._framer.frame_into, nc.max_payload
            count = payloads = 0
            for record, reply in items:
                msg_id = record.id
                payload = bytes(record.message)
                size = frame_into(out, record.host, record.vm, event_of(msg_id), reply,
                                  record.received, record.seq, msg_id, payload, max_payload)
                if size > max_payload:  # publish() says why it cannot go
                    await self._send_frames(out, count, payloads)
                    out, count, payloads = bytearray(), 0, 0
                    await self._publish(record, reply)
                    continue
                count += 1
                payloads += len(payload)
            await self._send_frames(out, count, payloads)
        except Exception as exc:
            raise _NatsError(describe(exc)) from exc

    async def _send_frames(self, frames: bytearray, count: int, payloads: int) -> None:
        if not frames:
            return
        nc = self._nc
        nc.stats["out_msgs"] += count
        nc.stats["out_bytes"] += payloads
        await nc._send_command(bytes(frames))
        self._queued = True

    async def _publish(self, record: SpoolRecord, reply: str) -> None:
        """nats-py's ``publish()``: its checks and errors apply."""
        host, vm = record.host, record.vm
        await self._nc.publish(
            subject(host, vm, event_of(record.id)), bytes(record.message), reply=reply,
            headers=message_headers(host, vm, record.received, record.seq, record.id,
                                    self._stream))

    async def flush(self) -> None:
        """Wake nats-py's flusher for the frames queued (publish() wakes it itself)."""
        if not self._queued:
            return
        self._queued = False
        nc = self._nc
        try:
            if nc._flush_queue is not None and nc._flush_queue.empty():
                await nc._flush_pending()
        except Exception as exc:
            raise _NatsError(describe(exc)) from exc

