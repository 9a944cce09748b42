"""What a QMP server sends, as typed messages for the client side.

One line decodes in one msgspec pass: event lines straight to the catalog's
typed event classes, everything else to :class:`Envelope`, then to
:class:`Greeting`, :class:`Return` or :class:`ErrorReply`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any, Final

import msgspec
from msgspec import Struct, field

from qmpevents.catalog import (
    EVENT_TYPES,
    AnyEvent,
    Event,
    RawText,
    UnknownEvent,
    decode_event,
    event_from_value,
    set_raw,
)
from qmpevents.codec.deep import qemu_text_is_json


class Greeting(Struct, frozen=True):
    """``{"QMP": {"version": ..., "capabilities": [...]}}``."""

    version: dict[str, Any]
    capabilities: list[str]


class Return(Struct, frozen=True):
    """A command's success reply."""

    value: Any
    id: Any = None


class ErrorReply(Struct, frozen=True):
    """A command's error reply: QMP's error class and description."""

    error_class: str
    desc: str
    id: Any = None


class _ErrorBody(Struct, frozen=True):
    error_class: str = field(name="class")
    desc: str = ""


_UNSET: Any = msgspec.UNSET


class Envelope(Struct, frozen=True):
    """Every top-level member a server message may have."""

    QMP: Greeting | None = None
    return_: Any = field(default=_UNSET, name="return")
    error: _ErrorBody | None = None
    id: Any = None


_ENVELOPE = msgspec.json.Decoder(Envelope)
_PLAIN = msgspec.json.Decoder()


class Unrecognized(RawText, Struct, frozen=True, gc=False):
    """Valid JSON that is none of greeting, reply or event: a peer's protocol error."""

    value: Any

    @property
    def raw(self) -> bytes:
        """Its exact text (as an event's ``raw``, no part of equality): what a report
        shows, never the value's repr, which recurses once per level of nesting."""
        try:
            raw: bytes = self._raw
        except AttributeError:  # parsed by the exact path without its text
            return b""
        return raw


def _unrecognized(value: Any, raw: bytes) -> Unrecognized:
    message = Unrecognized(value)
    set_raw(message, raw)
    return message


EVENT_CLASSES: Final = frozenset([*EVENT_TYPES.values(), UnknownEvent])
"""Every class a decoded event line can be (``type(x) in EVENT_CLASSES``: the fast test)."""

ServerMessage = Greeting | Return | ErrorReply | Event | UnknownEvent | Unrecognized


def _from_envelope(envelope: Envelope, value: Any) -> ServerMessage:
    if envelope.QMP is not None:
        return envelope.QMP
    if envelope.error is not None:
        return ErrorReply(envelope.error.error_class, envelope.error.desc, envelope.id)
    if envelope.return_ is not _UNSET:
        return Return(envelope.return_, envelope.id)
    return Unrecognized(value)


def decode_line(line: bytes) -> ServerMessage:
    """One complete JSON text from the server to its message.

    Raises ``msgspec.DecodeError`` only for invalid JSON (the framer then takes
    the exact path); valid JSON of no known shape is :class:`Unrecognized`.
    """
    if b'"event"' in line:
        try:
            return decode_event(line)
        except msgspec.ValidationError:
            pass  # e.g. a reply whose value mentions "event"
    try:
        message = _from_envelope(_ENVELOPE.decode(line), None)
    except msgspec.ValidationError:
        message = Unrecognized(None)
    if isinstance(message, Unrecognized):
        return _unrecognized(_PLAIN.decode(line), line)
    return message


_EVENT_LIST = msgspec.json.Decoder(list[AnyEvent])


def decode_event_block(block: bytes) -> list[Event]:
    """Whole lines that are all catalog events, decoded in one msgspec call.

    The framer's *decode_block*: a stream of events costs no interpreted work
    per line but attaching its ``raw``.  The lines, joined by commas inside
    ``[...]``, are one JSON array exactly when every line holds exactly one
    value (a blank line gives ``,,``, a line cut inside a message an invalid
    array, two messages on a line one more item than lines): one decode of
    the array then validates every line at once.  Raises
    ``msgspec.DecodeError`` unless every line holds exactly one event the
    catalog knows (a reply, an unknown event, a blank line or two messages on
    a line send the block line by line), so each event's ``raw`` is its line
    without the terminator, as :func:`decode_line` gives (a line padded with
    blanks keeps them here).
    """
    lines = block.lstrip(b" \t\r\n").splitlines()  # not \x0b/\x0c: stray to QEMU
    if not lines:
        return []
    parts = lines.copy()
    parts[0] = b"[" + parts[0]
    parts[-1] += b"]"
    events: list[Event] = _EVENT_LIST.decode(b",".join(parts))
    if len(events) != len(lines):  # "a, b" on one line: two values, one line
        raise msgspec.DecodeError("not one message per line")
    _consume(map(set_raw, events, lines))  # at C speed: no Python step per event
    return events


def _consume(steps: Iterator[None]) -> None:
    """Run an iterator to its end, keeping nothing (itertools' ``consume`` recipe)."""
    deque(steps, maxlen=0)


def from_value(value: Any, raw: bytes | None = None) -> ServerMessage:
    """The same as :func:`decode_line` for a value parsed by the exact path.

    *raw* is the message's exact text (the framer's *from_message*): an event
    keeps it as its ``raw``, as one decoded from a line does, if it is JSON (not
    QEMU's single quotes or ``C0 80``: see :func:`~qmpevents.codec.deep.qemu_text_is_json`),
    so that whoever passes ``raw`` on as JSON can trust it; else ``raw`` is None.
    """
    if isinstance(value, dict) and "event" in value:
        try:
            return event_from_value(value, raw if raw is not None and qemu_text_is_json(raw)
                                    else None)
        except msgspec.ValidationError:
            pass
    try:
        message = _from_envelope(msgspec.convert(value, Envelope), value)
    except msgspec.ValidationError:
        message = Unrecognized(value)
    if raw is not None and isinstance(message, Unrecognized):
        return _unrecognized(value, raw)
    return message
