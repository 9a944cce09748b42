"""QEMU's ``stray '...'`` error text, for a huge token built in bounded steps.

QEMU's streamer (``json-streamer.c``) reports a byte its lexer cannot take
with ``error_setg(..., "JSON parse error, stray '%s'", token)``: the whole
token so far, not cut (only the parser's errors are cut at 1023 bytes), up
to a NUL byte (``%s``).  Its JSON writer shows each invalid UTF-8 sequence
as U+FFFD, which is what Python's ``"replace"`` decoding gives.

For a string of 60 MiB followed by a control byte, building that text in
one go (a copy of the token, a decode, a concatenation) stalled a server's
loop for 120 ms.  :func:`stray_steps` decodes the token a slice at a time
(an incremental decoder, so a character cut by a slice decodes as if whole)
into a string made at its final length (:mod:`~qmpevents.codec.strfill`):
no step copies or touches more than a slice.  It decodes twice, once to
learn the text's length and width and once to fill it in, rather than hold
every decoded slice.
"""

from __future__ import annotations

import codecs
import mmap
from collections.abc import Generator
from typing import Final, NoReturn

from qmpevents.codec.errors import JSONParseError, ParseError, ParseErrorKind
from qmpevents.codec.steps import run_to_end
from qmpevents.codec.strfill import StringFill, widest

#: Bytes of the token one step decodes (about 1-3 ms).
STRAY_STEP: Final = 1024 * 1024
_PREFIX: Final = "JSON parse error, stray '"
#: Bytes of a huge token a client's report of its stray error shows.
EXCERPT: Final = 200

#: A token's bytes (see :data:`qmpevents.codec.lexer.TokenText`).
Buffer = bytes | bytearray | mmap.mmap


class PendingStray:
    """The error of a token of :data:`STRAY_STEP` bytes or more, its text not built
    yet: the framer builds it in :meth:`steps` under a budget, else :meth:`now`."""

    __slots__ = ("text",)

    def __init__(self, text: Buffer) -> None:
        self.text = text

    @property
    def steps_left(self) -> int:
        """How many pauses :meth:`steps` makes."""
        return 2 * -(-len(self.text) // STRAY_STEP)

    def now(self) -> ParseError:
        return stray_error(self.text)

    def excerpt(self, size: int = EXCERPT) -> ParseError:
        """The error with only the token's first *size* bytes: what a client reports
        of its peer's error, at once (the whole text is for a server to send, as
        QEMU does; building it for 60 MiB stalled a client's loop 130 ms)."""
        head = bytes(self.text[:size]).split(b"\0", 1)[0].decode("utf-8", "replace")
        return ParseError(ParseErrorKind.LEXICAL,
                          f"{_PREFIX}{head}' ... (a token of {len(self.text)} bytes)")

    def steps(self) -> Generator[None, None, NoReturn]:
        """Build the text a slice at a time, then raise it as :class:`JSONParseError`
        (what the framer's parse job does with an error)."""
        error = yield from stray_steps(self.text)
        raise JSONParseError(error)


def stray_error(text: Buffer) -> ParseError:
    """The error for *text*, the token the lexer stopped at, in one go."""
    return run_to_end(stray_steps(text))


def stray_steps(text: Buffer, step: int = STRAY_STEP) -> Generator[None, None, ParseError]:
    """The error for *text*, pausing (``yield``) after each *step* bytes decoded."""
    nul = text.find(b"\0")
    view = memoryview(text)[:len(text) if nul < 0 else nul]
    try:
        length = len(_PREFIX) + 1
        wide = 0x7F
        for piece in _decoded(view, step):
            length += len(piece)
            wide = max(wide, widest(piece))
            del piece
            yield
        fill = StringFill(length, wide)
        fill.add(_PREFIX)
        for piece in _decoded(view, step):
            fill.add(piece)
            del piece
            yield
        fill.add("'")
        return ParseError(ParseErrorKind.LEXICAL, fill.result())
    finally:
        view.release()  # an mmap cannot be closed while a view of it is alive


def _decoded(view: memoryview, step: int) -> Generator[str, None, None]:
    """*view* decoded as UTF-8 (invalid sequences as U+FFFD), *step* bytes at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    end = len(view)
    for start in range(0, end, step):
        stop = min(end, start + step)
        yield decoder.decode(view[start:stop], final=stop == end)
