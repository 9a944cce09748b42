"""Where an unfinished message ends, found at C speed and chunk by chunk.

The framer holds a message that began with ``{`` or ``[`` until it is
complete.  QEMU's streamer says when: it counts braces and brackets (apart,
outside strings) and delivers the message at the token that brings both to
zero or either below it.  :class:`MessageScan` keeps that count across
chunks, so each byte of a held message is looked at once, whatever the
chunk boundaries -- never the whole message again at every read.

It also watches for what QEMU answers at once, before a message ends: a
byte its lexer refuses, or nesting deeper than the limit.  It reports
:data:`SUSPECT` then, and the framer runs the exact lexer from the start of
the message (which says precisely what QEMU says).  The check is
conservative: it may suspect a valid input (the exact path then decodes it,
slowly but correctly), it does not miss a stray byte.

The work is regular expressions, ``bytes`` methods and ``itertools`` over
each chunk: the interpreter steps a few times per chunk, never once per
bracket.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from itertools import accumulate
from operator import add
from typing import Final

# QEMU's strings: bytes 0x20..0xFD, backslash escapes any byte of that range.
_DQ = rb'"[\x20\x21\x23-\x5b\x5d-\xfd]*+(?:\\[\x20-\xfd][\x20\x21\x23-\x5b\x5d-\xfd]*+)*+"'
_SQ = rb"'[\x20-\x26\x28-\x5b\x5d-\xfd]*+(?:\\[\x20-\xfd][\x20-\x26\x28-\x5b\x5d-\xfd]*+)*+'"
_STRING = _DQ + rb"|" + _SQ
# A number or keyword, only when the byte after it ends it without a lexical
# error (at the end of the data it may go on: that is an unfinished token).
# QEMU's lexer takes no exponent right after a leading 0 (``0e1`` is 0 then the
# keyword e1, ``0E1`` a stray 'E' answered at once): such a run is the exact path's.
_NUMBER = (rb"-?+(?:0(?:\.[0-9]++(?:[eE][+-]?+[0-9]++)?+)?+"
           rb"|[1-9][0-9]*+(?:\.[0-9]++)?+(?:[eE][+-]?+[0-9]++)?+)(?=[^0-9.eE])")
_KEYWORD = rb"[a-z]++(?=[^a-z])"
#: A run of tokens QEMU's lexer takes without error (whitespace included).
_RUN: Final = re.compile(rb"(?:[ \t\r\n]++|[{}\[\]:,]|" + _STRING + rb"|" + _NUMBER + rb"|"
                         + _KEYWORD + rb")*+")
_STRINGS: Final = re.compile(_STRING)
_PAIRS: Final = re.compile(rb"\{\}|\[\]")
# What may follow, up to the end of the data, as the beginning of one token.
_UNFINISHED_SCALAR: Final = re.compile(
    rb"-|-?0(?:\.(?:[0-9]+(?:[eE][+-]?[0-9]*)?)?)?"
    rb"|-?[1-9][0-9]*(?:\.(?:[0-9]+(?:[eE][+-]?[0-9]*)?)?|[eE][+-]?[0-9]*)?|[a-z]+")
_DQ_BODY: Final = re.compile(rb"[\x20\x21\x23-\x5b\x5d-\xfd]*+(?:\\[\x20-\xfd]"
                             rb"[\x20\x21\x23-\x5b\x5d-\xfd]*+)*+")
_SQ_BODY: Final = re.compile(rb"[\x20-\x26\x28-\x5b\x5d-\xfd]*+(?:\\[\x20-\xfd]"
                             rb"[\x20-\x26\x28-\x5b\x5d-\xfd]*+)*+")
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"{}[]")
_MAX_CARRY = 64  # an unfinished number or keyword longer than this is not JSON a peer means

#: The first window of a line (:meth:`MessageScan.feed`): about a small message.
_FIRST_WINDOW = 256
#: :meth:`MessageScan.feed` results other than an end position.
GOES_ON: Final = -1
SUSPECT: Final = -2


def _end_of(pattern: re.Pattern[bytes], data: bytes, pos: int, end: int | None = None) -> int:
    """Where *pattern* (which also matches nothing) stops matching from *pos*."""
    match = pattern.match(data, pos) if end is None else pattern.match(data, pos, end)
    assert match is not None
    return match.end()


class MessageScan:
    """QEMU's brace/bracket count of one message, fed chunk by chunk.

    Start it at the message's first byte (``{`` or ``[``, maybe after
    whitespace; anything else is :data:`SUSPECT`).  :meth:`feed` returns the
    index in the chunk of the byte that ends the message, :data:`GOES_ON`, or
    :data:`SUSPECT`.
    """

    __slots__ = ("_braces", "_brackets", "_carry", "_max_nesting", "_quote", "_started")

    def __init__(self, max_nesting: int) -> None:
        self._max_nesting = max_nesting
        self._braces = 0
        self._brackets = 0
        self._started = False
        self._quote = 0  # inside a string: its quote byte
        self._carry = b""  # an unfinished token's bytes from the previous chunk

    def feed(self, chunk: bytes, start: int = 0) -> int:
        """Scan ``chunk[start:]``: where the message ends, or GOES_ON / SUSPECT."""
        carry = self._carry
        if carry:
            data = carry + chunk[start:]
            shift = start - len(carry)
            pos = 0
        else:
            data, shift, pos = chunk, 0, start
        self._carry = b""
        end = len(data)
        if self._quote:
            body = _DQ_BODY if self._quote == 0x22 else _SQ_BODY
            pos = _end_of(body, data, pos)
            if pos == end:
                return GOES_ON
            byte = data[pos]
            if byte == 0x5C and pos == end - 1:  # an escape cut by the chunk boundary
                self._carry = b"\\"
                return GOES_ON
            if byte != self._quote:
                return SUSPECT
            self._quote = 0
            pos += 1
        # Line by line: a message usually ends with its line, and nothing
        # beyond its end is looked at.  (A line ends outside any string: a raw
        # newline inside one is a stray byte.)  A long line is taken in windows
        # that double, so that many messages on one line (``{}{}{}...``) cost
        # each its own length, not the rest of the line's: a token the window
        # cuts is not taken (a string needs its quote, a number or keyword the
        # byte after it), and the next window starts with it.
        size = _FIRST_WINDOW
        while True:
            newline = data.find(b"\n", pos, pos + size)
            if newline >= 0:
                window, cut = newline + 1, False
            else:
                window = min(end, pos + size)
                cut = window < end
            size *= 2
            stop = _end_of(_RUN, data, pos, window)
            found = self._count(data, pos, stop)
            if found >= 0:
                return found + shift
            if found == SUSPECT:
                return SUSPECT
            if stop == end:
                return GOES_ON
            if cut:
                pos = stop
                continue
            if stop < window:
                break
            pos = window
        if window < end:
            return SUSPECT
        byte = data[stop]
        if byte == 0x22 or byte == 0x27:  # a string that goes on past this chunk
            body = _DQ_BODY if byte == 0x22 else _SQ_BODY
            after = _end_of(body, data, stop + 1)
            if after == end:
                self._quote = byte
                return GOES_ON
            if after == end - 1 and data[after] == 0x5C:
                self._quote = byte
                self._carry = b"\\"
                return GOES_ON
            return SUSPECT
        if end - stop <= _MAX_CARRY and _UNFINISHED_SCALAR.fullmatch(data, stop):
            self._carry = data[stop:]
            return GOES_ON
        return SUSPECT

    def _count(self, data: bytes, pos: int, stop: int) -> int:
        """Count the brackets of ``data[pos:stop]`` (valid tokens): an end, GOES_ON or SUSPECT."""
        if not self._started:
            # The message's opening bracket, after blanks: from there on, an end
            # is a count coming back to zero (or below).
            while pos < stop and data[pos] in b" \t\r\n":
                pos += 1
            if pos == stop:
                return GOES_ON
            if data[pos] == 0x7B:
                self._braces = 1
            elif data[pos] == 0x5B:
                self._brackets = 1
            else:
                return SUSPECT  # the caller starts a scan at a message's '{' or '['
            self._started = True
            pos += 1
        if pos == stop:
            return GOES_ON
        text = data[pos:stop]
        quoted = b'"' in text or b"'" in text
        brackets = (_STRINGS.sub(b"", text) if quoted else text).translate(None, _NOT_BRACKETS)
        if not brackets:
            return GOES_ON
        # Removing an innermost pair moves no count across an end (both sides of
        # the pair are at a count the message had already passed without ending)
        # and lowers the deepest nesting by at most one: the reduced brackets,
        # when far fewer, say whether the message ends in this window.  At the
        # nesting limit that bound may say SUSPECT where the full count would
        # not: the exact path decides then, correctly, only slower.
        reduced = _PAIRS.sub(b"", brackets)
        if 2 * len(reduced) <= len(brackets):
            braces, square, depth, ends = self._runs(reduced)
            if not ends:
                if max(depth) + 1 > self._max_nesting:
                    return SUSPECT  # maybe too deep: let the exact path say
                self._braces, self._brackets = braces[-1], square[-1]
                return GOES_ON
        braces, square, depth, ends = self._runs(brackets)
        last = min(ends) if ends else len(depth) - 1
        if max(depth[:last + 1]) > self._max_nesting:
            return SUSPECT  # too deep: QEMU answers at once, let the exact path say
        if not ends:
            self._braces, self._brackets = braces[-1], square[-1]
            return GOES_ON
        return pos + _bracket_offset(_STRINGS.sub(_blanked, text) if quoted else text, last)

    def _runs(self, brackets: bytes) -> tuple[list[int], list[int], list[int], list[int]]:
        """The brace, bracket and total counts after each of *brackets* (the
        current ones first), and where an end is in them, at C speed: the
        interpreter stepping once per bracket made a read of ``[[[...]]]``
        messages a 100 ms step."""
        braces = list(accumulate(map(_BRACE_STEP.__getitem__, brackets), initial=self._braces))
        square = list(accumulate(map(_SQUARE_STEP.__getitem__, brackets), initial=self._brackets))
        depth = list(map(add, braces, square))
        ends = [run.index(value) for run, value in ((braces, -1), (square, -1), (depth, 0))
                if value in run]  # steps of one: a count goes below zero through -1
        return braces, square, depth, ends


def _blanked(string: re.Match[bytes]) -> bytes:
    """A string's stand-in of the same length, with no bracket in it."""
    return b"'" * len(string[0])


def _bracket_offset(text: bytes, number: int) -> int:
    """Where in *text* (strings blanked) its *number*-th bracket is (counting from 1).

    A binary search over prefixes, each counted at C speed: log2(len) passes.
    """
    def brackets_before(end: int) -> int:
        return len(text[:end].translate(None, _NOT_BRACKETS))

    return bisect_left(range(len(text) + 1), number, key=brackets_before) - 1


_BRACE_STEP: Final = [0] * 256
_BRACE_STEP[0x7B], _BRACE_STEP[0x7D] = 1, -1
_SQUARE_STEP: Final = [0] * 256
_SQUARE_STEP[0x5B], _SQUARE_STEP[0x5D] = 1, -1


_DELTA: Final = [0] * 256
_DELTA[0x7B] = _DELTA[0x5B] = 1
_DELTA[0x7D] = _DELTA[0x5D] = -1


def nesting_depth(text: bytes) -> int:
    """The deepest nesting of brackets in *text*, strings aside (a C-speed pass).

    What QEMU's limit applies to; a message with thousands of brackets at
    depth 3 is at depth 3, however many brackets it counts.
    """
    brackets = _STRINGS.sub(b"", text).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DELTA.__getitem__, brackets), initial=0))
