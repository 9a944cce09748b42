"""Input framing: bytes in, one decoded item per message out.

Two paths give the same result (a property the tests check on random input):

* the fast path hands every complete line, and every one-line message that
  began with ``{`` or ``[`` as soon as it is complete, to a C-speed msgspec
  decoder, so ordinary traffic never costs a Python loop per byte; with a
  *decode_block* function, the complete lines of a chunk are first tried in
  one call per piece of up to :data:`BLOCK_PIECE` bytes (no Python loop per
  line either), falling back to line by line when a call refuses them;
* anything the fast path cannot decode with certainty (a syntax error, single
  quotes, a message over several lines that no block decode took, a byte
  QEMU's lexer refuses, or what QEMU's parser treats differently from
  msgspec) goes through the exact port of QEMU's lexer and
  streamer, from the start of that message until the stream is back at a
  clean message boundary and a newline.

Cost.  A message that spans reads is held as the reads came
(:class:`~qmpevents.codec.scan.MessageScan` finds its end, looking at each
byte once), then joined and decoded once: the cost is linear in the bytes
received, whatever the read boundaries.  The exact path costs a Python loop
per byte of short tokens (long strings, numbers and the garbage error
recovery skips go at C speed, :data:`RUN_WEIGHT` bytes for one of budget);
``feed(data, budget=n)`` runs at most *n* bytes of it per call and keeps the
rest (:attr:`Framer.pending`), so an event loop can serve others between
slices (``feed(b"", budget=n)`` goes on).  A huge message, or one with a huge
string, is then parsed a step at a time too; so is a complete message of
more than *sliced_above* bytes the fast path may take
(:mod:`qmpevents.codec.sliced`: the same decision and value as the one
step, in steps of about 5 ms).  A held message the exact path
must take goes back to it as the reads came, not joined (no copy).

Answers come when QEMU's would: a message as soon as its last byte arrives
(no newline needed), a stray byte as soon as it arrives (the scan suspects it
and the exact path confirms it), even in the middle of a message.  (With a
*decode_block*, the client's case, a short line cut by a read and not ending
a message is kept for the next read's block decode: its answer comes then.)

Exact text.  With *from_message*, each message the exact path parses is built
with its exact text (its bytes from the first to the last, as the fast path
gives a line without its terminator), even over several lines (QEMU's
``pretty=on``): the exact path keeps the input of the message it is lexing,
so it holds up to three bytes per byte of an unfinished message then.

Memory.  The held beginning of a message is bounded by the message size
limit (beyond it the bytes go to the exact path, which reports QEMU's "token
size limit" error and resynchronises instead of growing); the exact path
holds at most two bytes per byte of an unfinished message
(:mod:`qmpevents.codec.lexer`).  Framers sharing a
:class:`~qmpevents.codec.budget.HeldInputBudget` also bound what they hold
together.
"""

from __future__ import annotations

import gc
import mmap
import re
from collections import deque
from collections.abc import Callable, Generator
from typing import Any, Final, Generic, TypeVar

import msgspec

from qmpevents.codec.budget import HeldInputBudget
from qmpevents.codec.errors import TOO_MANY_TOKENS_TEXT, ParseError, ParseErrorKind
from qmpevents.codec.lexer import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_NESTING,
    MAX_TOKEN_COUNT,
    Streamer,
    TokenRun,
)
from qmpevents.codec.parser import (
    STEP_TOKENS,
    STRING_SEGMENT,
    JSONParseError,
    parse_steps,
    parse_tokens,
)
from qmpevents.codec.scan import GOES_ON, MessageScan, nesting_depth
from qmpevents.codec.sliced import (
    DIGIT_MAP,
    LONG_DIGIT_RUN,
    NOT_STRUCTURAL,
    STEP,
    Refused,
    sliced_fast_decode,
    zero_exponent,
)
from qmpevents.codec.stray import PendingStray

T = TypeVar("T")

# QEMU's whitespace; bytes.strip() would also drop \x0b and \x0c, stray bytes to QEMU.
_WS = b" \t\r\n"
_BLANK_BYTES = frozenset(b" \t\r")
#: Held bytes at the end of input that still go through the exact path (bounded work).
END_EXACT_LIMIT = 64 * 1024
_MESSAGE_START = (b"{", b"[")
_ENDS = (b"}", b"]")
_DEFER_MAX = 4096
#: How many bytes of a run the lexer takes at C speed cost one byte of budget.
RUN_WEIGHT = 256
#: Budget (in bytes lexed one by one) that each message the exact path completes
#: costs: input of one-byte messages (``1,1,1,...`` after an over-limit error,
#: where QEMU answers every token) makes a message, and a reply, per byte or two.
MESSAGE_WEIGHT = 32
#: A server's framer hands out at most this many messages per feed under a
#: budget, plus budget / MESSAGE_WEIGHT (``{}{}{}...`` made 4,096 in one 8 KiB
#: read, each answered: 80 ms); the rest waits for the next feed.
FEED_MESSAGES = 64
_SHORT_RUN = 16
_ENCODE = msgspec.json.encode
#: A complete message of more bytes than this that the fast path may take is
#: decided in bounded steps (:mod:`qmpevents.codec.sliced`) under a budget.
SLICED_ABOVE = 2 * 1024 * 1024


#: The most bytes of whole lines that one *decode_block* call gets (a longer
#: line goes alone): a big read is decoded a piece at a time, and a client's
#: events share the text of their piece (:mod:`qmpevents.rawtext`), so an
#: event kept keeps at most this much of its read alive.
BLOCK_PIECE: Final = 64 * 1024

_NOT_BLANK: Final = re.compile(rb"[^ \t\r\n]")


def _solid_start(buf: bytes, pos: int, end: int) -> int:
    """Where ``buf[pos:end]`` has its first byte that is not QEMU's whitespace
    (*end* if none), without copying what follows: a line of many messages asks
    once per message.  A message is held from there: blanks before it are no
    part of its size."""
    found = _NOT_BLANK.search(buf, pos, end)
    return end if found is None else found.start()


def _structure(text: bytes) -> int:
    """How many structural bytes *text* has: each is a token, unless in a string."""
    return len(text.translate(None, NOT_STRUCTURAL))


def _quoted(text: bytes) -> bool:
    """Whether *text* may hold a string (QEMU also takes single quotes)."""
    return b'"' in text or b"'" in text


def _may_hold_a_line_of(buf: bytes, start: int, end: int, size: int) -> bool:
    """Whether ``buf[start:end]`` may hold a line of *size* bytes or more (as
    many tokens need): it has a window of half that without a newline.

    A line of *size* bytes holds a whole window of the aligned ones, so one
    ``find`` per window, which stops at the window's first newline, decides.
    """
    window = max(size // 2, 1)
    for at in range(start, end - window + 1, window):
        if buf.find(b"\n", at, at + window) < 0:
            return True
    return False


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
    path, so a server built on this answers as QEMU does.  *held_budget* is
    shared with other framers (see :mod:`qmpevents.codec.budget`).
    *from_message* instead of *from_value* also gets the message's exact
    text (see the module doc): a framer takes exactly one of the two.
    With *qemu_exact* and *sliced_above*, a complete message bigger than
    that, fed under a budget, is decided in steps of *sliced_step* bytes
    (each one costs what a slice of the exact path does); *decode_line*
    must then be a plain JSON decode (what *from_value* gets).
    With *feed_messages*, a feed under a budget hands out at most that many
    messages plus budget / :data:`MESSAGE_WEIGHT` (a server answers each: many
    tiny ones in one read were one long step); the rest waits for the next feed.
    Those a block decode gives do not count: they cost a C-speed decode each,
    and a read holds a bounded number of them.
    """

    def __init__(self, decode_line: Callable[[bytes], T],
                 from_value: Callable[[Any], T] | None = None, *,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, qemu_exact: bool = False,
                 max_nesting: int = MAX_NESTING, max_tokens: int = MAX_TOKEN_COUNT,
                 decode_block: Callable[[bytes], list[T]] | None = None,
                 held_budget: HeldInputBudget | None = None,
                 from_message: Callable[[Any, bytes], T] | None = None,
                 sliced_above: int | None = None, sliced_step: int = STEP,
                 feed_messages: int | None = None) -> None:
        if (from_value is None) == (from_message is None):
            raise TypeError("a Framer takes exactly one of from_value and from_message")
        self._decode_line = decode_line
        self._decode_block = decode_block
        self._from_value = from_value
        self._from_message = from_message
        # With from_message: what the exact path lexed of the message in progress
        # (pieces of earlier chunks), the messages it ended at the last byte fed,
        # and the text of the one being parsed in steps.
        self._raw_parts: list[bytes] = []
        self._raw_held = 0
        self._done: list[tuple[TokenRun | None, ParseError | None]] = []
        self._job_raw = b""
        self._max_nesting = max_nesting
        self._max_fast_line = max_message_size
        self._max_tokens = max_tokens
        self._qemu_exact = qemu_exact
        # Input not processed yet (a budget ran out): chunks, the first one from _head.
        self._queue: deque[bytes] = deque()
        self._queued = 0  # bytes of the chunks in the queue
        self._head = 0
        # The beginning of a message the fast path holds, as received, and its scan.
        self._parts: list[bytes] = []
        self._held = 0
        # A client's framer's count of its structural bytes ({}[]:,), and whether
        # it has a quote (then some of them may be in a string).
        self._held_structure = 0
        self._held_quoted = False
        self._scan: MessageScan | None = None
        self._deferred = False  # held without a scan yet (see _tail)
        self._held_exact_only = False  # what is held is certainly the exact path's
        self._held_lines = False  # what is held spans lines: no block decode takes it
        self._skipping = False  # the rest of a message over the limit (see _skip_on)
        self._out: list[T | ParseError] = []
        # Where the buffer being worked through has its last newline and its
        # last byte that is not a blank (-1: not looked for yet): found once per
        # buffer, not per message (a buffer of many messages and no newline was
        # quadratic).
        self._facts_of: bytes | None = None
        self._last_newline = -1
        self._last_solid = -1
        self._refused = -1
        self._block_again = -1  # where a piece the block decoder refused ends
        self._streamer = Streamer(self._emit_tokens, max_message_size=max_message_size,
                                  max_nesting=max_nesting, max_tokens=max_tokens)
        self._slow = False
        self.dropped_at_end = 0
        self._exact_left: int | None = None
        self._feed_messages = feed_messages
        #: Under a budget, the most messages one feed hands out (the rest waits).
        self._message_cap: int | None = None
        self._block_items = 0  # of this feed's messages, those block decodes gave (uncapped)
        # A huge message the exact path completed under a budget, parsed a step at a time.
        self._parse_job: Generator[None, None, Any] | None = None
        self._job_tokens = 0
        self._budget = held_budget
        self._charged = 0
        # A big complete message decided in steps (*decode_line* must then be a
        # plain JSON decode followed by *from_value*; QEMU's checks only).
        self._sliced_above = sliced_above if qemu_exact and from_message is None else None
        self._sliced_step = sliced_step
        self._sliced_held = 0  # the bytes of that message (0: none is being decided)
        self._sliced_chunks: list[bytes] = []  # the message again, if it was refused
        # The block decoder relies on msgspec's own depth limit (< 1024) and
        # does none of the qemu_exact checks.
        self._block_ok = not qemu_exact and max_nesting >= MAX_NESTING
        self._piece = min(BLOCK_PIECE, max_message_size)

    @property
    def buffered(self) -> int:
        """Bytes of a message the fast path holds while waiting for the rest of it."""
        return self._held

    @property
    def pending(self) -> int:
        """Work left because a ``budget`` ran out: bytes not processed yet, and
        the tokens of a message still being parsed."""
        return self._queued - self._head + self._job_tokens

    @property
    def held(self) -> int:
        """Memory held for unfinished input: the fast path's, the exact path's, the pending."""
        return (self._held + self._streamer.held + self.pending + self._raw_held
                + self._sliced_held)

    def feed(self, data: bytes, *, budget: int | None = None) -> list[T | ParseError]:
        """Consume *data*; return every message completed by it, in order.

        With *budget*, at most that many bytes go through the exact (byte by
        byte) path in this call; the rest of the input waits, in order, for
        the next call (``feed(b"", budget=...)`` just goes on): see
        :attr:`pending`.
        """
        out = self._out = []
        queue = self._queue
        if data:
            queue.append(data)
            self._queued += len(data)
        self._exact_left = budget
        self._block_items = 0
        self._message_cap = (None if budget is None or self._feed_messages is None
                             else self._feed_messages + budget // MESSAGE_WEIGHT)
        while queue or self._parse_job is not None:
            if self._parse_job is not None and not self._parse_on():
                break
            if not queue:
                break
            buf = queue[0]
            pos = self._process(buf, self._head)
            if pos < 0:  # the held message went back to the queue, for the exact path
                continue
            if pos < len(buf):  # the budget ran out, or a message is to be decided in steps
                self._head = pos
                if self._parse_job is None:
                    break
                continue
            queue.popleft()
            self._queued -= len(buf)
            self._head = 0
            self._facts_of = None  # not kept alive for its facts
            if self._slow and self._streamer.idle:
                # The next chunk starts afresh on the fast path.
                self._slow = False
        self._charge()
        return out

    def end(self) -> list[T | ParseError]:
        """The input ended: every message complete in what is held (an unfinished one is dropped).

        What is pending is processed first.  Then the beginning of a message the
        fast path holds goes through the exact path, as QEMU saw it; the bytes
        of an unfinished message that are left are counted in
        :attr:`dropped_at_end`.
        """
        out = self.feed(b"")
        #: Bytes of the unfinished message that the end of input cut off.
        self.dropped_at_end = 0
        if self._scan is not None and self._held > END_EXACT_LIMIT:
            # A big message the scan vouched for (no end, no stray byte): QEMU
            # drops it, and so do we, without joining or decoding what is held.
            held, self.dropped_at_end = b"", self._held
        else:
            held = b"".join(self._parts)
        self._drop_held()
        self._out = out
        stripped = held.strip(_WS)
        if not stripped or self._try_fast(stripped):
            pass  # nothing, or a whole message held for the next read's block decode
        elif len(stripped) > END_EXACT_LIMIT or _truncated(stripped):
            # The beginning of one message (the scan found no end and no stray
            # byte in it): QEMU drops it at the end too.  Measured at C speed, so
            # a half-close after 64 MiB costs no byte-by-byte pass.
            self.dropped_at_end = len(held)
        else:
            streamer = self._streamer
            done = self._done
            boundary = raw_start = 0
            for pos, byte in enumerate(held):
                streamer.feed_byte(byte)
                if done:
                    raw_start = self._completed(held, raw_start, pos + 1)
                if streamer.idle:
                    boundary = pos + 1
            self.dropped_at_end = len(held) - boundary
        self._drop_raw()
        self._streamer = Streamer(self._emit_tokens, max_message_size=self._max_fast_line,
                                  max_nesting=self._max_nesting, max_tokens=self._max_tokens)
        self._slow = False
        self._charge()
        return out

    def close(self) -> None:
        """Drop everything held and give its share of the budget back."""
        self._queue.clear()
        self._queued = 0
        self._head = 0
        self._parse_job = None
        self._job_tokens = 0
        self._job_raw = b""
        self._done.clear()
        self._sliced_held = 0
        self._sliced_chunks = []
        self._drop_held()
        self._drop_raw()
        self._streamer = Streamer(self._emit_tokens, max_message_size=self._max_fast_line,
                                  max_nesting=self._max_nesting, max_tokens=self._max_tokens)
        self._slow = False
        self._charge()

    def _process(self, buf: bytes, pos: int) -> int:
        """Work through *buf* from *pos*: where it stopped (before the end: out of budget),
        or -1 when held input went back to the head of the queue."""
        end = len(buf)
        if buf is not self._facts_of:
            self._facts_of = buf
            self._last_newline = buf.rfind(b"\n")
            self._last_solid = -1  # found by _tail if it needs it: rstrip copies
            self._refused = -1
            self._block_again = -1
        # The newline of a line the fast path refused whole: kept from one feed
        # to the next (a cap or a budget stops in a line), never tried again.
        refused = self._refused
        block = self._decode_block is not None and self._block_ok
        if (block and not self._slow and self._scan is None and not self._deferred
                and pos > refused):
            pos = self._try_block(buf, pos)
        cap = self._message_cap
        while pos < end:
            if self._parse_job is not None:
                return pos  # a message decided in steps comes first
            if cap is not None and len(self._out) - self._block_items >= cap:
                return pos  # many small messages on a line: the rest in the next step
            if self._slow:
                pos = self._run_slow(buf, pos)
                if (self._slow and pos < end) or self._parse_job is not None:
                    return pos
                continue
            if self._scan is not None or self._deferred:
                pos = self._continue_held(buf, pos)
                if pos < 0 or self._parse_job is not None:
                    return pos  # the queue's head changed, or a message is decided in steps
                if block and self._scan is None and not self._slow and not self._deferred:
                    pos = self._try_block(buf, pos)  # the lines after a message held over
                continue
            # A line refused whole holds several messages (or is the exact path's):
            # its messages are taken one by one, never the line's rest again.
            newline = (refused if pos <= refused else -1 if pos > self._last_newline
                       else buf.find(b"\n", pos))
            if newline < 0:
                pos = self._tail(buf, pos)
            elif newline != refused and self._try_fast(buf[pos:newline]):
                pos = newline + 1
                if block and pos == self._block_again and not self._slow:
                    pos = self._try_block(buf, pos)  # past the piece a block refused
            else:
                refused = self._refused = newline
                pos = _solid_start(buf, pos, newline)
                pos = self._begin(buf, pos, buf[pos:pos + 1])
        return pos

    def _try_block(self, buf: bytes, pos: int) -> int:
        """Decode the complete lines of *buf* a piece at a time (see
        :data:`BLOCK_PIECE`): where the pieces taken end (*pos* if none was)."""
        cut = self._last_newline + 1 if self._last_newline >= pos else 0
        if pos < cut:  # blanks first: a read can begin with the LF of a CRLF the last one cut
            pos = _solid_start(buf, pos, cut)
        while pos < cut:
            end = self._piece_end(buf, pos, cut)
            if not self._decoded_block(buf, pos, end):
                self._block_again = end  # this piece line by line, then pieces again
                break
            pos = end
        return pos

    def _piece_end(self, buf: bytes, pos: int, cut: int) -> int:
        """The end of the whole lines from *pos* (up to *cut*) that make one piece:
        the most that fit in :data:`BLOCK_PIECE` bytes, or one longer line alone."""
        size = self._piece
        if cut - pos <= size:
            return cut
        end = buf.rfind(b"\n", pos, pos + size) + 1
        return end if end > pos else buf.find(b"\n", pos + size) + 1

    def _decoded_block(self, buf: bytes, pos: int, end: int) -> bool:
        """Decode the whole lines ``buf[pos:end]`` in one call: whether they were taken."""
        assert self._decode_block is not None
        if end - pos > self._max_fast_line:
            return False
        if end - pos >= self._max_tokens and _may_hold_a_line_of(
                buf, pos, end, self._max_tokens):
            # QEMU's token limit, which also bounds what decoding may build
            # (``[{},{},...]``: 21 dicts per 64 bytes), is the line path's to apply.
            return False
        try:
            block = buf if pos == 0 and end == len(buf) else buf[pos:end]
            items = self._decode_block(block)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            return False
        self._out.extend(items)
        self._block_items += len(items)
        return True

    def _try_fast(self, line: bytes, depth_checked: bool = False) -> bool:
        """Decode one message on the fast path; False hands it to the exact path.

        *depth_checked*: a :class:`MessageScan` found the message within the
        nesting limit already.
        """
        stripped = line.strip(_WS)
        if not stripped:
            return True
        # QEMU counts every token's bytes plus one against the limit: a message
        # of exactly the limit's size is already too big.
        if len(stripped) >= self._max_fast_line:
            return False
        qemu_exact = self._qemu_exact
        # The checks that cost least first: a huge message of escapes is refused
        # before any pass over all of it.
        if qemu_exact and (not stripped.isascii() or (b"\\" in stripped and b"\\u" in stripped)):
            return False
        # One pass keeps the structural bytes: the counts below cost nothing then.
        structural = stripped.translate(None, NOT_STRUCTURAL)
        if (not depth_checked
                and structural.count(b"{") + structural.count(b"[") > self._max_nesting
                and nesting_depth(stripped) > self._max_nesting):
            return False
        # At most how many tokens: scalars sit between structural bytes.
        if len(stripped) >= self._max_tokens and 2 * len(structural) + 1 >= self._max_tokens:
            return False
        if qemu_exact and (LONG_DIGIT_RUN in stripped.translate(DIGIT_MAP)
                           or zero_exponent(stripped, 0, len(stripped))):
            return False
        try:
            item = self._decode_line(stripped)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            return False
        if qemu_exact and isinstance(item, dict | list):
            colons = structural.count(b":")
            # msgspec keeps the last of duplicate keys where QEMU reports an
            # error.  A dropped member takes its ':' with it, so the value
            # re-encoded has fewer ':' than the text (strings keep theirs: no
            # \\u escapes here).
            if colons and _ENCODE(item).count(b":") != colons:
                return False
        self._out.append(item)
        return True

    def _tail(self, buf: bytes, pos: int) -> int:
        """An unterminated last line: QEMU does not need the newline."""
        pos = _solid_start(buf, pos, len(buf))
        if pos == len(buf):
            return pos
        first = buf[pos:pos + 1]
        if (self._decode_block is not None and self._block_ok and first in _MESSAGE_START
                and len(buf) - pos <= min(_DEFER_MAX, self._max_fast_line - 1)
                and self._last_solid_byte(buf, pos) not in _ENDS):
            # A line of an event stream cut by the read: the next read's block
            # decode almost always takes it with the lines after it, so it is
            # held unscanned (it cannot be complete: it does not end a message).
            self._parts = [buf[pos:]]
            self._held = len(buf) - pos
            self._deferred = True
            return len(buf)
        return self._begin(buf, pos, first)

    def _last_solid_byte(self, buf: bytes, pos: int) -> bytes:
        """*buf*'s last byte that is not a blank, *pos* being one: found once per
        buffer, from *pos* (only the short rest of a read is copied to strip it)."""
        if self._last_solid < pos:
            self._last_solid = pos + len(buf[pos:].rstrip(_WS)) - 1
        return buf[self._last_solid:self._last_solid + 1]

    def _begin(self, buf: bytes, pos: int, first: bytes) -> int:
        """A message the fast path did not take whole starts at *pos*."""
        if first not in _MESSAGE_START:
            # Garbage or a bare scalar: QEMU reacts byte by byte, so do we.
            self._slow = True
            return pos
        self._scan = MessageScan(self._max_nesting)
        return self._continue_held(buf, pos)

    def _continue_held(self, buf: bytes, pos: int) -> int:
        """Scan the held message on in *buf*: where to go on (-1: see the queue's head)."""
        if self._skipping:
            return self._skip_on(buf, pos)
        cut = self._try_block_with_held(buf, pos)
        if cut:
            return cut
        if self._deferred:  # not the usual case: the held line and this read, afresh
            self._requeue_held(buf, pos, join=True)
            return -1
        assert self._scan is not None
        found = self._scan.feed(buf, pos)
        if found >= 0:
            piece = buf[pos:found + 1]
            size = self._held + len(piece)
            if size < self._max_fast_line and not (
                    self._parts and self._exact_only(piece)):
                if (not self._qemu_exact and size >= self._max_tokens
                        and not self._held_quoted and not _quoted(piece)
                        and self._held_structure + _structure(piece) >= self._max_tokens):
                    # More structural tokens alone than QEMU's limit (none of them
                    # in a string: there is none): refused as QEMU refuses it, at
                    # once, with no join of what is held.  A client need not take
                    # the rest token by token as QEMU does (a 4 MB line: 25 s;
                    # 57 MiB held over reads: a 1.3 s step, +1.5 GiB).
                    self._out.append(ParseError(ParseErrorKind.TOO_MANY_TOKENS,
                                                TOO_MANY_TOKENS_TEXT))
                    self._drop_held()
                    return found + 1
                if self._sliced_job_for(piece):
                    return found + 1
                message = b"".join([*self._parts, piece]) if self._parts else piece
                # *decode_line* takes one line (a client keeps it as the raw text):
                # a message over several lines is the exact path's, as before.
                if b"\n" not in message and self._try_fast(message, depth_checked=True):
                    self._drop_held()
                    return found + 1
            elif not self._qemu_exact and size >= self._max_fast_line:
                self._too_large_now(size)
                self._drop_held()
                return found + 1
        elif found == GOES_ON and self._held + len(buf) - pos < self._max_fast_line:
            part = buf[pos:] if pos else buf
            if self._qemu_exact and not self._held_exact_only:
                self._held_exact_only = self._exact_only(part)
            self._held_lines = self._held_lines or b"\n" in part
            if not self._qemu_exact and not self._held_quoted:
                # Counted as it comes (no pass over all of it at its end), for as
                # long as it may be refused at once (see the end found above).
                self._held_quoted = _quoted(part)
                self._held_structure += _structure(part)
            self._parts.append(part)
            self._held += len(buf) - pos
            self._charge()
            return len(buf)
        elif found == GOES_ON and not self._qemu_exact:
            self._too_large_now(self._held + len(buf) - pos)
            scan = self._scan
            self._drop_held()
            self._scan, self._skipping = scan, True
            return len(buf)
        # An error, a stray byte, or input the fast path may not take: the exact
        # path goes through the message from its start, now.
        self._slow = True
        if not self._parts:
            self._scan = None
            return pos
        self._requeue_held(buf, pos)
        return -1

    def _sliced_job_for(self, piece: bytes) -> bool:
        """Start deciding a big complete message (the held parts and *piece*) in
        steps, under a budget: whether it was started."""
        if (self._sliced_above is None or self._exact_left is None
                or self._held + len(piece) <= self._sliced_above):
            return False
        parts = [*self._parts, piece]
        self._sliced_held = self._held + len(piece)
        self._drop_held()
        self._parse_job = self._sliced_job(parts)
        self._job_tokens = 1
        return True

    def _sliced_job(self, parts: list[bytes]) -> Generator[None, None, Any]:
        """What :meth:`_try_fast` does with the joined *parts*, in bounded steps.

        The parts are copied into one buffer a step at a time (as they go, they
        are freed); a refused message goes back to the queue from that buffer,
        a step at a time too.
        """
        if any(b"\n" in part for part in parts):
            self._sliced_chunks = parts  # over several lines: the exact path's, as they came
            raise Refused
        first = parts[0]
        parts[0] = first.lstrip(_WS)
        lead = first[:len(first) - len(parts[0])]
        size = sum(map(len, parts))
        # Mapped at its size: filling it never moves it, and its pages are
        # touched (zeroed by the kernel) a step at a time.
        text = mmap.mmap(-1, size)
        try:  # closed however the job ends, the framer's close() included
            step = self._sliced_step
            at = done = 0
            for index, part in enumerate(parts):
                text[at:at + len(part)] = part
                at += len(part)
                done += len(part)
                parts[index] = b""
                if done >= step:
                    done = 0
                    yield
            parts.clear()
            return (yield from sliced_fast_decode(text, max_tokens=self._max_tokens,
                                                  step=step, leaf=step))
        except Refused:
            chunks = [lead] if lead else []
            with memoryview(text) as view:
                for start in range(0, size, step):
                    chunks.append(bytes(view[start:start + step]))
                    yield
            self._sliced_chunks = chunks
            raise
        finally:
            text.close()

    def _refused_to_exact(self) -> None:
        """The message decided in steps is the exact path's: it goes back to the
        head of the queue, before what followed it."""
        chunks = self._sliced_chunks
        self._sliced_chunks = []
        self._sliced_held = 0
        queue = self._queue
        if queue and self._head:
            queue[0] = queue[0][self._head:]
            self._queued -= self._head
            self._head = 0
        queue.extendleft(reversed(chunks))
        self._queued += sum(map(len, chunks))
        self._slow = True

    def _requeue_held(self, buf: bytes, pos: int, join: bool = False) -> None:
        """Put the held beginning of a message back at the head of the queue, before
        ``buf[pos:]`` (*buf* is the queue's head), to be processed again.

        The parts stay as they came (unless *join*: a short held line is joined to
        the read): a big message is not copied, and each part is freed once the
        exact path is past it.
        """
        queue = self._queue
        queue.popleft()
        self._queued -= len(buf)
        rest = buf[pos:] if pos else buf
        parts = [*self._parts, rest] if rest else self._parts
        if join:
            parts = [b"".join(parts)]
        queue.extendleft(reversed(parts))
        self._queued += self._held + len(rest)
        self._head = 0
        self._drop_held()

    def _exact_only(self, part: bytes) -> bool:
        """Whether the held message, with *part* after what is held, is certainly the
        exact path's (what :meth:`_try_fast` refuses first, checked a part at a
        time as they come): a big one is then not joined only to be refused."""
        if not self._qemu_exact:
            return False
        return self._held_exact_only or not part.isascii() or b"\\u" in part or (
            part[:1] == b"u" and bool(self._parts) and self._parts[-1][-1:] == b"\\")

    def _too_large_now(self, size: int) -> None:
        """A message passed the size limit with no error before (the scan saw none).

        A framer that need not answer exactly as QEMU (a client's: *qemu_exact*
        unset) says so at once, at C speed, instead of lexing the whole message
        byte by byte first, and skips the rest of it (see :meth:`_skip_on`).
        """
        self._out.append(ParseError.too_large(size, self._max_fast_line))

    def _skip_on(self, buf: bytes, pos: int) -> int:
        """Skip the rest of a message over the size limit: the scan goes on, nothing
        is held.  Past its end the fast path goes on; a stray byte in it is the
        exact path's, as garbage after QEMU's own size error is."""
        assert self._scan is not None
        found = self._scan.feed(buf, pos)
        if found == GOES_ON:
            return len(buf)
        self._drop_held()
        if found >= 0:
            return found + 1
        self._slow = True
        return pos

    def _try_block_with_held(self, buf: bytes, pos: int) -> int:
        """The held message and the complete lines after it in one block decode,
        as if the read had not cut the line (the usual case of an event stream):
        where the block ends, or 0 if refused.  Taken whole, the block held no
        stray byte and every message in it was complete in this read, so
        nothing is late."""
        if (self._decode_block is None or not self._block_ok or self._held_lines
                or not self._parts):
            # Nothing held from an earlier read (a message of a line refused
            # whole: retried per message, it was quadratic), or a message held
            # over several lines (retried per read).
            return 0
        cut = self._last_newline + 1 if self._last_newline >= pos else 0
        if not cut:
            return 0
        end = self._piece_end(buf, pos, cut)  # the rest of the read: the next pieces
        if self._held + end - pos > self._max_fast_line:
            return 0
        if self._held + buf.find(b"\n", pos, end) - pos >= self._max_tokens:
            return 0  # the held line may hold too many tokens: the scan's (and the limit's)
        try:
            # A view: the lines are copied once, by the join.
            items = self._decode_block(b"".join([*self._parts, memoryview(buf)[pos:end]]))
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            return 0
        self._out.extend(items)
        self._block_items += len(items)
        self._drop_held()
        return end

    def _drop_held(self) -> None:
        self._skipping = False
        self._parts = []
        self._held = 0
        self._held_structure = 0
        self._held_quoted = False
        self._held_exact_only = False
        self._held_lines = False
        self._scan = None
        self._deferred = False

    def _run_slow(self, buf: bytes, pos: int) -> int:
        """Feed the exact path up to a newline at a message boundary, within the budget.

        Staying on it to the end of the line keeps a long line of garbage
        linear: the fast path is not retried at every token.  Runs the lexer
        takes at C speed (see :meth:`Streamer.feed_run`) cost :data:`RUN_WEIGHT`
        times less budget per byte than the bytes it takes one by one.
        """
        streamer = self._streamer
        feed = streamer.feed_byte
        end = len(buf)
        left = self._exact_left
        budget = end - pos if left is None else left
        later = 0  # bytes to lex one by one before trying a run again
        raw_start = pos
        done = self._done  # empty unless from_message: then, messages that just ended
        out = self._out
        emitted = len(out) if left is not None else -1  # -1: no budget to charge
        while pos < end and budget > 0:
            byte = buf[pos]
            if later:
                later -= 1
            elif streamer.in_run or byte in _BLANK_BYTES:
                limit = min(end, pos + budget * RUN_WEIGHT)
                stop = (streamer.feed_run(buf, pos, limit) if streamer.in_run
                        else streamer.feed_blanks(buf, pos, limit))
                if stop - pos < _SHORT_RUN:
                    later = _SHORT_RUN  # short tokens: a run costs more than it saves
                if stop > pos:
                    budget -= 1 + (stop - pos) // RUN_WEIGHT
                    pos = stop
                    if done:  # a run ended by the size limit
                        raw_start = self._completed(buf, raw_start, pos)
                    continue
            feed(byte)
            pos += 1
            budget -= 1
            if done:
                raw_start = self._completed(buf, raw_start, pos)
            if emitted >= 0 and len(out) != emitted:
                budget -= MESSAGE_WEIGHT * (len(out) - emitted)
                emitted = len(out)
            if byte == 0x0A and streamer.idle:
                self._slow = False
                break
            if self._parse_job is not None:
                break  # a huge message to parse first, in steps
        if left is not None:
            self._exact_left = max(0, budget)
        if self._from_message is not None:
            if done:  # an error a run ended with
                raw_start = self._completed(buf, raw_start, pos)
            self._keep_raw(buf, raw_start, pos)
        self._charge()
        return pos

    def _completed(self, buf: bytes, raw_start: int, pos: int) -> int:
        """The messages the exact path ended at ``buf[pos - 1]``, built with their text.

        The lexer's input since the previous message (or error) ended holds
        only blanks and what error recovery skipped (never a bracket) before
        this message's first byte, so a message of several tokens starts at
        the first bracket there; one of a single token is that token.
        Returns where the next message's input starts in *buf*.
        """
        done = self._done
        for tokens, error in done:
            if error is not None:
                self._out.append(error)
                continue
            assert tokens is not None
            if len(tokens) == 1:
                raw = bytes(next(iter(tokens))[1])  # a big one is a bytearray or an mmap
            else:
                text = b"".join([*self._raw_parts, memoryview(buf)[raw_start:pos]])
                starts = [at for at in (text.find(b"{"), text.find(b"[")) if at >= 0]
                raw = text[min(starts, default=0):]
            self._convert(tokens, raw)
        done.clear()
        self._drop_raw()
        # The byte that ended a scalar may begin the next token ("1{").
        return pos - 1 if self._streamer.held else pos

    def _keep_raw(self, buf: bytes, raw_start: int, pos: int) -> None:
        """Keep the exact path's input of a message still being lexed (none: drop it)."""
        if self._streamer.held:
            self._raw_parts.append(buf[raw_start:pos])
            self._raw_held += pos - raw_start
        else:
            self._drop_raw()

    def _drop_raw(self) -> None:
        self._raw_parts = []
        self._raw_held = 0

    def _charge(self) -> None:
        """Keep the shared budget up to date; refuse this message if it went over."""
        budget = self._budget
        if budget is None:
            return
        now = (self._held + self._streamer.held + self._queued - self._head + self._sliced_held
               + self._raw_held)
        if budget.charge(now - self._charged):
            self._charged = now
            return
        self._charged = now
        budget.refused += 1
        error = ParseError.too_large(now, budget.limit)
        if self._streamer.held:
            self._streamer.reject(now, budget.limit)
            self._out.extend(error for _, error in self._done if error is not None)
            self._done.clear()
            self._drop_raw()
        else:
            # What follows of the message is garbage to QEMU's lexer, as after
            # its own size limit.
            self._drop_held()
            self._slow = True
            self._out.append(error)
        budget.charge(-now)
        self._charged = 0

    def _emit_tokens(self, tokens: TokenRun | None,
                     error: ParseError | PendingStray | None) -> None:
        if isinstance(error, PendingStray):
            if self._from_message is not None:
                error = error.excerpt()  # a client reports it: its beginning is enough
            elif self._exact_left is not None:
                self._parse_job = error.steps()  # its text is built in steps, as a parse
                self._job_tokens = error.steps_left * STEP_TOKENS
                return
            else:
                error = error.now()
        if self._from_message is not None:
            self._done.append((tokens, error))  # built with its text by _completed
            return
        if error is not None:
            self._out.append(error)
            return
        assert tokens is not None
        self._convert(tokens, b"")

    def _convert(self, tokens: TokenRun, raw: bytes) -> None:
        """Parse one message now, or in steps (a huge one, under a budget)."""
        if self._exact_left is not None and (len(tokens) > STEP_TOKENS
                                             or tokens.size > STRING_SEGMENT):
            self._parse_job = parse_steps(tokens)
            self._job_tokens = len(tokens)
            self._job_raw = raw
            return
        try:
            value = parse_tokens(tokens)
        except JSONParseError as exc:
            self._out.append(exc.error)
            return
        self._out.append(self._build(value, raw))

    def _build(self, value: Any, raw: bytes) -> T:
        if self._from_message is not None:
            return self._from_message(value, raw)
        from_value = self._from_value
        assert from_value is not None  # one of the two (__init__)
        return from_value(value)

    def _parse_on(self) -> bool:
        """Advance the parse of a huge message within the budget; True once it is done."""
        job = self._parse_job
        assert job is not None
        sliced = self._sliced_held > 0
        # A step costs about what a slice lexes (a sliced step too: about 5 ms).
        cost = STEP_TOKENS
        # A sliced step allocates the value's containers, which can start one of
        # the collector's passes over the whole heap, as long as a step or more:
        # they wait for the next allocation outside the step.  (Process-wide, for
        # one step of about 5 ms: an embedding program's own gc.disable() is kept.)
        collecting = sliced and gc.isenabled()
        if collecting:
            gc.disable()
        try:
            while self._exact_left is None or self._exact_left > 0:
                next(job)
                if self._exact_left is not None:
                    self._exact_left -= cost
                if not sliced:
                    self._job_tokens = max(0, self._job_tokens - STEP_TOKENS)
        except StopIteration as done:
            self._sliced_held = 0
            self._out.append(self._build(done.value, self._job_raw))
        except JSONParseError as exc:
            self._out.append(exc.error)
        except Refused:
            self._refused_to_exact()
        else:
            return False
        finally:
            if collecting:
                gc.enable()
        self._parse_job = None
        self._job_tokens = 0
        self._job_raw = b""
        self._charge()
        return True


_JSON = msgspec.json.Decoder()


def _truncated(text: bytes) -> bool:
    """Whether *text* is valid JSON cut short (msgspec's error says so)."""
    try:
        _JSON.decode(text)
    except msgspec.DecodeError as exc:
        return "truncated" in str(exc)
    except (RecursionError, UnicodeDecodeError):
        return False
    return False


def value_framer(*, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 qemu_exact: bool = True,
                 held_budget: HeldInputBudget | None = None) -> Framer[Any]:
    """A framer yielding plain JSON values, as QEMU's monitor sees its input."""
    decoder = msgspec.json.Decoder()
    return Framer(decoder.decode, _identity, max_message_size=max_message_size,
                  qemu_exact=qemu_exact, held_budget=held_budget, sliced_above=SLICED_ABOVE,
                  feed_messages=FEED_MESSAGES)


def _identity(value: Any) -> Any:
    return value
