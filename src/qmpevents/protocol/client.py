"""The client side of QMP as a state machine, without I/O (h11 style).

:meth:`ClientConnection.receive_data` takes the server's bytes (``b""`` for
the end of input); :meth:`~ClientConnection.next_event` hands out greetings,
events, replies, protocol violations and finally :class:`ConnectionClosed`,
in arrival order; :meth:`~ClientConnection.send_command` queues a request and
:meth:`~ClientConnection.data_to_send` gives the bytes to write.  Every
command gets a unique id and every reply is matched to its command by that
id, so events may arrive anywhere -- even between ``qmp_capabilities`` and its
reply, which breaks qemu.qmp.

With *resync* (a reconnecting client), negotiation is followed at once by a
``query-status`` sent from here: events that arrive before its reply are
held back, and handed out after a :class:`Resynced` carrying the status, so a
consumer learns the state before it sees what changed it.
"""

from __future__ import annotations

import reprlib
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Final

from qmpevents.catalog import Event, UnknownEvent
from qmpevents.codec import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Framer,
    ParseError,
    ParseErrorKind,
    encode_message,
)
from qmpevents.errors import LocalProtocolError, MessageTooLarge
from qmpevents.protocol.messages import (
    EVENT_CLASSES,
    ErrorReply,
    Greeting,
    Return,
    Unrecognized,
    decode_event_block,
    decode_line,
    from_value,
)
from qmpevents.protocol.outbox import Outbox
from qmpevents.protocol.states import (
    CLIENT_TRANSITIONS,
    NEED_DATA,
    ClientInput,
    ClientState,
    ConnectionClosed,
    Sentinel,
    StateMachine,
)
from qmpevents.rawtext import RawDemand

HELD_LIMIT: Final = 4096
"""Events held back while the resync status is pending; beyond it they go out without it."""

FORGOTTEN_LIMIT: Final = 1024
"""Ids of abandoned commands remembered, so their late replies are dropped quietly."""

_CLOSED: Final = ConnectionClosed()


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply matched to the command it answers."""

    command: str
    id: Any
    value: Any = None
    error: ErrorReply | None = None


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """Something the server sent that QMP does not allow (delivered, not raised)."""

    problem: str


@dataclass(frozen=True, slots=True)
class Resynced:
    """The resync ``query-status`` result (None if it failed): held events follow."""

    status: Any


ClientEvent = Greeting | Event | UnknownEvent | Reply | ProtocolViolation | Resynced \
    | ConnectionClosed


class ClientConnection:
    """One QMP client session's protocol state."""

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 id_prefix: str = "qe", resync: bool = False) -> None:
        self._machine: StateMachine[ClientState, ClientInput] = StateMachine(
            "the client", CLIENT_TRANSITIONS, ClientState.AWAITING_GREETING, ClientState.ERROR)
        self.greeting: Greeting | None = None
        self._max_size = max_message_size
        self._framer: Framer[Any] = Framer(decode_line, max_message_size=max_message_size,
                                           decode_block=self._decode_events,
                                           from_message=from_value,
                                           feed_messages=LINE_MESSAGES_PER_FEED)
        self._block_events = 0  # events the block decoder gave in the current feed
        self._resync_given_up = False  # a fatal error came while events were held for it
        #: Set ``raw_demand.seen`` to have every event's ``raw`` cut out at
        #: decode (see :mod:`qmpevents.rawtext`); reading one ``raw`` sets it.
        self.raw_demand = RawDemand()
        self._inbox: deque[Any] = deque()
        self._non_events = 0  # inbox items that are not events: 0 = hand out in bulk
        self._pending: dict[str, str] = {}
        self._forgotten: OrderedDict[str, None] = OrderedDict()
        self._next_id = 0
        self._prefix = id_prefix
        self._resync = resync
        self._status_id: str | None = None
        self._held: list[Event | UnknownEvent] = []
        self._ready: deque[ClientEvent] = deque()  # classified, not handed out yet
        self._input_ended = False
        self._out = Outbox()
        #: Replies that came after their command was abandoned (:meth:`forget`).
        self.late_replies = 0

    @property
    def state(self) -> ClientState:
        return self._machine.state

    # -- sending ------------------------------------------------------------

    def send_command(self, name: str, arguments: dict[str, Any] | None = None) -> str:
        """Queue one command (``qmp_capabilities`` negotiates); returns its id."""
        self._machine.fire(ClientInput.SEND_CAPABILITIES if name == "qmp_capabilities"
                           else ClientInput.SEND_COMMAND)
        return self._queue(name, arguments)

    def _queue(self, name: str, arguments: dict[str, Any] | None) -> str:
        self._next_id += 1
        request_id = f"{self._prefix}{self._next_id}"
        request: dict[str, Any] = {"execute": name, "id": request_id}
        if arguments:
            request["arguments"] = arguments
        self._pending[request_id] = name
        self._out.append(encode_message(request))
        return request_id

    def data_to_send(self) -> bytes:
        """The requests queued so far, in order; empties the buffer."""
        return self._out.take()

    def forget(self, request_id: str) -> None:
        """Nobody waits for *request_id* any more (a timeout): drop its reply when it comes."""
        if self._pending.pop(request_id, None) is None:
            return
        forgotten = self._forgotten
        forgotten[request_id] = None
        if len(forgotten) > FORGOTTEN_LIMIT:
            forgotten.popitem(last=False)

    @property
    def pending(self) -> int:
        """Commands sent and not answered (nor forgotten) yet."""
        return len(self._pending)

    def close(self) -> None:
        """This side ends the session."""
        self._machine.fire(ClientInput.CLOSE)
        self._inbox.clear()
        self._ready.clear()
        self._non_events = 0

    # -- receiving ----------------------------------------------------------

    def receive_data(self, data: bytes, *, budget: int | None = None) -> None:
        """Take bytes from the server, in any split; ``b""`` means the input ended.

        Raises :class:`MessageTooLarge` when a message exceeds the limit:
        loudly, never by dropping the connection silently; what came before
        that message is still handed out by :meth:`next_event`.  With *budget*, at
        most that many bytes go through the byte-by-byte parser now; the rest
        waits for :meth:`continue_parsing` (see :attr:`parse_pending`).
        """
        if self._input_ended:
            raise LocalProtocolError("the client cannot receive data after the end of input")
        if type(data) is not bytes:  # a caller's buffer: events may keep its text
            data = bytes(memoryview(data))  # (and no int or list of ints passes)
        self._machine.fire(ClientInput.RECEIVE_DATA)
        if not data:
            self._input_ended = True
            self._block_events = 0
            self._take(self._framer.end())  # what came before the end, first
            self._inbox.append(_CLOSED)
            self._non_events += 1
            return
        self._block_events = 0
        self._take(self._framer.feed(data, budget=budget))

    def continue_parsing(self, budget: int | None = None) -> None:
        """Parse on what :meth:`receive_data` left pending, within *budget*."""
        self._block_events = 0
        self._take(self._framer.feed(b"", budget=budget))

    def _decode_events(self, block: bytes) -> list[Event]:
        """The framer's block decoder, counting: a read it took whole needs no type test."""
        events = decode_event_block(block, self.raw_demand)
        self._block_events += len(events)
        return events

    def _take(self, items: list[Any]) -> None:
        from_blocks, self._block_events = self._block_events, 0
        too_large = None
        if from_blocks != len(items) and not only_events(items):
            for index, item in enumerate(items):
                if isinstance(item, ParseError) and item.kind is ParseErrorKind.TOO_LARGE:
                    too_large = MessageTooLarge(item.size or self._max_size + 1,
                                                item.limit or self._max_size)
                    del items[index:]  # what came before it is handed out, first
                    break
            self._non_events += sum(type(item) not in EVENT_CLASSES for item in items)
        self._inbox.extend(items)
        if too_large is not None:
            # No status reply can come now: the events held for it go out too
            # (next_event: the negotiation's reply may still be in the inbox).
            self._resync_given_up = True
            raise too_large

    def give_up_resync(self) -> None:
        """The resync status is not coming (the caller's timeout): what is held
        for it goes out after a ``Resynced(None)``, at the next :meth:`next_event`."""
        if self._machine.state is ClientState.RESYNCING:
            self._resync_given_up = True

    @property
    def parse_pending(self) -> bool:
        """Bytes received and not parsed yet (a ``budget`` ran out)."""
        return self._framer.pending > 0

    def next_event(self) -> ClientEvent | Sentinel:
        """The next thing the server said, or :data:`NEED_DATA`."""
        if self._ready:
            return self._ready.popleft()
        inbox = self._inbox
        while inbox:
            message = inbox.popleft()
            if type(message) in EVENT_CLASSES:
                if self._machine.state is not ClientState.RESYNCING:
                    return message  # type: ignore[no-any-return]
                out = self._hold(message)
            else:
                self._non_events -= 1
                out = self._classify(message)
            if out:
                self._ready.extend(out[1:])
                return out[0]
        if self._resync_given_up and self._machine.state is ClientState.RESYNCING:
            self._resync_given_up = False
            out = self._release(None)
            self._ready.extend(out[1:])
            return out[0]
        return NEED_DATA

    @property
    def only_events_ready(self) -> bool:
        """Whether what :meth:`next_events` hands out now is events only (maybe
        none): the reader's bulk path, without a test per item."""
        return (not self._non_events and not self._ready
                and self._machine.state is not ClientState.RESYNCING)

    def next_events(self) -> list[ClientEvent]:
        """Everything the server said so far, in order: :meth:`next_event` in bulk.

        One call per read instead of one per message keeps a fast reader's
        per-event cost down to the decoding itself.
        """
        inbox = self._inbox
        if self.only_events_ready:
            out: list[ClientEvent] = list(inbox)
            inbox.clear()
            return out
        out = []
        while (item := self.next_event()) is not NEED_DATA:
            out.append(item)  # type: ignore[arg-type]
        return out

    def _classify(self, message: Any) -> list[ClientEvent]:
        """What one message that is not an event hands out (maybe nothing)."""
        if isinstance(message, ConnectionClosed):
            # No status reply can come: the events held for it go out first.
            held = (self._release(None) if self._machine.state is ClientState.RESYNCING
                    else [])
            self._machine.fire(ClientInput.END_OF_INPUT)
            return [*held, message]
        if isinstance(message, Greeting):
            if self._machine.state is not ClientState.AWAITING_GREETING:
                return [ProtocolViolation(
                    f"a second greeting (in state {self._machine.state.name})")]
            self._machine.fire(ClientInput.GREETING)
            self.greeting = message
            return [message]
        if isinstance(message, Return | ErrorReply):
            return self._match(message)
        if isinstance(message, ParseError):
            return [ProtocolViolation(f"unparsable message from the server: {message.desc}")]
        assert isinstance(message, Unrecognized)
        return [ProtocolViolation(f"not a QMP message: {excerpt(message.raw)}")]

    def _hold(self, event: Event | UnknownEvent) -> list[ClientEvent]:
        self._held.append(event)
        if len(self._held) >= HELD_LIMIT:
            return self._release(None)
        return []

    def _release(self, status: Any) -> list[ClientEvent]:
        """The resync status is known (or given up on): the marker, then the held events."""
        self._machine.fire(ClientInput.STATUS_KNOWN)
        self._status_id = None
        held, self._held = self._held, []
        return [Resynced(status), *held]

    def _match(self, message: Return | ErrorReply) -> list[ClientEvent]:
        request_id = message.id
        name = self._pending.pop(request_id, None) if isinstance(request_id, str) else None
        if name is None:
            if isinstance(request_id, str) and request_id in self._forgotten:
                del self._forgotten[request_id]
                self.late_replies += 1
                return []
            if request_id is None and isinstance(message, ErrorReply):
                return [ProtocolViolation(
                    f"error reply without id: {message.error_class}: {message.desc}")]
            # reprlib: bounded in depth and size (an id may be any value, 1024 deep).
            return [ProtocolViolation(f"reply to unknown id {reprlib.repr(request_id)}")]
        if request_id == self._status_id:
            return self._release(message.value if isinstance(message, Return) else None)
        if name == "qmp_capabilities":
            if isinstance(message, ErrorReply):
                self._machine.fire(ClientInput.CAPABILITIES_REFUSED)
            elif self._resync:
                self._machine.fire(ClientInput.NEGOTIATED_RESYNC)
                self._status_id = self._queue("query-status", None)
            else:
                self._machine.fire(ClientInput.NEGOTIATED)
        if isinstance(message, ErrorReply):
            return [Reply(name, request_id, error=message)]
        return [Reply(name, request_id, value=message.value)]


LINE_MESSAGES_PER_FEED: Final = 128
"""Under a budget, the most messages one feed takes off the line-by-line path
(each costs 10-100 us there, by machine; a server's 20,000 events on one line
without a newline, 256 KiB of them in one read, were one 120 ms step, and 512
a feed still 160 ms on a slow 2-core VM): the rest waits for
:meth:`ClientConnection.continue_parsing`."""

EXCERPT_LIMIT: Final = 200
"""Bytes of a message's text a report shows at most."""


def excerpt(text: bytes, limit: int = EXCERPT_LIMIT) -> str:
    """The beginning of a message's text on one line, for a report of bounded size.

    Built from the bytes, never from the parsed value: a value nested
    1024 deep (valid to QEMU) would exhaust Python's recursion in ``repr``.
    """
    shown = " ".join(text[:limit].decode("utf-8", "backslashreplace").split())
    return shown + (" ..." if len(text) > limit else "")


def only_events(items: list[Any]) -> bool:
    """Whether every item is a decoded event: the reader's one-test bulk path."""
    return set(map(type, items)) <= EVENT_CLASSES


__all__ = ["HELD_LIMIT", "NEED_DATA", "ClientConnection", "ClientEvent", "ClientState",
           "ConnectionClosed", "ProtocolViolation", "Reply", "Resynced", "only_events"]
