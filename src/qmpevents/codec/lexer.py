"""QEMU's JSON lexer and message streamer, byte for byte.

This is the exact (slow) path of input framing.  It reproduces
``qobject/json-lexer.c`` and ``json-streamer.c`` of QEMU 7.2: which bytes
end a token, which bytes are an error, how the lexer recovers after one, and
when a run of tokens becomes a message (brackets balanced, or a scalar at top
level).  The limits and their error texts are QEMU's too.

It costs a Python loop per byte, so :mod:`qmpevents.codec.framing` only sends
it what the C-speed fast path cannot decode on its own, in slices.  Runs of
bytes that leave the lexer in its state (the body of a string, digits, a
keyword's letters, blanks, what error recovery skips) are taken at C speed by
:meth:`Streamer.feed_run`, with the same result as byte by byte (size limit
included): a huge string token, or the rest of a message over the size limit,
costs no Python loop per byte.

Memory.  QEMU keeps a queue of token objects per unfinished message; here the
tokens of an unfinished message are one ``bytearray``: each token's text
followed by one byte giving its type (a token's text never holds a byte below
0x20: those are lexical errors), except that a big token's text is kept
aside as it is, not copied into the run (a string token of over a MiB goes on
in a mapping that grows in place: :mod:`~qmpevents.codec.gather`, so that no
step copies all of it).  So an unfinished message costs at
most two bytes of memory per input byte, whatever its tokens
(:attr:`Streamer.held`), and the bytes go back to the allocator when it ends.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Callable, Iterator
from enum import IntEnum

from qmpevents.codec.errors import (
    TOO_DEEP_TEXT,
    TOO_MANY_TOKENS_TEXT,
    ParseError,
    ParseErrorKind,
)
from qmpevents.codec.gather import GATHERING, Gathering
from qmpevents.codec.stray import STRAY_STEP, PendingStray, stray_error

MAX_NESTING = 1024
MAX_TOKEN_COUNT = 2 * 1024 * 1024
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024


class Tok(IntEnum):
    """Token types, as QEMU's ``JSONTokenType``."""

    ERROR = 0
    LCURLY = 1
    RCURLY = 2
    LSQUARE = 3
    RSQUARE = 4
    COLON = 5
    COMMA = 6
    INTEGER = 7
    FLOAT = 8
    KEYWORD = 9
    STRING = 10


class _S(IntEnum):
    """Lexer states."""

    START = 0
    RECOVERY = 1
    DQ_STRING = 2
    DQ_ESCAPE = 3
    SQ_STRING = 4
    SQ_ESCAPE = 5
    ZERO = 6
    DIGITS = 7
    SIGN = 8
    MANTISSA = 9
    MANTISSA_DIGITS = 10
    EXP_E = 11
    EXP_SIGN = 12
    EXP_DIGITS = 13
    KEYWORD = 14


_STRUCTURAL = {ord("{"): Tok.LCURLY, ord("}"): Tok.RCURLY, ord("["): Tok.LSQUARE,
               ord("]"): Tok.RSQUARE, ord(":"): Tok.COLON, ord(","): Tok.COMMA}
_WHITESPACE = frozenset(b" \t\r\n")
_DIGITS = frozenset(b"0123456789")
_LOWER = frozenset(b"abcdefghijklmnopqrstuvwxyz")
# Bytes that end error recovery (and are then lexed again from START).
_RESYNC = frozenset([*range(0x20), 0xFE, 0xFF, *b"[]{}:,"]) - {ord("\t")}

_TOKS = tuple(Tok)
_TOKEN_RE = re.compile(rb"([^\x00-\x1f]*)([\x00-\x1f])")
#: A token at least this long is indexed, so that reading it back costs no scan,
#: and handed over as it was gathered (a ``bytearray``), so that ending it costs no copy.
BIG_TOKEN = 4096
#: A string token at least this long goes on in a :class:`~qmpevents.codec.gather.Gathering`
#: (its bytes are never copied in one go), handed over as an ``mmap``.
GATHER_ABOVE = 1024 * 1024
#: A token's text: ``bytes``, the ``bytearray`` a big token was gathered in, or
#: the ``mmap`` of a huge string token (see :data:`GATHER_ABOVE`).
TokenText = bytes | bytearray | mmap.mmap

# Runs that keep the lexer in its state (see Streamer.feed_run).
_DQ_BYTE = rb"[\x20\x21\x23-\x5b\x5d-\xfd]"
_SQ_BYTE = rb"[\x20-\x26\x28-\x5b\x5d-\xfd]"
_ESCAPED = rb"\\[\x20-\xfd]"
_RECOVERY_BYTES = bytes(b for b in range(256) if b not in _RESYNC)
_RUNS: dict[_S, re.Pattern[bytes]] = {
    _S.DQ_STRING: re.compile(_DQ_BYTE + rb"*+(?:" + _ESCAPED + _DQ_BYTE + rb"*+)*+"),
    _S.SQ_STRING: re.compile(_SQ_BYTE + rb"*+(?:" + _ESCAPED + _SQ_BYTE + rb"*+)*+"),
    _S.DIGITS: re.compile(rb"[0-9]*+"),
    _S.MANTISSA_DIGITS: re.compile(rb"[0-9]*+"),
    _S.EXP_DIGITS: re.compile(rb"[0-9]*+"),
    _S.KEYWORD: re.compile(rb"[a-z]*+"),
    _S.RECOVERY: re.compile(b"[" + re.escape(_RECOVERY_BYTES) + b"]*+"),
}
_RUN_STATES = frozenset(_RUNS)
_STRING_STATES = frozenset((_S.DQ_STRING, _S.SQ_STRING))
# Blanks between tokens, but not a newline: the framer looks at those.
_BLANKS = re.compile(rb"[ \t\r]*+")


class TokenRun:
    """The tokens of one complete message, stored compactly (see the module doc).

    A token of :data:`BIG_TOKEN` bytes or more is kept aside, as it came: only
    its type byte stands in the run, so it is neither copied into the run nor
    scanned again to be read back.
    """

    __slots__ = ("_big", "_raw", "count")

    def __init__(self, raw: bytearray, count: int,
                 big: list[tuple[int, TokenText]] | None = None) -> None:
        self._raw = raw
        self.count = count
        self._big = big or []  # (offset of its type byte in raw, text) of each big token

    @property
    def size(self) -> int:
        """Bytes of the tokens' text (what the parser will read)."""
        return len(self._raw) - self.count + sum(len(text) for _at, text in self._big)

    def __iter__(self) -> Iterator[tuple[Tok, TokenText]]:
        toks = _TOKS
        raw = self._raw
        pos = 0
        for at, text in self._big:
            for match in _TOKEN_RE.finditer(raw, pos, at):
                yield toks[match[2][0]], match[1]
            yield toks[raw[at]], text
            pos = at + 1
        for match in _TOKEN_RE.finditer(raw, pos):
            yield toks[match[2][0]], match[1]

    def __len__(self) -> int:
        return self.count


#: Callback receiving one message: (tokens, None) or (None, error); a stray byte's
#: error after a huge token is a :class:`~qmpevents.codec.stray.PendingStray`.
Emit = Callable[[TokenRun | None, ParseError | PendingStray | None], None]


class Streamer:
    """Bytes in, complete token runs (or QEMU error texts) out, via *emit*."""

    def __init__(self, emit: Emit, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 max_nesting: int = MAX_NESTING, max_tokens: int = MAX_TOKEN_COUNT) -> None:
        self._emit = emit
        self._max_size = max_message_size
        self._max_nesting = max_nesting
        self._max_tokens = max_tokens
        self._state = _S.START
        self._token = bytearray()
        # A huge string token's bytes so far (the token's later bytes follow in
        # _token), and what the size limit leaves of _token then.
        self._gathered: Gathering | None = None
        self._room = max_message_size
        self._raw = bytearray()  # the unfinished message's tokens: text + type byte each
        self._count = 0
        self._token_size = 0
        self._braces = 0
        self._brackets = 0
        self._big: list[tuple[int, TokenText]] = []  # see TokenRun
        self._big_size = 0

    @property
    def idle(self) -> bool:
        """No partial token and no partial message: a clean message boundary."""
        return self._state is _S.START and not self._count

    @property
    def held(self) -> int:
        """Bytes held for the unfinished message (its tokens and the partial one)."""
        return len(self._raw) + self._big_size + len(self._token) + self._gathered_size()

    def _gathered_size(self) -> int:
        return 0 if self._gathered is None else len(self._gathered)

    def _drop_token(self) -> None:
        self._token = bytearray()  # give the memory back, not just the length
        self._gathered = None
        self._room = self._max_size

    def reject(self, size: int, limit: int) -> None:
        """Refuse the unfinished message as too large (a budget ran out), as QEMU
        does with an oversized token: report it and lex what follows afresh."""
        self._drop_token()
        self._state = _S.START
        self._deliver(None, ParseError.too_large(size, limit))

    @property
    def in_run(self) -> bool:
        """Whether :meth:`feed_run` may take bytes in the current state (blanks
        between tokens aside: :meth:`feed_blanks`)."""
        return self._state in _RUN_STATES

    def feed_blanks(self, data: bytes, pos: int, end: int) -> int:
        """Skip the blanks (not newlines) at *pos* between tokens: where they end."""
        if self._state is not _S.START:
            return pos
        match = _BLANKS.match(data, pos, end)
        assert match is not None
        return match.end()

    def feed_run(self, data: bytes, pos: int, end: int) -> int:
        """Lex ``data[pos:end]`` as far as it keeps the current state, at C speed:
        where it stopped (*pos* if the state has no such run).

        The same as :meth:`feed_byte` for each of those bytes: they join the
        token, and the byte that takes a token over the size limit is the last
        one taken (the token is refused there, as byte by byte).
        """
        pattern = _RUNS.get(self._state)
        if pattern is None:
            return pos
        if self._state is _S.RECOVERY:
            match = pattern.match(data, pos, end)
            assert match is not None
            return match.end()
        token = self._token
        room = self._room + 1 - len(token)  # the byte after these is over the limit
        match = pattern.match(data, pos, min(end, pos + room))
        assert match is not None
        stop = match.end()
        if stop > pos:
            gathered = self._gathered
            if (gathered is None and GATHERING and len(token) + stop - pos >= GATHER_ABOVE
                    and self._state in _STRING_STATES):
                gathered = self._gathered = Gathering()
            if gathered is None:
                token += memoryview(data)[pos:stop]
            else:
                if token:
                    gathered.extend(token)
                    token.clear()
                gathered.extend(memoryview(data)[pos:stop])
                self._room = self._max_size - len(gathered)
            if len(token) > self._room:
                self._oversized()
        return stop

    def feed_byte(self, byte: int) -> None:
        """Lex one byte (QEMU's ``json_lexer_feed_char``)."""
        while True:
            state = self._state
            if state is _S.START:
                if byte in _WHITESPACE:
                    return
                tok = _STRUCTURAL.get(byte)
                if tok is not None:
                    self._token.append(byte)
                    self._finish(tok)
                    return
                nxt = self._start_state(byte)
                self._token.append(byte)
                if nxt is None:
                    self._error()
                else:
                    self._state = nxt
                break
            if state is _S.RECOVERY:
                if byte in _RESYNC:
                    self._state = _S.START
                    continue  # look-ahead: lex this byte again from START
                return
            if state is _S.DQ_STRING or state is _S.SQ_STRING:
                self._token.append(byte)
                quote = 0x22 if state is _S.DQ_STRING else 0x27
                if byte == quote:
                    self._finish(Tok.STRING)
                elif byte == 0x5C:
                    self._state = _S.DQ_ESCAPE if state is _S.DQ_STRING else _S.SQ_ESCAPE
                elif not 0x20 <= byte <= 0xFD:
                    self._error()
                break
            if state is _S.DQ_ESCAPE or state is _S.SQ_ESCAPE:
                self._token.append(byte)
                if 0x20 <= byte <= 0xFD:
                    self._state = _S.DQ_STRING if state is _S.DQ_ESCAPE else _S.SQ_STRING
                else:
                    self._error()
                break
            nxt, terminal = self._number_or_keyword(state, byte)
            if nxt is not None:
                self._token.append(byte)
                self._state = nxt
                break
            if terminal is not None:
                self._finish(terminal)
                continue  # look-ahead: the byte starts the next token
            self._token.append(byte)
            self._error()
            break
        if len(self._token) > self._room:
            self._oversized()

    def _oversized(self) -> None:
        """QEMU hands a token over the size limit to the streamer, which rejects it
        (its size check comes first), then lexes on from the start state."""
        size = self._token_size + len(self._token) + self._gathered_size() + 1
        self._drop_token()
        self._state = _S.START
        self._deliver(None, ParseError.too_large(size, self._max_size))

    def _start_state(self, byte: int) -> _S | None:
        if byte == 0x22:
            return _S.DQ_STRING
        if byte == 0x27:
            return _S.SQ_STRING
        if byte == 0x30:
            return _S.ZERO
        if byte in _DIGITS:
            return _S.DIGITS
        if byte == 0x2D:
            return _S.SIGN
        if byte in _LOWER:
            return _S.KEYWORD
        return None

    @staticmethod
    def _number_or_keyword(state: _S, byte: int) -> tuple[_S | None, Tok | None]:
        """(next state, None) to go on, (None, token) to end a token, (None, None): error."""
        digit = byte in _DIGITS
        if state is _S.ZERO:
            if byte == 0x2E:
                return _S.MANTISSA, None
            return None, (None if digit else Tok.INTEGER)
        if state is _S.DIGITS:
            if digit:
                return _S.DIGITS, None
            if byte in b"eE":
                return _S.EXP_E, None
            if byte == 0x2E:
                return _S.MANTISSA, None
            return None, Tok.INTEGER
        if state is _S.SIGN:
            if byte == 0x30:
                return _S.ZERO, None
            return (_S.DIGITS, None) if digit else (None, None)
        if state is _S.MANTISSA:
            return (_S.MANTISSA_DIGITS, None) if digit else (None, None)
        if state is _S.MANTISSA_DIGITS:
            if digit:
                return _S.MANTISSA_DIGITS, None
            if byte in b"eE":
                return _S.EXP_E, None
            return None, Tok.FLOAT
        if state is _S.EXP_E:
            if byte in b"+-":
                return _S.EXP_SIGN, None
            return (_S.EXP_DIGITS, None) if digit else (None, None)
        if state is _S.EXP_SIGN:
            return (_S.EXP_DIGITS, None) if digit else (None, None)
        if state is _S.EXP_DIGITS:
            return (_S.EXP_DIGITS, None) if digit else (None, Tok.FLOAT)
        # KEYWORD
        return (_S.KEYWORD, None) if byte in _LOWER else (None, Tok.KEYWORD)

    def _finish(self, tok: Tok) -> None:
        text = self._take_text()
        self._state = _S.START
        self._process(tok, text)

    def _take_text(self) -> TokenText:
        """The token's bytes; a big one's are handed over, not copied (a copy of a
        30 MiB string token was one step of up to 84 ms: 30 MiB written to memory
        never touched)."""
        if self._gathered is not None:
            return self._take_gathered()
        if len(self._token) >= BIG_TOKEN:
            text, self._token = self._token, bytearray()
            return text
        copied = bytes(self._token)
        self._token.clear()
        return copied

    def _take_gathered(self) -> mmap.mmap:
        """The huge token's bytes (its last ones with them), as one ``mmap``."""
        gathered = self._gathered
        assert gathered is not None
        if self._token:
            gathered.extend(self._token)
        self._drop_token()
        return gathered.done()

    def _error(self) -> None:
        """QEMU's stray byte error: its text holds the token so far, whose bytes are
        handed over, not copied; a huge one's text is built later, in steps."""
        text = self._take_text()
        self._state = _S.RECOVERY
        self._deliver(None, PendingStray(text) if len(text) >= STRAY_STEP else stray_error(text))

    def _process(self, tok: Tok, text: TokenText) -> None:
        """QEMU's ``json_message_process_token``."""
        if tok is Tok.LCURLY:
            self._braces += 1
        elif tok is Tok.RCURLY:
            self._braces -= 1
        elif tok is Tok.LSQUARE:
            self._brackets += 1
        elif tok is Tok.RSQUARE:
            self._brackets -= 1
        size = self._token_size + len(text) + 1
        if size > self._max_size:
            self._deliver(None, ParseError.too_large(size, self._max_size))
            return
        if self._count + 1 > self._max_tokens:
            self._deliver(None, ParseError(ParseErrorKind.TOO_MANY_TOKENS, TOO_MANY_TOKENS_TEXT))
            return
        if self._braces + self._brackets > self._max_nesting:
            self._deliver(None, ParseError(ParseErrorKind.TOO_DEEP, TOO_DEEP_TEXT))
            return
        raw = self._raw
        if len(text) >= BIG_TOKEN:
            self._big.append((len(raw), text))
            self._big_size += len(text)
        else:
            raw += text
        raw.append(tok)
        self._count += 1
        self._token_size += len(text)
        if (self._braces > 0 or self._brackets > 0) and self._braces >= 0 \
                and self._brackets >= 0:
            return
        self._deliver(TokenRun(raw, self._count, self._big), None)

    def _deliver(self, tokens: TokenRun | None, error: ParseError | PendingStray | None) -> None:
        self._raw = bytearray()
        self._big = []
        self._big_size = 0
        self._count = 0
        self._token_size = 0
        self._braces = 0
        self._brackets = 0
        self._emit(tokens, error)
