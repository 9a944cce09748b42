"""Token runs to JSON values, with QEMU's parse error texts (``json-parser.c``).

Iterative rather than recursive: QEMU allows 1024 levels of nesting, more
than Python's default recursion limit.  Only the first error counts, as in
QEMU.  Values are plain Python (dict, list, str, int, float, bool, None);
integers beyond the int64/uint64 range become floats as QEMU's do.
"""

from __future__ import annotations

import re
from _json import scanstring as _scanstring  # the C string scanner of the json module
from collections.abc import Generator, Iterable
from typing import Any

from qmpevents.codec.errors import JSONParseError, ParseError, ParseErrorKind
from qmpevents.codec.lexer import Tok, TokenText
from qmpevents.codec.steps import run_to_end
from qmpevents.codec.strfill import join_steps

_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1
_ESCAPES = {ord('"'): '"', ord("'"): "'", ord("\\"): "\\", ord("/"): "/", ord("b"): "\b",
            ord("f"): "\f", ord("n"): "\n", ord("r"): "\r", ord("t"): "\t"}
_HEX = frozenset(b"0123456789abcdefABCDEF")


__all__ = ["STEP_TOKENS", "STRING_SEGMENT", "JSONParseError", "parse_steps", "parse_string",
           "parse_tokens", "string_steps"]


#: QEMU's ``parse_error`` (json-parser.c) formats its message into ``char
#: message[1024]`` with ``vsnprintf``: at most this many bytes of it follow
#: "JSON parse error, ", cut wherever they end (a closing quote included).
MESSAGE_MAX = 1023


def _fail(message: str) -> JSONParseError:
    """QEMU's ``parse_error``.  Its messages are ASCII (a keyword is lowercase
    letters; the others are fixed texts or a ``\\u`` escape), so the byte cut is
    a character cut."""
    text = f"JSON parse error, {message[:MESSAGE_MAX]}"
    return JSONParseError(ParseError(ParseErrorKind.SYNTAX, text))


def _invalid_keyword(text: TokenText) -> JSONParseError:
    """``invalid keyword '...'`` from no more of the token than the cut keeps: a
    keyword of 60 MiB is never copied whole (its reply is QEMU's 1 KiB one)."""
    shown = text[:MESSAGE_MAX].decode("ascii")  # the lexer takes only [a-z]
    return _fail(f"invalid keyword '{shown}'")


def _valid_codepoint(cp: int) -> bool:
    """QEMU's ``is_valid_codepoint``: no surrogates, no noncharacters."""
    if cp < 0 or cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
        return False
    return not ((cp & 0xFFFE) == 0xFFFE or 0xFDD0 <= cp <= 0xFDEF)


def _hex4(text: TokenText, at: int) -> int:
    digits = text[at:at + 4]
    if len(digits) != 4 or any(b not in _HEX for b in digits):
        return -1
    return int(digits, 16)


def parse_string(text: TokenText) -> str:
    """A quoted string token (either quote) to its value."""
    return run_to_end(string_steps(text))


STRING_SEGMENT = 256 * 1024
"""Bytes of a string token converted between two pauses of :func:`string_steps`."""

_EXACT_STEP = 2048  # escapes or runs the exact loop converts between two pauses
_PLAIN_PER_ESCAPE = 64  # plain bytes that cost about what one escape costs there
_MAX_ESCAPE = 6  # the longest escape: backslash, 'u', four hex digits
# Where a string may be cut so that both sides convert as the whole would (see _cut):
# before an escape that is not a trailing surrogate (so a pair is never split),
# or after six bytes that hold no backslash (so no escape is split), at a character.
_CUT = re.compile(rb"[^\\]\\(?!u[dD][c-fC-F])|[^\\]{6}(?=[^\\\x80-\xbf])")
# Noncharacters in UTF-8 (U+FDD0..U+FDEF and U+xFFFE/U+xFFFF of every plane): QEMU
# refuses them.  (Surrogates cannot be encoded: str.encode refuses them.)
_NONCHARACTER = re.compile(
    rb"\xef\xb7[\x90-\xaf]|\xef\xbf[\xbe\xbf]|[\xf0-\xf4][\x8f\x9f\xaf\xbf]\xbf[\xbe\xbf]")


def string_steps(text: TokenText) -> Generator[None, None, str]:
    """Convert a quoted string token, pausing (``yield``) between slices of a big one.

    Each slice is converted at C speed (UTF-8 decoding and ``json``'s string
    scanner) when the result is certainly QEMU's: it decoded strictly and holds
    no surrogate or noncharacter, and the escapes are JSON's, which QEMU reads
    alike.  From the first slice where that is not certain (``\\'``, modified
    UTF-8, anything QEMU refuses), the exact port of QEMU's loop takes the rest,
    which gives QEMU's value or its first error; it pauses too.
    """
    end = len(text) - 1  # the closing quote
    pos = 1
    double = text[0] == 0x22
    pieces: list[str] = []
    while pos < end:
        cut = _cut(text, pos, end)
        piece = _certain(text[pos:cut], double) if cut > pos else None
        if piece is None:
            yield from _exact_steps(text, pos, pieces)
            break
        pieces.append(piece)
        pos = cut
        if pos < end:
            yield
    # Joined in steps too: one join of a huge string was one long step.
    return (yield from join_steps(pieces))


def _cut(text: TokenText, pos: int, end: int) -> int:
    """Where the slice that starts at *pos* (an escape boundary) ends: *end* for a
    small rest, *pos* if no safe cut was found (the exact loop then goes on)."""
    low = pos + STRING_SEGMENT
    if low >= end:
        return end
    found = _CUT.search(text, low - _MAX_ESCAPE, min(end, low + STRING_SEGMENT))
    if found is not None:
        cut = found.end()
        return cut - 1 if text[cut - 1] == 0x5C else cut
    # A run of backslashes: its first one starts an escape (the byte before it is
    # not a backslash, or it is at *pos*), so an even distance from it is a boundary.
    head = text[pos:low]
    run_start = low - (len(head) - len(head.rstrip(b"\\")))
    if run_start == low:
        return pos
    cut = low + (low - run_start) % 2
    return cut if cut < end and text[cut] == 0x5C else pos


def _certain(body: bytes | bytearray, double: bool) -> str | None:
    """*body* converted at C speed if the result is certainly QEMU's, else None."""
    try:
        value = body.decode("utf-8")
    except UnicodeDecodeError:
        return None  # invalid, or modified UTF-8
    if b"\\" in body:
        if not double:
            return None
        quoted = f'"{value}"'
        try:
            value, stop = _scanstring(quoted, 1, True)
        except ValueError:
            return None  # an escape JSON does not have, or a malformed one
        if stop != len(quoted):
            return None
    if value.isascii():
        return value
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        return None  # a surrogate (from an escape that is not a valid pair)
    if ((b"\xef\xb7" in encoded or b"\xbf\xbe" in encoded or b"\xbf\xbf" in encoded)
            and _NONCHARACTER.search(encoded)):
        return None
    return value


def _exact_steps(text: TokenText, i: int, pieces: list[str]) -> Generator[None, None, None]:
    """QEMU's ``parse_string`` loop from *i* (an escape boundary), pausing now and
    then: the value of the rest goes to *pieces*, a piece per pause."""
    quote = text[0]
    out: list[str] = []
    end = len(text) - 1
    countdown = _EXACT_STEP
    while i < end:
        if countdown <= 0:
            countdown = _EXACT_STEP
            pieces.append("".join(out))
            out.clear()
            yield
        countdown -= 1
        byte = text[i]
        if byte == quote:
            break
        if byte == 0x5C:
            begin = i
            kind = text[i + 1]
            i += 2
            simple = _ESCAPES.get(kind)
            if simple is not None:
                out.append(simple)
                continue
            if kind != ord("u"):
                raise _fail("invalid escape sequence in string")
            cp = _hex4(text, i)
            i += 4
            if 0xD800 <= cp <= 0xDBFF and text[i:i + 2] == b"\\u":
                trailing = _hex4(text, i + 2)
                if 0xDC00 <= trailing <= 0xDFFF:
                    cp = 0x10000 + ((cp & 0x3FF) << 10) | (trailing & 0x3FF)
                    i += 6
                else:
                    cp = -1
            if cp != 0 and not _valid_codepoint(cp):
                shown = text[begin:i].decode("utf-8", "replace")
                raise _fail(f"{shown} is not a valid Unicode character")
            out.append(chr(cp))
            continue
        # A run of plain bytes up to the next escape or quote (a slice of it at most).
        j = _run_end(text, i, end, quote)
        chunk = text[i:j]
        try:
            decoded = chunk.decode("utf-8")
        except UnicodeDecodeError:
            decoded = _modified_utf8(chunk)
        if not decoded.isascii() and _invalid_character(decoded):
            raise _fail("invalid UTF-8 sequence in string")
        out.append(decoded)
        countdown -= len(chunk) // _PLAIN_PER_ESCAPE
        i = j
    pieces.append("".join(out))


def _run_end(text: TokenText, i: int, end: int, quote: int) -> int:
    """Where the plain run from *i* ends: the next backslash or quote, or a character
    boundary after :data:`STRING_SEGMENT` bytes (a slice of a longer run)."""
    limit = min(end, i + STRING_SEGMENT)
    j = limit
    for special in (b"\\", b"'" if quote == 0x27 else b'"'):
        at = text.find(special, i, j)
        if at >= 0:
            j = at
    if j == limit and limit < end:
        # Not inside a character (its continuation bytes are 0x80-0xBF); an invalid
        # sequence is an error on either side.
        for _ in range(3):
            if 0x80 <= text[j] <= 0xBF and j - 1 > i:
                j -= 1
    return j


def _modified_utf8(chunk: bytes | bytearray) -> str:
    """QEMU reads modified UTF-8: ``C0 80`` is NUL; anything else invalid is an error."""
    parts = chunk.split(b"\xc0\x80")
    try:
        return "\0".join(part.decode("utf-8") for part in parts)
    except UnicodeDecodeError:
        raise _fail("invalid UTF-8 sequence in string") from None


def _invalid_character(decoded: str) -> bool:
    """Whether *decoded* holds a character QEMU refuses (a surrogate or a noncharacter)."""
    try:
        encoded = decoded.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return _NONCHARACTER.search(encoded) is not None


def _number(tok: Tok, text: TokenText) -> int | float:
    # More than 20 digits is beyond uint64 anyway; int() would also refuse
    # very long digit strings (Python's 4300-digit limit) with ValueError.
    if tok is Tok.INTEGER and len(text) <= 21:
        value = int(text)
        if _INT64_MIN <= value <= _UINT64_MAX:
            return value
    return float(text)


def _scalar(tok: Tok, text: TokenText) -> Any:
    """A scalar token's value; raises QEMU's 'expecting value' for anything else."""
    if tok is Tok.STRING:
        return parse_string(text)
    if tok is Tok.INTEGER or tok is Tok.FLOAT:
        return _number(tok, text)
    if tok is Tok.KEYWORD:
        if text == b"true":
            return True
        if text == b"false":
            return False
        if text == b"null":
            return None
        raise _invalid_keyword(text)
    raise _fail("expecting value")


class _Frame:
    """One open container on the parse stack."""

    __slots__ = ("container", "key")

    def __init__(self, container: dict[str, Any] | list[Any]) -> None:
        self.container = container
        self.key: str | None = None


STEP_TOKENS = 4096
"""Values :func:`parse_steps` parses between two of its pauses."""


def parse_tokens(tokens: Iterable[tuple[Tok, TokenText]]) -> Any:
    """Parse one streamer message; raises :class:`JSONParseError`."""
    steps = parse_steps(tokens)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def parse_steps(tokens: Iterable[tuple[Tok, TokenText]]) -> Generator[None, None, Any]:
    """Parse one streamer message, pausing (``yield``) every :data:`STEP_TOKENS` values.

    The generator's return value is the message's value; it raises
    :class:`JSONParseError`.  Pausing lets a caller parse a huge message a
    slice at a time.  The tokens are read once, in order, with one of
    look-ahead: a :class:`~qmpevents.codec.lexer.TokenRun` is parsed without
    ever being expanded into a list.
    """
    source = iter(tokens)
    countdown = STEP_TOKENS
    ahead: tuple[Tok, TokenText] | None = next(source, None)
    stack: list[_Frame] = []

    def take() -> tuple[Tok, TokenText]:
        nonlocal ahead
        token = ahead
        if token is None:
            raise _fail("premature EOI")
        ahead = next(source, None)
        return token

    def peek() -> Tok | None:
        return ahead[0] if ahead is not None else None

    result: Any = None
    while True:
        countdown -= 1
        if not countdown:
            countdown = STEP_TOKENS
            yield
        # Parse a value (possibly opening a container).
        tok, text = take()
        if tok is Tok.LCURLY or tok is Tok.LSQUARE:
            frame = _Frame({} if tok is Tok.LCURLY else [])
            nxt = peek()
            if nxt is None:
                raise _fail("premature EOI")
            closer = Tok.RCURLY if tok is Tok.LCURLY else Tok.RSQUARE
            if nxt is closer:
                take()
                value: Any = frame.container
            else:
                stack.append(frame)
                if isinstance(frame.container, dict):
                    yield from _read_key(stack[-1], take)
                continue
        elif tok is Tok.STRING and len(text) > STRING_SEGMENT:
            value = yield from string_steps(text)
        else:
            value = _scalar(tok, text)
        # Attach the value to its container and close what is complete.
        while True:
            if not stack:
                result = value
                return result
            frame = stack[-1]
            container = frame.container
            if isinstance(container, dict):
                assert frame.key is not None
                if frame.key in container:
                    raise _fail("duplicate key")
                container[frame.key] = value
                sep, _ = take()
                if sep is Tok.RCURLY:
                    stack.pop()
                    value = container
                    continue
                if sep is not Tok.COMMA:
                    raise _fail("expected separator in dict")
                yield from _read_key(frame, take)
                break
            container.append(value)
            sep, _ = take()
            if sep is Tok.RSQUARE:
                stack.pop()
                value = container
                continue
            if sep is not Tok.COMMA:
                raise _fail("expected separator in list")
            break


def _read_key(frame: _Frame, take: Any) -> Generator[None, None, None]:
    """Read ``"key" :`` of an object member (pausing in a huge key)."""
    tok, text = take()
    if tok is Tok.LCURLY or tok is Tok.LSQUARE:
        # QEMU parses the value first, then complains it is not a string.
        raise _fail("key is not a string in object")
    if tok is Tok.STRING and len(text) > STRING_SEGMENT:
        key = yield from string_steps(text)
    else:
        key = _scalar(tok, text)
    if not isinstance(key, str):
        raise _fail("key is not a string in object")
    colon, _ = take()
    if colon is not Tok.COLON:
        raise _fail("missing : in object pair")
    frame.key = key
