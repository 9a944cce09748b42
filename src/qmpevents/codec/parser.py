"""Token runs to JSON values, with QEMU's parse error texts (``json-parser.c``).

Iterative rather than recursive: QEMU allows 1024 levels of nesting, more
than Python's default recursion limit.  Only the first error counts, as in
QEMU.  Values are plain Python (dict, list, str, int, float, bool, None);
integers beyond the int64/uint64 range become floats as QEMU's do.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Any

from qmpevents.codec.errors import JSONParseError, ParseError, ParseErrorKind
from qmpevents.codec.lexer import Tok

_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1
_ESCAPES = {ord('"'): '"', ord("'"): "'", ord("\\"): "\\", ord("/"): "/", ord("b"): "\b",
            ord("f"): "\f", ord("n"): "\n", ord("r"): "\r", ord("t"): "\t"}
_HEX = frozenset(b"0123456789abcdefABCDEF")


__all__ = ["STEP_TOKENS", "JSONParseError", "parse_steps", "parse_string", "parse_tokens"]


def _fail(message: str) -> JSONParseError:
    return JSONParseError(ParseError(ParseErrorKind.SYNTAX, f"JSON parse error, {message}"))


def _valid_codepoint(cp: int) -> bool:
    """QEMU's ``is_valid_codepoint``: no surrogates, no noncharacters."""
    if cp < 0 or cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
        return False
    return not ((cp & 0xFFFE) == 0xFFFE or 0xFDD0 <= cp <= 0xFDEF)


def _hex4(text: bytes, at: int) -> int:
    digits = text[at:at + 4]
    if len(digits) != 4 or any(b not in _HEX for b in digits):
        return -1
    return int(digits, 16)


def parse_string(text: bytes) -> str:
    """A quoted string token (either quote) to its value."""
    quote = text[0]
    out: list[str] = []
    i = 1
    end = len(text) - 1
    while i < end:
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
        # A run of plain bytes up to the next escape or quote.
        j = i
        while j < end and text[j] != 0x5C and text[j] != quote:
            j += 1
        chunk = text[i:j]
        try:
            decoded = chunk.decode("utf-8")
        except UnicodeDecodeError:
            decoded = _modified_utf8(chunk)
        if any(not _valid_codepoint(ord(c)) for c in decoded if ord(c) >= 0xD800):
            raise _fail("invalid UTF-8 sequence in string")
        out.append(decoded)
        i = j
    return "".join(out)


def _modified_utf8(chunk: bytes) -> str:
    """QEMU reads modified UTF-8: ``C0 80`` is NUL; anything else invalid is an error."""
    parts = chunk.split(b"\xc0\x80")
    try:
        return "\0".join(part.decode("utf-8") for part in parts)
    except UnicodeDecodeError:
        raise _fail("invalid UTF-8 sequence in string") from None


def _number(tok: Tok, text: bytes) -> int | float:
    # More than 20 digits is beyond uint64 anyway; int() would also refuse
    # very long digit strings (Python's 4300-digit limit) with ValueError.
    if tok is Tok.INTEGER and len(text) <= 21:
        value = int(text)
        if _INT64_MIN <= value <= _UINT64_MAX:
            return value
    return float(text)


def _scalar(tok: Tok, text: bytes) -> Any:
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
        raise _fail(f"invalid keyword '{text.decode('ascii')}'")
    raise _fail("expecting value")


class _Frame:
    """One open container on the parse stack."""

    __slots__ = ("container", "key")

    def __init__(self, container: dict[str, Any] | list[Any]) -> None:
        self.container = container
        self.key: str | None = None


STEP_TOKENS = 4096
"""Values :func:`parse_steps` parses between two of its pauses."""


def parse_tokens(tokens: Iterable[tuple[Tok, bytes]]) -> Any:
    """Parse one streamer message; raises :class:`JSONParseError`."""
    steps = parse_steps(tokens)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def parse_steps(tokens: Iterable[tuple[Tok, bytes]]) -> Generator[None, None, Any]:
    """Parse one streamer message, pausing (``yield``) every :data:`STEP_TOKENS` values.

    The generator's return value is the message's value; it raises
    :class:`JSONParseError`.  Pausing lets a caller parse a huge message a
    slice at a time.  The tokens are read once, in order, with one of
    look-ahead: a :class:`~qmpevents.codec.lexer.TokenRun` is parsed without
    ever being expanded into a list.
    """
    source = iter(tokens)
    countdown = STEP_TOKENS
    ahead: tuple[Tok, bytes] | None = next(source, None)
    stack: list[_Frame] = []

    def take() -> tuple[Tok, bytes]:
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
                    _read_key(stack[-1], take)
                continue
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
                _read_key(frame, take)
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


def _read_key(frame: _Frame, take: Any) -> None:
    """Read ``"key" :`` of an object member."""
    tok, text = take()
    if tok is Tok.LCURLY or tok is Tok.LSQUARE:
        # QEMU parses the value first, then complains it is not a string.
        raise _fail("key is not a string in object")
    key = _scalar(tok, text)
    if not isinstance(key, str):
        raise _fail("key is not a string in object")
    colon, _ = take()
    if colon is not Tok.COLON:
        raise _fail("missing : in object pair")
    frame.key = key
