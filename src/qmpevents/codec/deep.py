"""One JSON text to its value without recursion, for texts msgspec cannot take.

msgspec's decoders recurse once per level of nesting, within Python's
recursion limit (1000); QEMU accepts 1024 levels.  A text too deep for them
(they raise ``RecursionError``) is parsed here by QEMU's parser, which does
not recurse, and held to strict JSON: QEMU's extensions (single-quoted
strings, the ``\\'`` escape, ``C0 80`` for NUL) are refused, conservatively
(an apostrophe even inside a double-quoted string refuses the text).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from qmpevents.codec.errors import ParseError
from qmpevents.codec.framing import value_framer

_NOT_JSON = re.compile(rb"'|\xc0\x80")
_DECODE = msgspec.json.Decoder().decode


def qemu_text_is_json(text: bytes) -> bool:
    """Whether *text*, which QEMU's parser takes, is strict JSON too: what keeps a
    text parsed by the exact path from being passed on as JSON when it is not.

    Without the bytes of QEMU's extensions (an apostrophe, ``C0 80``) it is; with
    them (rare), if msgspec decodes it, and conservatively not if it is nested
    deeper than msgspec goes.
    """
    if _NOT_JSON.search(text) is None:
        return True
    try:
        _DECODE(text)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True


def parse_json_text(text: bytes) -> Any:
    """The value of *text*, exactly one JSON text; raises ``msgspec.DecodeError`` otherwise."""
    if _NOT_JSON.search(text) is not None:
        raise msgspec.DecodeError("not strict JSON (or an apostrophe in a string)")
    framer = value_framer(qemu_exact=False)
    items = [*framer.feed(text), *framer.end()]
    if len(items) != 1 or isinstance(items[0], ParseError) or framer.dropped_at_end:
        raise msgspec.DecodeError("not exactly one JSON text")
    return items[0]
