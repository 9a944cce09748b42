"""The wire codec, sans-IO: bytes to messages and back, as QEMU does it.

* :func:`encode_message` -- one value to one QMP line, byte-exact with QEMU;
* :class:`Framer` -- a byte stream to messages, with QEMU's framing, limits
  and error texts, fast for newline-terminated traffic, linear in the bytes
  whatever the read boundaries, and resumable in slices (``budget``);
* :class:`ParseError` -- what was wrong with a message: its
  :class:`ParseErrorKind` and QEMU's text;
* :class:`HeldInputBudget` -- a bound on what many framers hold together.
"""

from qmpevents.codec.budget import DEFAULT_MAX_HELD_INPUT, HeldInputBudget
from qmpevents.codec.encoder import encode_json, encode_message, qdict_order
from qmpevents.codec.errors import JSONParseError, ParseError, ParseErrorKind
from qmpevents.codec.framing import Framer, value_framer
from qmpevents.codec.lexer import DEFAULT_MAX_MESSAGE_SIZE, MAX_NESTING, MAX_TOKEN_COUNT

__all__ = [
    "DEFAULT_MAX_HELD_INPUT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_NESTING",
    "MAX_TOKEN_COUNT",
    "Framer",
    "HeldInputBudget",
    "JSONParseError",
    "ParseError",
    "ParseErrorKind",
    "encode_json",
    "encode_message",
    "qdict_order",
    "value_framer",
]
