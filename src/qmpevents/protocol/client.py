"""The client side of QMP as a state machine, without I/O (h11 style).

:meth:`ClientConnection.receive_data` takes the server's bytes;
:meth:`~ClientConnection.next_event` hands out greetings, events, replies and
protocol errors in arrival order; :meth:`~ClientConnection.send_command`
returns the bytes to write.  Every command gets a unique id and every reply
is matched to its command by that id, so events may arrive anywhere -- even
between ``qmp_capabilities`` and its reply, which breaks qemu.qmp.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any

from qmpevents.catalog import EVENT_TYPES, Event, UnknownEvent
from qmpevents.codec import DEFAULT_MAX_MESSAGE_SIZE, Framer, ParseError, encode_message
from qmpevents.errors import LocalProtocolError, MessageTooLarge
from qmpevents.protocol.messages import (
    ErrorReply,
    Greeting,
    Return,
    Unrecognized,
    decode_event_block,
    decode_line,
    from_value,
)
from qmpevents.protocol.server import NEED_DATA, _NeedData


class ClientState(Enum):
    """Where the client is in QMP's life cycle."""

    AWAITING_GREETING = "awaiting-greeting"
    GREETED = "greeted"            # greeting received, qmp_capabilities not sent
    NEGOTIATING = "negotiating"    # qmp_capabilities sent, reply pending
    READY = "ready"                # command mode
    CLOSED = "closed"


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


ClientEvent = Greeting | Event | UnknownEvent | Reply | ProtocolViolation

_EVENT_CLASSES = frozenset([*EVENT_TYPES.values(), UnknownEvent])


class ClientConnection:
    """One QMP client session's protocol state."""

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 id_prefix: str = "qe") -> None:
        self.state = ClientState.AWAITING_GREETING
        self.greeting: Greeting | None = None
        self._max_size = max_message_size
        self._framer: Framer[Any] = Framer(decode_line, from_value,
                                           max_message_size=max_message_size,
                                           decode_block=decode_event_block)
        self._inbox: deque[Any] = deque()
        self._non_events = 0  # inbox items that are not events: 0 = hand out in bulk
        self._pending: dict[str, str] = {}
        self._next_id = 0
        self._prefix = id_prefix

    # -- sending ------------------------------------------------------------

    def send_command(self, name: str, arguments: dict[str, Any] | None = None) -> tuple[str, bytes]:
        """(id, bytes to write) for one command.  ``qmp_capabilities`` negotiates."""
        if name == "qmp_capabilities":
            if self.state is not ClientState.GREETED:
                raise LocalProtocolError(f"cannot negotiate in state {self.state.value}")
            self.state = ClientState.NEGOTIATING
        elif self.state is not ClientState.READY:
            raise LocalProtocolError(
                f"cannot send {name!r} in state {self.state.value}; negotiate first")
        self._next_id += 1
        request_id = f"{self._prefix}{self._next_id}"
        request: dict[str, Any] = {"execute": name, "id": request_id}
        if arguments:
            request["arguments"] = arguments
        self._pending[request_id] = name
        return request_id, encode_message(request)

    @property
    def pending(self) -> int:
        """Commands sent and not answered yet."""
        return len(self._pending)

    # -- receiving ----------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the server, in any split.

        Raises :class:`MessageTooLarge` when a message exceeds the limit:
        loudly, never by dropping the connection silently.
        """
        items = self._framer.feed(data)
        kinds = set(map(type, items))
        if not kinds <= _EVENT_CLASSES:
            for item in items:
                if isinstance(item, ParseError) and "size limit" in item.desc:
                    raise MessageTooLarge(self._max_size + 1, self._max_size)
            self._non_events += sum(type(item) not in _EVENT_CLASSES for item in items)
        self._inbox.extend(items)

    def connection_closed(self) -> None:
        self.state = ClientState.CLOSED

    def next_event(self) -> ClientEvent | _NeedData:
        """The next thing the server said, or :data:`NEED_DATA`."""
        inbox = self._inbox
        while inbox:
            message = inbox.popleft()
            if type(message) in _EVENT_CLASSES:
                return message  # type: ignore[no-any-return]
            self._non_events -= 1
            result = self._classify(message)
            if result is not None:
                return result
        return NEED_DATA

    def next_events(self) -> list[ClientEvent]:
        """Everything the server said so far, in order: :meth:`next_event` in bulk.

        One call per read instead of one per message keeps a fast reader's
        per-event cost down to the decoding itself.
        """
        inbox = self._inbox
        out: list[ClientEvent] = list(inbox)
        inbox.clear()
        if self._non_events:
            self._non_events = 0
            classified = (message if type(message) in _EVENT_CLASSES else self._classify(message)
                          for message in out)
            out = [message for message in classified if message is not None]
        return out

    def _classify(self, message: Any) -> ClientEvent | None:
        if isinstance(message, Greeting):
            if self.state is not ClientState.AWAITING_GREETING:
                return ProtocolViolation("a second greeting")
            self.state = ClientState.GREETED
            self.greeting = message
            return message
        if isinstance(message, Return | ErrorReply):
            return self._match(message)
        if isinstance(message, ParseError):
            return ProtocolViolation(f"unparsable message from the server: {message.desc}")
        assert isinstance(message, Unrecognized)
        return ProtocolViolation(f"not a QMP message: {message.value!r}"[:500])

    def _match(self, message: Return | ErrorReply) -> Reply | ProtocolViolation:
        request_id = message.id
        name = self._pending.pop(request_id, None) if isinstance(request_id, str) else None
        if name is None:
            if request_id is None and isinstance(message, ErrorReply):
                return ProtocolViolation(
                    f"error reply without id: {message.error_class}: {message.desc}")
            return ProtocolViolation(f"reply to unknown id {request_id!r}")
        if name == "qmp_capabilities":
            self.state = ClientState.READY if isinstance(message, Return) \
                else ClientState.GREETED
        if isinstance(message, ErrorReply):
            return Reply(name, request_id, error=message)
        return Reply(name, request_id, value=message.value)


__all__ = ["NEED_DATA", "ClientConnection", "ClientEvent", "ClientState", "ProtocolViolation",
           "Reply"]
