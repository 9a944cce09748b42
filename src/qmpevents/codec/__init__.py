"""The wire codec, sans-IO: bytes to messages and back, as QEMU does it.

* :func:`encode_message` -- one value to one QMP line, byte-exact with QEMU;
* :class:`Framer` -- a byte stream to messages, with QEMU's framing, limits
  and error texts, fast for newline-terminated traffic.
"""

from qmpevents.codec.encoder import encode_json, encode_message, qdict_order
from qmpevents.codec.framing import Framer, ParseError, value_framer
from qmpevents.codec.lexer import DEFAULT_MAX_MESSAGE_SIZE, MAX_NESTING, MAX_TOKEN_COUNT

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_NESTING",
    "MAX_TOKEN_COUNT",
    "Framer",
    "ParseError",
    "encode_json",
    "encode_message",
    "qdict_order",
    "value_framer",
]
