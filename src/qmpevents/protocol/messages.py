"""What a QMP server sends, as typed messages for the client side.

One line decodes in one msgspec pass: event lines straight to the catalog's
typed event classes, everything else to :class:`Envelope`, then to
:class:`Greeting`, :class:`Return` or :class:`ErrorReply`.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from msgspec import Struct, field

from qmpevents.catalog import (
    EVENT_TYPES,
    Event,
    UnknownEvent,
    decode_catalog_event,
    decode_event,
    decode_event_lines,
    event_from_value,
)
from qmpevents.codec.deep import qemu_text_is_json
from qmpevents.rawtext import RawDemand, RawText, attach_each, set_raw, share_text


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
            raw = self._raw
        except AttributeError:  # parsed by the exact path without its text
            return b""
        assert isinstance(raw, bytes)  # only events share a block's text
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
    if b'"event"' in line or b"\\u" in line:  # the key may be escaped
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


def decode_event_block(block: bytes, demand: RawDemand | None = None) -> list[Event]:
    """Whole lines that are all catalog events, decoded with no interpreted work
    per event: the framer's *decode_block*.

    Raises ``msgspec.DecodeError`` unless the block is all events the catalog
    knows, one per line (a reply, an unknown event, a blank line, two events
    on a line or one over several lines send it line by line, where QEMU's
    parser decides what a message over several lines is).  Until *demand*
    (the connection's, see :class:`~qmpevents.rawtext.RawDemand`) says that
    ``raw`` is read, one msgspec call decodes the block, and each event's
    ``raw``, its value's exact text, is cut out of it when asked for (the
    count of values and lines agreeing, a value can span lines only if
    another shares one: its text is still exact).  Once ``raw`` is read, each
    line is decoded alone and keeps its text at once.
    """
    if demand is not None and demand.seen:
        return _decode_each_line(block)
    events = decode_event_lines(block)
    if len(events) != len(block) - len(block.replace(b"\n", b"")):  # faster than count
        raise msgspec.DecodeError("not one message per line")
    share_text(block, events, RawDemand() if demand is None else demand)
    return events


def _decode_each_line(block: bytes) -> list[Event]:
    """Each line exactly one event (else ``msgspec.DecodeError``), its ``raw`` attached."""
    lines = block.lstrip(b" \t\r\n").splitlines()  # not \x0b/\x0c: stray to QEMU
    events = list(map(decode_catalog_event, lines))
    attach_each(events, map(bytes.strip, lines))  # only JSON blanks: it decoded
    return events


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
