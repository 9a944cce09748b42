"""Reading the fleet's events back from JetStream: the typed library API.

::

    from qmpevents.fleet import fleet_events
    from qmpevents.fleet.broker import BrokerOptions

    async with fleet_events(BrokerOptions(["nats://127.0.0.1:4222"]),
                            subject="qmp.*.*.BLOCK_IO_ERROR", since="all") as events:
        async for fe in events:
            print(fe.host, fe.vm, fe.event.name, fe.event.data.action)

Each :class:`FleetEvent` carries the event decoded as the client's events
are (typed data, ``.raw`` the exact JSON the VM sent) with the host and VM it
came from.  By default an ordered reader (:mod:`qmpevents.fleet.ordered`:
an ephemeral pull consumer read from the wire, nothing to acknowledge; or,
with a nats-py it cannot read from, nats-py's ordered push consumer) reads
the stream; with
``durable="name"`` a durable pull consumer, which resumes after the last
event acknowledged.  A durable consumer's events are acknowledged once the whole
fetched batch was handed out, or when the iteration is closed (events
fetched and not handed out are then given back at once); a crash hands the
unacknowledged ones out again, so processing is at least once.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

import msgspec

from qmpevents.catalog import Event, UnknownEvent, decode_event
from qmpevents.fleet.broker import BrokerError, BrokerOptions, connect, describe
from qmpevents.fleet.deps import require
from qmpevents.fleet.headers import agent_headers, parse_header_lines
from qmpevents.fleet.inbound import routable
from qmpevents.fleet.ordered import OrderedReader
from qmpevents.fleet.subjects import (
    DEFAULT_STREAM,
    HOST_HEADER,
    MSG_ID_HEADER,
    RECEIVED_HEADER,
    SEQUENCE_HEADER,
    STREAM_SUBJECTS,
    VM_HEADER,
    untoken,
)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import JetStreamContext

#: Events fetched at once by a durable consumer, and the bound of events held in memory.
FETCH_BATCH = 1024
FETCH_WAIT = 1.0
#: How long a consumer is retried while the cluster cannot answer (no meta leader).
OPEN_TIMEOUT = 30.0
#: An ephemeral consumer is removed by the server after this idle time.
EPHEMERAL_IDLE = 30.0

Since = float | Literal["all"] | None


@dataclass(frozen=True)
class FleetEvent:
    """One VM's event as the fleet stream holds it."""

    host: str
    vm: str
    event: Event | UnknownEvent
    #: When the agent received it (epoch seconds; a finite time: when the stream stored it
    #: if the message has no ``Qmp-Received`` that is one).
    received: float
    #: The per-VM sequence given by the agent.
    sequence: int
    msg_id: str
    #: The stream's own sequence number and the subject it was stored under.
    stream_sequence: int
    subject: str


class FleetEvents:
    """An open consumer: iterate it; close it (``async with``) to acknowledge the last."""

    def __init__(self, options: BrokerOptions, *, subject: str, stream: str, since: Since,
                 durable: str | None) -> None:
        self._options = options
        self._subject = subject
        self._stream = stream
        self._since = since
        self._durable = durable
        self._nc: NATS | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._batch: deque[Msg] = deque()
        self._unacked: Msg | None = None
        self._push: Subscription | None = None
        self._reader: OrderedReader | None = None
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        #: Messages on the subjects that were not QMP events (skipped).
        self.skipped = 0

    async def _delivered(self, msg: Msg) -> None:
        """The ordered consumer's callback: queue it, and hold delivery while full.

        Holding the callback holds nats-py's delivery task, so flow control
        stops the server: memory stays bounded by :data:`FETCH_BATCH`.
        """
        while len(self._batch) >= FETCH_BATCH:
            self._room.clear()
            await self._room.wait()
        self._batch.append(msg)
        self._arrived.set()

    async def open(self) -> None:
        """Connect and create (or bind to) the consumer; raises BrokerError."""
        nats_js = require("nats.js")
        api = nats_js.api
        timeout_errors = (require("nats.errors").TimeoutError, TimeoutError)
        self._nc = await connect(self._options)
        js = self._nc.jetstream()
        if self._since == "all":
            policy, start = api.DeliverPolicy.ALL, None
        elif self._since is None:
            policy, start = api.DeliverPolicy.NEW, None
        else:
            policy = api.DeliverPolicy.BY_START_TIME
            start = datetime.datetime.fromtimestamp(self._since, datetime.UTC)
        config = api.ConsumerConfig(
            deliver_policy=policy, opt_start_time=start,
            # Durable: acknowledging an event acknowledges all before it (one ack per batch).
            ack_policy=api.AckPolicy.ALL if self._durable else api.AckPolicy.NONE,
            max_ack_pending=FETCH_BATCH * 4 if self._durable else None,
            inactive_threshold=None if self._durable else EPHEMERAL_IDLE)
        deadline = time.monotonic() + OPEN_TIMEOUT
        while True:
            try:
                if self._durable:
                    self._sub = await js.pull_subscribe(
                        self._subject, durable=self._durable, stream=self._stream,
                        config=config)
                elif routable(self._nc):
                    reader = OrderedReader(self._nc, js, self._stream, self._subject,
                                           self._since)
                    await reader.open()
                    self._reader = reader
                else:  # no state to keep: an ordered push consumer, the fastest reader
                    self._push = await js.subscribe(
                        self._subject, stream=self._stream, ordered_consumer=True,
                        deliver_policy=policy, cb=self._delivered,
                        config=api.ConsumerConfig(opt_start_time=start))
                return
            except Exception as exc:  # nats-py API errors, timeouts
                # A cluster that just lost its meta leader answers nothing for a while.
                unavailable = nats_js.errors.ServiceUnavailableError
                transient = isinstance(exc, (*timeout_errors, unavailable))
                if not transient or time.monotonic() > deadline:
                    await self._nc.close()
                    raise BrokerError(f"stream {self._stream}: {describe(exc)}") from None
            await asyncio.sleep(0.25)  # retry backoff

    async def close(self) -> None:
        if self._nc is None:
            return
        try:
            if self._reader is not None:
                await self._reader.close()
                self._reader = None
            if self._unacked is not None:
                await self._unacked.ack_sync()
                self._unacked = None
            if self._durable:
                for msg in self._batch:  # fetched, not handed out: deliver them again now
                    await msg.nak()
            self._batch.clear()
            await self._nc.flush(timeout=2)
        except Exception:  # the broker is gone: unacknowledged events come again later
            pass
        await self._nc.close()
        self._nc = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[FleetEvent]:
        return self

    async def __anext__(self) -> FleetEvent:
        """The next event; waits for one (the stream is endless).

        A message that is not a QMP event (someone else published on the
        subjects) is skipped and counted in :attr:`skipped`: one bad message
        must not end every reader that replays the stream.
        """
        while self._reader is not None:
            subject, headers, data, stream_sequence, stored = await self._reader.next()
            try:
                return _wire_fleet_event(subject.decode(errors="replace"), headers, data,
                                         stream_sequence, stored)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self._skip(subject.decode(errors="replace"), exc)
        while True:
            if not self._batch and self._unacked is not None:  # the batch is handled
                await self._unacked.ack()
                self._unacked = None
            while not self._batch and self._push is not None:
                self._arrived.clear()
                await self._arrived.wait()
            while not self._batch:
                assert self._sub is not None, "open() first"
                try:
                    self._batch = deque(await self._sub.fetch(FETCH_BATCH, timeout=FETCH_WAIT))
                except (TimeoutError, require("nats.errors").TimeoutError):
                    continue
            msg = self._batch.popleft()
            self._room.set()
            if self._durable:
                self._unacked = msg
            try:
                return to_fleet_event(msg)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self._skip(msg.subject, exc)

    def _skip(self, subject: str, exc: Exception) -> None:
        self.skipped += 1
        if self.skipped == 1 or self.skipped % 1000 == 0:
            log.warning("%s: %d message(s) that are not QMP events skipped (%s: %s)",
                        subject, self.skipped, type(exc).__name__, exc)


def to_fleet_event(msg: Msg) -> FleetEvent:
    """A stream message as a :class:`FleetEvent` (headers missing: names from the subject)."""
    return _fleet_event(msg.subject, msg.headers or {}, msg.data, _stream_sequence(msg),
                        lambda: _stored_at(msg))


def _wire_fleet_event(subject: str, headers: bytes, data: bytes, stream_sequence: int,
                      stored: bytes) -> FleetEvent:
    """A message as the wire carried it: the agent's header block read without a dict."""
    agents = agent_headers(headers)
    if agents is None or not (agents[0] and agents[1]):
        return _fleet_event(subject, parse_header_lines(headers), data, stream_sequence,
                            lambda: int(stored) / 1e9 if stored.isdigit() else time.time())
    host, vm, received_text, sequence_text, msg_id, _ = agents
    try:
        received = float(received_text)
    except ValueError:
        received = _NAN
    if received - received != 0.0:  # not a finite time (nan, inf): when the stream stored it
        received = int(stored) / 1e9 if stored.isdigit() else time.time()
    try:
        sequence = int(sequence_text)
    except ValueError:
        sequence = 0
    return _made(host, vm, decode_event(data), received, sequence, msg_id, stream_sequence,
                 subject)


_NAN = float("nan")


def _fleet_event(subject: str, headers: dict[str, str], data: bytes,
                 stream_sequence: int, stored_at: Callable[[], float]) -> FleetEvent:
    """*stored_at* gives the time the stream stored the message, the time used when the
    agent's ``Qmp-Received`` is missing or not a finite time."""
    host = headers.get(HOST_HEADER) or _subject_token(subject, 1)
    vm = headers.get(VM_HEADER) or _subject_token(subject, 2)
    try:
        received = float(headers.get(RECEIVED_HEADER, "nan"))
    except ValueError:
        received = _NAN
    if not math.isfinite(received):
        received = stored_at()
    try:
        sequence = int(headers.get(SEQUENCE_HEADER, "0"))
    except ValueError:
        sequence = 0
    return _made(host, vm, decode_event(data), received, sequence,
                 headers.get(MSG_ID_HEADER, ""), stream_sequence, subject)


def _made(host: str, vm: str, event: Event | UnknownEvent, received: float, sequence: int,
          msg_id: str, stream_sequence: int, subject: str) -> FleetEvent:
    """``FleetEvent(...)`` as its frozen ``__init__`` would make it, for a third of the
    cost (``object.__setattr__`` per field): this is done for every event read."""
    made: FleetEvent = _new_object(FleetEvent)
    made.__dict__.update(host=host, vm=vm, event=event, received=received, sequence=sequence,
                         msg_id=msg_id, stream_sequence=stream_sequence, subject=subject)
    return made


_new_object = object.__new__


def _subject_token(subject: str, index: int) -> str:
    """The name in token *index* of ``qmp.<host>.<vm>.<EVENT>`` ("" for a shorter
    subject)."""
    parts = subject.split(".")
    return untoken(parts[index]) if len(parts) > 3 else ""


def _stored_at(msg: Msg) -> float:
    """When the stream stored *msg* (epoch seconds), from its ack subject's time."""
    tokens = msg.reply.split(".")
    if msg.reply.startswith("$JS.ACK.") and len(tokens) in (9, 11, 12):
        stored = tokens[7 if len(tokens) == 9 else 9]
        if stored.isdigit():
            return int(stored) / 1e9
    return time.time()


def _stream_sequence(msg: Msg) -> int:
    """The stream sequence from the ack subject, as nats-py's ``msg.metadata`` finds it.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``
    is read here without building nats-py's metadata objects; other forms (a
    JetStream domain) are left to nats-py.
    """
    reply = msg.reply
    if reply.startswith("$JS.ACK."):
        tokens = reply.split(".")
        if len(tokens) == 9 and tokens[5].isdigit():
            return int(tokens[5])
    return int(msg.metadata.sequence.stream)


def fleet_events(options: BrokerOptions, *, subject: str = STREAM_SUBJECTS,
                 stream: str = DEFAULT_STREAM, since: Since = None,
                 durable: str | None = None) -> FleetEvents:
    """The fleet's events matching *subject*: new ones, or from *since* (epoch or ``"all"``).

    Use as ``async with fleet_events(...) as events: async for fe in events``.
    """
    return FleetEvents(options, subject=subject, stream=stream, since=since, durable=durable)
