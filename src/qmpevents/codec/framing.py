"""Input framing: bytes in, one decoded item per message out.

Two paths give the same result (a property the tests check on random input):

* the fast path hands every complete line (and a trailing unterminated
  ``{...}``) to a C-speed msgspec decoder, so newline-terminated traffic never
  costs a Python loop per byte; with a *decode_block* function, all the
  complete lines of a chunk are first tried in one call (no Python loop per
  line either), falling back to line by line when that call refuses them;
* anything the fast path cannot decode with certainty (a syntax error, two
  messages on one line, a message spread over lines, single quotes, or what
  QEMU's parser treats differently from msgspec) goes through the exact port
  of QEMU's lexer and streamer, from the start of that line until the stream is
  back at a clean message boundary.

The buffered partial line is bounded by the message size limit: beyond it the
bytes go to the exact path, which reports QEMU's "token size limit" error and
resynchronises instead of growing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from qmpevents.codec.lexer import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_NESTING,
    MAX_TOKEN_COUNT,
    Streamer,
    Tok,
)
from qmpevents.codec.parser import JSONParseError, parse_tokens

T = TypeVar("T")

# Integers of 19+ digits may lie outside int64/uint64, where QEMU switches to
# doubles; msgspec would keep them exact.  Such lines take the exact path.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
# QEMU's lexer ends a number at "0" followed by an exponent ("0e5", "-0E1"):
# the "e" is then a stray byte; msgspec accepts it.  Such lines take the exact path.
_ZERO_EXPONENT = re.compile(rb"(?<![0-9A-Za-z_.])0[eE]")
# QEMU's whitespace; bytes.strip() would also drop \x0b and \x0c, stray bytes to QEMU.
_WS = b" \t\r\n"


@dataclass(frozen=True, slots=True)
class ParseError:
    """A message that could not be parsed; ``desc`` is QEMU's text for it."""

    desc: str


class Framer(Generic[T]):
    """Turns a byte stream into decoded messages (``T``) and :class:`ParseError`.

    *decode_line* decodes the bytes of one complete JSON text (raising
    ``msgspec.DecodeError`` when it is not valid JSON); *from_value* builds the
    same result from a plain value parsed by the exact path.  *decode_block*,
    if given, decodes a run of whole lines at once and raises
    ``msgspec.DecodeError`` for anything it does not take with certainty (it is
    tried only while no message is half-read and the run fits the size limit,
    so it must give exactly what the line-by-line path would).  With
    *qemu_exact* set, inputs on which msgspec and QEMU's parser could disagree
    (non-ASCII, ``\\u`` escapes, very long digit runs) always take the exact
    path, so a server built on this answers as QEMU does.
    """

    def __init__(self, decode_line: Callable[[bytes], T], from_value: Callable[[Any], T], *,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, qemu_exact: bool = False,
                 max_nesting: int = MAX_NESTING, max_tokens: int = MAX_TOKEN_COUNT,
                 decode_block: Callable[[bytes], list[T]] | None = None) -> None:
        self._decode_line = decode_line
        self._decode_block = decode_block
        self._from_value = from_value
        self._max_nesting = max_nesting
        self._max_fast_line = max_message_size
        self._max_tokens = max_tokens
        self._qemu_exact = qemu_exact
        # The unterminated last line, as received: joined only when it may be
        # complete, so a big message arriving in many reads costs O(n), not O(n^2).
        self._parts: list[bytes] = []
        self._held = 0
        self._out: list[T | ParseError] = []
        self._streamer = Streamer(self._emit_tokens, max_message_size=max_message_size,
                                  max_nesting=max_nesting, max_tokens=max_tokens)
        self._slow = False
        self.dropped_at_end = 0
        # The block decoder relies on msgspec's own depth limit (< 1024) and
        # does none of the qemu_exact checks.
        self._block_ok = not qemu_exact and max_nesting >= MAX_NESTING

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a message."""
        return self._held

    def feed(self, data: bytes) -> list[T | ParseError]:
        """Consume *data*; return every message completed by it, in order."""
        out = self._out = []
        if self._parts:
            if (b"\n" not in data and data.rstrip(_WS)[-1:] not in (b"}", b"]")
                    and self._held + len(data) < self._max_fast_line):
                self._parts.append(data)  # still inside the same line
                self._held += len(data)
                return out
            buf = b"".join([*self._parts, data])
            self._parts = []
            self._held = 0
        else:
            buf = data
        pos = 0
        if self._decode_block is not None and not self._slow and self._block_ok:
            pos = self._try_block(buf)
        end = len(buf)
        while pos < end:
            if self._slow:
                pos = self._run_slow(buf, pos)
                continue
            newline = buf.find(b"\n", pos)
            if newline < 0:
                pos = self._tail(buf, pos)
                break
            if self._try_fast(buf[pos:newline]):
                pos = newline + 1
            else:
                self._slow = True
        if self._slow and self._streamer.idle:
            # The next chunk starts afresh on the fast path.
            self._slow = False
        return out

    def end(self) -> list[T | ParseError]:
        """The input ended: every message complete in what is held (an unfinished one is dropped).

        The fast path holds an unterminated last line until it may be complete;
        QEMU's streamer has answered each message of it already, so at the end
        the held bytes go through the exact path, as QEMU saw them.
        """
        held = b"".join(self._parts)
        self._parts = []
        self._held = 0
        out = self._out = []
        streamer = self._streamer
        boundary = 0
        for pos, byte in enumerate(held):
            streamer.feed_byte(byte)
            if streamer.idle:
                boundary = pos + 1
        #: Bytes of the unfinished message that the end of input cut off.
        self.dropped_at_end = len(held) - boundary
        self._streamer = Streamer(self._emit_tokens, max_message_size=self._max_fast_line,
                                  max_nesting=self._max_nesting, max_tokens=self._max_tokens)
        self._slow = False
        return out

    def _try_block(self, buf: bytes) -> int:
        """Decode all complete lines of *buf* in one call; where they end, or 0 if refused."""
        assert self._decode_block is not None
        cut = buf.rfind(b"\n") + 1
        if cut == 0 or cut > self._max_fast_line:
            return 0
        try:
            self._out.extend(self._decode_block(buf if cut == len(buf) else buf[:cut]))
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            return 0
        return cut

    def _try_fast(self, line: bytes) -> bool:
        """Decode one line on the fast path; False hands it to the exact path."""
        stripped = line.strip(_WS)
        if not stripped:
            return True
        # QEMU counts every token's bytes plus one against the limit: a message
        # of exactly the limit's size is already too big.
        if len(stripped) >= self._max_fast_line or (
                stripped.count(b"{") + stripped.count(b"[") > self._max_nesting):
            return False
        if len(stripped) >= self._max_tokens and _token_bound(stripped) >= self._max_tokens:
            return False
        if self._qemu_exact and (not stripped.isascii() or b"\\u" in stripped
                                 or _LONG_DIGITS.search(stripped)
                                 or _ZERO_EXPONENT.search(stripped)):
            return False
        try:
            item = self._decode_line(stripped)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            return False
        if self._qemu_exact and isinstance(item, dict | list) and (
                _key_count(item) != stripped.count(b":")):
            # msgspec keeps the last of duplicate keys where QEMU reports an
            # error (or a ':' inside a string): let the exact path decide.
            return False
        self._out.append(item)
        return True

    def _tail(self, buf: bytes, pos: int) -> int:
        """An unterminated last line: QEMU does not need the newline."""
        rest = buf[pos:]
        stripped = rest.strip(_WS)
        if not stripped:
            return len(buf)
        if stripped[:1] not in (b"{", b"["):
            # Garbage or a bare scalar: QEMU reacts byte by byte, so do we.
            self._slow = True
            return self._run_slow(buf, pos)
        if stripped[-1:] in (b"}", b"]"):
            if self._try_fast(stripped):
                return len(buf)
            if len(rest) < self._max_fast_line and _truncated(stripped):
                # A valid beginning of a JSON text (the read ended on a '}'
                # inside it): QEMU has nothing to say yet either.
                self._hold(rest)
                return len(buf)
            # Several messages without a newline, an error, or input the fast
            # path may not take: QEMU would answer now, not at the next newline.
            self._slow = True
            return self._run_slow(buf, pos)
        if len(rest) >= self._max_fast_line or (self._qemu_exact and (
                b"}" in stripped or b"]" in stripped)):
            # Maybe complete messages before an unfinished one: a server answers those
            # now, as QEMU does (a client can wait for the line: nothing is owed).
            self._slow = True
            return self._run_slow(buf, pos)
        self._hold(rest)
        return len(buf)

    def _hold(self, rest: bytes) -> None:
        self._parts = [rest]
        self._held = len(rest)

    def _run_slow(self, buf: bytes, pos: int) -> int:
        """Feed the exact path up to a newline at a message boundary.

        Staying on it to the end of the line keeps a long line of garbage
        linear: the fast path is not retried at every token.
        """
        streamer = self._streamer
        feed = streamer.feed_byte
        end = len(buf)
        while pos < end:
            byte = buf[pos]
            feed(byte)
            pos += 1
            if byte == 0x0A and streamer.idle:
                self._slow = False
                break
        return pos

    def _emit_tokens(self, tokens: list[tuple[Tok, bytes]] | None, error: str | None) -> None:
        if error is not None:
            self._out.append(ParseError(error))
            return
        assert tokens is not None
        try:
            value = parse_tokens(tokens)
        except JSONParseError as exc:
            self._out.append(ParseError(exc.desc))
            return
        self._out.append(self._from_value(value))


_JSON = msgspec.json.Decoder()


def _truncated(text: bytes) -> bool:
    """Whether *text* is valid JSON cut short (msgspec's error says so)."""
    try:
        _JSON.decode(text)
    except msgspec.DecodeError as exc:
        return "truncated" in str(exc)
    except (RecursionError, UnicodeDecodeError):  # msgspec: invalid UTF-8 in a string
        return False
    return False


def _token_bound(text: bytes) -> int:
    """At most how many tokens *text* holds: scalars sit between structural bytes."""
    structural = sum(text.count(byte) for byte in (b"{", b"}", b"[", b"]", b",", b":"))
    return 2 * structural + 1


def _key_count(value: dict[str, Any] | list[Any]) -> int:
    """Members of every object inside *value* (iterative: values nest 1024 deep)."""
    count = 0
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += len(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def value_framer(*, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 qemu_exact: bool = True) -> Framer[Any]:
    """A framer yielding plain JSON values, as QEMU's monitor sees its input."""
    decoder = msgspec.json.Decoder()
    return Framer(decoder.decode, _identity, max_message_size=max_message_size,
                  qemu_exact=qemu_exact)


def _identity(value: Any) -> Any:
    return value
