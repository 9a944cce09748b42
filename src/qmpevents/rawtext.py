"""The exact text a message was decoded from, kept beside its fields.

A slot, not a field: no part of equality, ``repr`` or encoding, and no
per-message ``__dict__``.  Events decoded together from one block (the
client's fast path, see :func:`qmpevents.protocol.messages.decode_event_block`)
share the block's text until each one's ``raw`` is asked for: cutting every
line out at decode time cost about 55 ns of a fast stream's per-event time,
for a text most consumers never read.  The first ``raw`` asked for of a
block finds where each of its values ends, in one msgspec pass into
zero-copy ``Raw`` views; each read then copies its event's value out.
For a consumer that reads every ``raw`` that is more work than cutting
every line at once (Python work per read instead of one C-speed pass): the
first ``raw`` read of a connection's events (:class:`RawDemand`) makes the
decoder cut every later line of it at once.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from typing import Any, Final

import msgspec
from msgspec.structs import force_setattr

SHARED_TEXT_MAX: Final = 128 * 1024
"""The biggest block whose events share its text: a piece of a client read
(:data:`~qmpevents.codec.framing.BLOCK_PIECE`, 64 KiB) plus the line the read
before it cut, with room to spare.  A bigger block
holds a big message carried over several reads; its events get their own
copies at once, so that a small event never keeps a big neighbour alive."""

_VALUES = msgspec.json.Decoder(msgspec.Raw)
_STRUCTURE: Final = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[][{}]')


class RawText:
    """Base of whatever keeps its received text (events, unrecognised messages)."""

    __slots__ = ("_raw",)
    _raw: bytes | tuple[SharedText, int]  # its own copy, or its place in a shared block


class RawDemand:
    """Whether the consumer of one connection's events reads their ``raw``."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen = False


class SharedText:
    """The text of one block, shared by the events decoded from it."""

    __slots__ = ("_demand", "_text", "_values")

    def __init__(self, text: bytes, demand: RawDemand) -> None:
        self._text = text
        self._demand = demand
        self._values: Sequence[msgspec.Raw | bytes] | None = None

    def value(self, index: int) -> bytes:
        """A copy of the exact text of the block's *index*-th JSON value.

        Threads that ask at once may each find the values; each gets a whole list.
        """
        values = self._values
        if values is None:
            self._demand.seen = True
            try:
                values = _VALUES.decode_lines(self._text)
            except RecursionError:  # asked from deeper in the stack than it was decoded
                values = _value_texts(self._text)
            self._values = values
        return bytes(values[index])


def _value_texts(text: bytes) -> list[bytes]:
    """Each JSON value's text, found without recursion, however deep it nests.

    *text* is whole JSON objects that msgspec decoded, so counting the
    brackets outside strings finds where each one ends.
    """
    texts: list[bytes] = []
    depth = 0
    start = 0
    for token in _STRUCTURE.finditer(text):
        byte = text[token.start()]
        if byte == 0x22:  # a string: skipped whole
            continue
        if byte in b"[{":
            if depth == 0:
                start = token.start()
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                texts.append(text[start:token.end()])
    return texts


set_raw: Final[Callable[[RawText, bytes], None]] = RawText.__dict__["_raw"].__set__
"""``set_raw(message, text)``: attach the text a message was decoded from
(frozen Structs refuse attribute assignment; the slot's own setter does not)."""


def share_text(text: bytes, items: list[Any], demand: RawDemand) -> None:
    """Make *text*, from which *items* were decoded in order, their shared raw
    text (or, if *text* is big, give each its own copy now).

    *text* must hold exactly *items*, one JSON value each, with only JSON
    whitespace between (what ``decode_lines`` took).
    """
    if len(text) <= SHARED_TEXT_MAX:
        attach_each(items, zip(repeat(SharedText(text, demand)), range(len(items))))
    else:
        attach_each(items, map(bytes, _VALUES.decode_lines(text)))


def attach_each(items: list[Any], texts: Iterable[bytes | tuple[SharedText, int]]) -> None:
    """Set each item's raw text at C speed: ``force_setattr`` through ``map``
    costs half as much per item as ``set_raw``."""
    deque(map(force_setattr, items, repeat("_raw"), texts), maxlen=0)
