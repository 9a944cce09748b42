"""Reading the stream in order, cheaply: an ephemeral pull consumer read from the wire.

nats-py's ordered push consumer costs most of a reader's time per message
(a ``Msg`` object, a parsed header dict, a queue and a task per
subscription, flow control).  :class:`OrderedReader` asks an ephemeral pull
consumer (nothing to acknowledge, memory storage, one replica) for batches
of messages, takes them straight from the wire
(:mod:`qmpevents.fleet.inbound`) and hands them out in stream order, as
raw ``(subject, headers, payload, stream sequence)``.

Like nats.go's ordered consumer it checks the consumer sequence of every
message: a gap (messages lost in a reconnect), a consumer the server
dropped, or no answer at all in time (a node lost) makes it create a new
consumer starting after the last message it received, so nothing is
skipped and nothing comes twice.  Memory is bounded: at most two batches
requested or held.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Literal

from qmpevents.errors import QMPEventsError
from qmpevents.fleet.deps import require
from qmpevents.fleet.inbound import route, unroute

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.subscription import Subscription
    from nats.js import JetStreamContext

log = logging.getLogger(__name__)

#: Messages asked for per pull request; at most two requested or held.
BATCH = 1024
#: A pull request's life (the server answers 408 when it ends).
EXPIRES = 5.0
#: No answer at all this long after a request's end: the consumer or the link is gone.
GRACE = 3.0
#: An ephemeral consumer is removed by the server after this idle time.
EPHEMERAL_IDLE = 30.0
#: How long closing waits for the server to delete the consumer.
DELETE_TIMEOUT = 1.0
RETRY_DELAY = 0.25
MAX_RETRY_DELAY = 2.0

#: A message: subject, header block, payload, stream sequence, stored at (epoch ns, digits).
Raw = tuple[bytes, bytes, bytes, int, bytes]
Start = float | Literal["all"] | None


class Unroutable(QMPEventsError):
    """This nats-py's internals do not let the reader take its messages from the wire
    (check :func:`~qmpevents.fleet.inbound.routable` first)."""


class OrderedReader:
    """One stream's messages on *subject*, in order, from *since* (epoch, "all", None: new)."""

    def __init__(self, nc: NATS, js: JetStreamContext, stream: str, subject: str,
                 since: Start, *, expires: float = EXPIRES, grace: float = GRACE) -> None:
        self._nc = nc
        self._expires = expires
        self._grace = grace
        self._request = json.dumps({"batch": BATCH, "expires": int(expires * 1e9)}).encode()
        self._js = js
        self._stream = stream
        self._subject = subject
        self._since = since
        self._prefix: str = getattr(js, "_prefix", "$JS.API")
        self._queue: deque[Raw] = deque()
        self._requests: deque[int] = deque()  # what each pull outstanding still brings
        self._requested = 0
        self._expected = 1  # the next consumer sequence
        self._last_stream_seq = 0  # of the last message received
        #: A consumer made again starts after _last_stream_seq, even at 0 (a "new messages"
        #: reader that started on an empty stream: all it holds came after the start).
        self._positioned = False
        self._broken: str | None = None  # why the consumer must be made again
        self._activity = time.monotonic()
        self._arrived = asyncio.Event()
        self._sub: Subscription | None = None
        self._name = ""
        self._inbox = ""

    async def open(self) -> None:
        """Create the consumer (nats-py's errors propagate)."""
        await self._create()

    async def close(self) -> None:
        await self._drop()

    async def next(self) -> Raw:
        """The next message (waits for one: the stream is endless)."""
        queue = self._queue
        while True:
            if queue:
                if len(queue) + self._requested <= BATCH:  # room for another batch
                    await self._pull()
                return queue.popleft()
            if self._broken is not None:
                await self._reset()
                continue
            # Cleared first: a failed request (_break) or an answer while it is sent wakes
            # the wait below instead of being forgotten.
            self._arrived.clear()
            await self._pull()
            timeout = None
            if self._requests:
                timeout = self._activity + self._expires + self._grace - time.monotonic()
                if timeout <= 0:
                    self._broken = "no answer from the consumer"
                    continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()

    # -- the consumer ----------------------------------------------------------

    async def _create(self) -> None:
        api = require("nats.js").api
        start_time = None
        start_seq = None
        if self._last_stream_seq or self._positioned:
            policy = api.DeliverPolicy.BY_START_SEQUENCE
            start_seq = self._last_stream_seq + 1
        elif self._since == "all":
            policy = api.DeliverPolicy.ALL
        elif self._since is None:
            policy = api.DeliverPolicy.NEW
        else:
            policy = api.DeliverPolicy.BY_START_TIME
            start_time = datetime.datetime.fromtimestamp(self._since, datetime.UTC)
        config = api.ConsumerConfig(
            deliver_policy=policy, opt_start_time=start_time,
            opt_start_seq=start_seq,
            ack_policy=api.AckPolicy.NONE, filter_subject=self._subject,
            inactive_threshold=EPHEMERAL_IDLE, mem_storage=True, num_replicas=1)
        info = await self._js.add_consumer(self._stream, config)
        inbox = self._nc.new_inbox()  # a new one: a late message of the last is not ours
        sub = await self._nc.subscribe(inbox)
        self._sub, self._name, self._inbox = sub, info.name, inbox
        if not route(self._nc, sub._id, self._on_message):
            await self._drop()  # its messages would queue on the subscription, unread
            raise Unroutable("the reader cannot take messages from this nats-py's parser")
        self._expected = 1
        self._requests.clear()
        self._requested = 0
        self._broken = None
        self._activity = time.monotonic()
        if policy == api.DeliverPolicy.NEW and info.delivered is not None:
            # New events only: if this consumer is made again, it starts after the stream's
            # last message when this one was made (at its start if it was empty then).
            self._last_stream_seq = info.delivered.stream_seq or 0
            self._positioned = True

    async def _drop(self) -> None:
        """Forget the consumer (and tell the server, if it still listens)."""
        sub, name = self._sub, self._name
        self._sub, self._name = None, ""
        if sub is not None:
            unroute(self._nc, sub._id)
            with contextlib.suppress(Exception):  # the connection may be gone
                await sub.unsubscribe()
        if name and self._nc.is_connected:  # best effort: the server drops it when idle
            with contextlib.suppress(Exception):  # the consumer may be gone, or the link
                await asyncio.wait_for(self._js.delete_consumer(self._stream, name),
                                       DELETE_TIMEOUT)

    async def _reset(self) -> None:
        """A new consumer after the last message received (what is queued stays)."""
        why = self._broken
        log.info("stream %s: consumer %s again after stream sequence %d (%s)", self._stream,
                 self._name, self._last_stream_seq, why)
        await self._drop()
        delay = RETRY_DELAY
        while True:
            try:
                await self._create()
                return
            except Unroutable:
                raise  # no retry helps
            except Exception as exc:  # nats-py's timeouts and API errors share no base class
                log.debug("stream %s: consumer not made again yet: %s", self._stream, exc)
            await asyncio.sleep(delay)  # retry backoff
            delay = min(delay * 2, MAX_RETRY_DELAY)

    async def _pull(self) -> None:
        """Ask for another batch when it fits in the bound (two batches)."""
        if self._sub is None or self._broken is not None:
            return
        if len(self._queue) + self._requested + BATCH > 2 * BATCH:
            return
        if not self._requests:
            self._activity = time.monotonic()  # the answer's clock starts now
        self._requests.append(BATCH)
        self._requested += BATCH
        try:
            await self._nc.publish(
                f"{self._prefix}.CONSUMER.MSG.NEXT.{self._stream}.{self._name}", self._request,
                reply=self._inbox)
        except Exception as exc:  # closed, reconnecting with a full buffer
            self._break(f"pull request: {exc}")

    def _break(self, why: str) -> None:
        if self._broken is None:
            self._broken = why
        self._arrived.set()

    def _request_ended(self) -> None:
        """The oldest pull request ended (timed out, or nothing more to bring)."""
        if self._requests:
            self._requested -= self._requests.popleft()

    def _on_message(self, subject: bytes, reply: bytes, headers: bytes, data: bytes) -> None:
        """A message of the current consumer, from the parser (must not raise)."""
        self._activity = time.monotonic()
        if not data and headers.startswith(b"NATS/1.0 "):  # a status
            status = headers[9:12]
            if status in (b"408", b"404"):  # the request ended (timed out, nothing left)
                self._request_ended()
            elif status != b"100":  # 409 consumer deleted / leader changed, 503, ...
                line = headers[9:].split(b"\r\n", 1)[0]
                self._break(f"status {line.decode(errors='replace')}")
            self._arrived.set()
            return
        tokens = reply.split(b".")
        if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<n>.<sseq>.<dseq>.<ts>.<pending>
            sseq, dseq, stored = tokens[5], tokens[6], tokens[7]
        elif len(tokens) >= 11:  # with a JetStream domain and account hash
            sseq, dseq, stored = tokens[7], tokens[8], tokens[9]
        else:
            return  # not from a consumer
        if not (sseq.isdigit() and dseq.isdigit()):
            return
        if int(dseq) != self._expected:
            self._break(f"consumer sequence {int(dseq)}, expected {self._expected}")
            return
        self._expected += 1
        stream_seq = self._last_stream_seq = int(sseq)
        requests = self._requests
        if requests:  # one more of the oldest request's batch came
            if requests[0] > 1:
                requests[0] -= 1
            else:
                requests.popleft()
            self._requested -= 1
        self._queue.append((subject, headers, data, stream_seq, stored))
        self._arrived.set()
