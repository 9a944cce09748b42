"""A big message the fast path takes, checked and decoded in bounded steps.

The fast path decides a complete message in one step: QEMU-semantics checks
over all of its bytes, one msgspec decode, one re-encode for the duplicate
key check.  For 64 MiB that is about 0.45 s during which a server answers no
other monitor.  :func:`sliced_fast_decode` gives the same answer as that one
step (the same value, or the same refusal that hands the message to the
exact path) as a generator: each ``next()`` does a bounded piece of work.

* The local checks (non-ASCII, ``\\u`` escapes, 19-digit runs, ``0e``
  numbers, the structural byte counts) run a slice at a time; slices overlap
  by the longest pattern, so a token cut at a boundary is still seen.
* The value is split structurally at C speed: a regular expression finds,
  within about *leaf* bytes, the members of a big object or array that are
  complete there (and at most :data:`BATCH_DEPTH` deep), which msgspec
  decodes in one call; a member too big (or too deep) for that is split the
  same way, and a big string is decoded a slice at a time (cut between
  escapes) into a string made at its final length
  (:mod:`~qmpevents.codec.strfill`).  msgspec checks every byte of the
  members; the brackets, commas and colons between them are checked here.
* msgspec keeps the last of duplicate keys silently; the one-step path finds
  them because the value re-encoded has fewer ``:`` than the text.  The same
  count is composed here: each batch adds its re-encoding's, each big member
  its key's and its own; a key repeated across batches shows in the object's
  size.
* msgspec's depth limit is Python's recursion limit, counted from wherever it
  is called: a big (or deep) member nested ``DEEP - BATCH_DEPTH`` deep or more
  is refused (the exact path takes it, with QEMU's nesting limit) rather than
  decoded piecewise at depths the one-step decode might not reach.
"""

from __future__ import annotations

import itertools
import mmap
import re
from collections.abc import Generator
from typing import Any, Final

import msgspec

from qmpevents.codec.strfill import StringFill

#: Bytes one step checks, or decodes in one batch (about 5 ms).
STEP: Final = 512 * 1024
#: Work a member costs at least, in bytes of a step: many tiny ones (``"ab",``)
#: cost their allocation more than their bytes (900 k in 4.5 MB: 70 ms steps).
_ITEM_WORK: Final = 32
#: Members one batch decodes at most (a step's worth at :data:`_ITEM_WORK`).
BATCH_ITEMS: Final = STEP // _ITEM_WORK
#: What the message is held in: bytes, or a buffer filled a step at a time.
Buffer = bytes | bytearray | mmap.mmap
#: Nesting from which a big member is refused (see above).
DEEP: Final = 256
#: How deep the members a batch takes may be (deeper ones are split).
BATCH_DEPTH: Final = 12

# The QEMU-semantics checks, shared with the one-step fast path (framing).
# Integers of 19+ digits may lie outside int64/uint64, where QEMU switches to
# doubles; msgspec would keep them exact.  Such messages take the exact path.
# (Found with translate + find: a regular expression tries every position.)
DIGIT_MAP: Final = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
LONG_DIGIT_RUN: Final = b"0" * 19
#: ``bytes.translate(None, NOT_STRUCTURAL)`` keeps a text's ``{}[]:,`` bytes.
NOT_STRUCTURAL: Final = bytes(b for b in range(256) if b not in b"{}[]:,")
# QEMU's lexer ends a number at "0" followed by an exponent ("0e5", "-0E1"): the
# "e" is then a stray byte; msgspec accepts it.  Such messages take the exact path.
NUMBER_BYTES: Final = frozenset(
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_.")
_OVERLAP: Final = len(LONG_DIGIT_RUN) - 1
_ENCODE = msgspec.json.encode
_ANY = msgspec.json.Decoder()
_FAILURES = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)

# JSON's whitespace (\s would also take \x0b and \x0c, which msgspec refuses).
_S = rb"[ \t\r\n]*+"
_STRING = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_SCALAR = rb'[^ \t\r\n,:\[\]{}"]++'


def _value_pattern(depth: int) -> bytes:
    """A JSON value at most *depth* deep, loosely (the separators inside are
    not checked: msgspec checks what it matched), exactly for valid JSON."""
    value = _STRING + rb"|" + _SCALAR
    for _ in range(depth):
        value = (_STRING + rb"|" + _SCALAR + rb"|[\[{](?:" + _S + rb"(?:" + value + rb")"
                 + _S + rb"[:,]?+)*+" + _S + rb"[\]}]")
    return rb"(?:" + value + rb")"


_VALUE = _value_pattern(BATCH_DEPTH)
_ITEM = _S + _VALUE + _S
_MEMBER = _S + _STRING + _S + rb":" + _S + _VALUE + _S
# Small members each followed by a comma (group 1), then maybe a last one.
_ITEMS: Final = re.compile(rb"((?:" + _ITEM + rb",)*+)(?:" + _ITEM + rb")?+")
_MEMBERS: Final = re.compile(rb"((?:" + _MEMBER + rb",)*+)(?:" + _MEMBER + rb")?+")
_ONE: Final = re.compile(_ITEM)
_KEY: Final = re.compile(_S + rb"(" + _STRING + rb")" + _S + rb":" + _S)
_COLON: Final = re.compile(_S + rb":" + _S)
_BODY: Final = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+')
_BLANKS: Final = re.compile(_S)
#: The least window of a batch: a valid number or keyword is much shorter.
_LEAST_WINDOW: Final = 4096
#: The window of a batch where members may be big (a container's start, after
#: a big member): a member bigger than this there is split, and finding that out
#: costs a scan of this many bytes, not of a whole step.
_PROBE_WINDOW: Final = 64 * 1024


class Refused(Exception):
    """The one-step fast path would hand this message to the exact path."""


def sliced_fast_decode(text: Buffer, *, max_tokens: int, step: int = STEP,
                       leaf: int = STEP) -> Generator[None, None, Any]:
    """Decide *text* (one stripped message, within the size and nesting limits)
    as ``Framer._try_fast`` does for a *qemu_exact* framer (the only ones that slice),
    a bounded step per ``next()``: returns the value, or raises :class:`Refused`."""
    counts = yield from _local_checks(text, step)
    structural, colons = counts
    if len(text) >= max_tokens and 2 * structural + 1 >= max_tokens:
        raise Refused
    decoder = _Decoder(text, step, leaf)
    try:
        value = yield from decoder.message()
    except _FAILURES as exc:
        raise Refused from exc
    if isinstance(value, dict | list) and colons and decoder.colons != colons:
        raise Refused  # a duplicate key: msgspec kept the last one
    return value


def _local_checks(text: Buffer, step: int) -> Generator[None, None, tuple[int, int]]:
    """The byte-level checks, a slice per step: (structural bytes, ':' bytes)."""
    structural = colons = 0
    for start in range(0, len(text), step):
        end = start + step
        piece = text[start:end]
        back = max(0, start - _OVERLAP)
        if (not piece.isascii()
                or ((b"\\" in piece or (start and text[start - 1] == 0x5C))
                    and text.find(b"\\u", max(0, start - 1), end) >= 0)
                or LONG_DIGIT_RUN in text[back:end].translate(DIGIT_MAP)
                or zero_exponent(text, max(0, start - 1), end)):
            raise Refused
        kept = piece.translate(None, NOT_STRUCTURAL)
        structural += len(kept)
        colons += kept.count(b":")
        yield
    return structural, colons


def zero_exponent(text: Buffer, start: int, end: int) -> bool:
    """A number "0" followed by "e"/"E" starting in ``text[start:end]`` (see above)."""
    for pair in (b"0e", b"0E"):
        at = text.find(pair, start, end + 1)
        while at >= 0:
            if at == 0 or text[at - 1] not in NUMBER_BYTES:
                return True
            at = text.find(pair, at + 2, end + 1)
    return False


class _Decoder:
    """The structural split of one message; counts the ``:`` of its value re-encoded."""

    def __init__(self, text: Buffer, step: int, leaf: int) -> None:
        self.text = text
        self.step = step
        self.leaf = leaf
        self.colons = 0
        self._work = 0

    def _spent(self, size: int) -> bool:
        """Account *size* bytes of work: True when a step's worth is done."""
        self._work += size
        if self._work >= self.step:
            self._work = 0
            return True
        return False

    def _match(self, pattern: re.Pattern[bytes], pos: int, window: int) -> int:
        """Where *pattern* (which may match nothing) stops, from *pos*, within *window*."""
        match = pattern.match(self.text, pos, min(len(self.text), pos + window))
        assert match is not None
        return match.end()

    def _decode(self, opening: bytes, start: int, stop: int, closing: bytes) -> Any:
        """msgspec's value of ``opening + text[start:stop] + closing``."""
        value = _ANY.decode(opening + self.text[start:stop] + closing)
        self.colons += _ENCODE(value).count(b":")
        return value

    def message(self) -> Generator[None, None, Any]:
        """The value of the whole text."""
        end = len(self.text)
        small = _ONE.match(self.text, 0, end) if end <= self.leaf else None
        if small is not None and small.end() == end:  # (only with a small *leaf*)
            value = self._decode(b"[", 0, end, b"]")[0]
            yield
            return value
        value, pos = yield from self._big(0, 0)
        if self._match(_BLANKS, pos, end) != end:
            raise Refused  # trailing bytes: msgspec refuses them
        return value

    def _big(self, pos: int, depth: int) -> Generator[None, None, tuple[Any, int]]:
        """A value at *pos* in a container at *depth* that no batch took (too big
        or too deep for one): (value, where it ends)."""
        pos = self._match(_BLANKS, pos, len(self.text))
        first = self.text[pos:pos + 1]
        if first == b"[" or first == b"{":
            if depth + 1 + BATCH_DEPTH >= DEEP:
                raise Refused
            return (yield from self._container(pos + 1, depth + 1, first == b"{"))
        if first == b'"':
            return (yield from self._string(pos + 1))
        raise Refused  # not a value msgspec would take

    def _container(self, pos: int, depth: int,
                   is_object: bool) -> Generator[None, None, tuple[Any, int]]:
        """A big array or object, from just after its opening bracket."""
        text = self.text
        end = len(text)
        closing = 0x7D if is_object else 0x5D
        batches = _MEMBERS if is_object else _ITEMS
        opening, closer = (b"{", b"}") if is_object else (b"[", b"]")
        wide = False  # the members so far were small: batches take a whole step
        items: list[Any] = []
        members: dict[str, Any] = {}
        count = 0  # members as the text has them
        pos = self._match(_BLANKS, pos, end)
        if pos < end and text[pos] == closing:
            return (members if is_object else items), pos + 1
        item_bytes = _ITEM_WORK  # the last batch's bytes per member
        while True:
            # A member must follow: as many small ones as fit, in one decode --
            # at most about BATCH_ITEMS of them (each costs what a member is made of).
            window = max(self.leaf if wide else min(self.leaf, _PROBE_WINDOW), _LEAST_WINDOW)
            if wide:
                window = min(window, max(_LEAST_WINDOW, item_bytes * BATCH_ITEMS))
            found = batches.match(text, pos, min(end, pos + window))
            assert found is not None
            commas, stop = found.end(1), found.end()
            last = stop > commas and stop < end and text[stop] == closing
            if not last:
                stop = commas - 1  # without the comma
            if stop > pos:
                batch = self._decode(opening, pos, stop, closer)
                if is_object:
                    count += len(batch)
                    members.update(batch)
                else:
                    items.extend(batch)
                item_bytes = max(1, (stop - pos) // max(1, len(batch)))
                if self._spent(max(stop - pos, _ITEM_WORK * len(batch))):
                    yield
                pos = stop + (not last)
                wide = True
                if not last:
                    continue
            else:
                # Not small: a key and a big value, or a big value.
                if is_object:
                    key, pos = yield from self._key(pos)
                    value, pos = yield from self._big(pos, depth)
                    count += 1
                    members[key] = value
                else:
                    value, pos = yield from self._big(pos, depth)
                    items.append(value)
                pos = self._match(_BLANKS, pos, end)
                wide = False
            byte = text[pos] if pos < end else -1
            if byte == closing:
                if len(members) != count:
                    raise Refused  # a key repeated in another batch: msgspec kept the last
                return (members if is_object else items), pos + 1
            if byte != 0x2C:
                raise Refused
            pos += 1

    def _key(self, pos: int) -> Generator[None, None, tuple[str, int]]:
        """A member's key and its colon, from *pos*: (the key, where its value starts).

        A key that fits the probe window is matched and decoded at once; a
        bigger one (a peer's MiBs-long key: one match, copy and decode of it
        was a step of 170 ms for 40 MiB) is a big string, decoded in steps,
        and so is the count of its colons."""
        text = self.text
        end = len(text)
        found = _KEY.match(text, pos, min(end, pos + _PROBE_WINDOW))
        if found is not None:
            key = _ANY.decode(found.group(1))
            if not isinstance(key, str):
                raise Refused
            self.colons += 1 + key.count(":")
            return key, found.end()
        pos = self._match(_BLANKS, pos, end)
        if text[pos:pos + 1] != b'"':
            raise Refused
        key, pos = yield from self._string(pos + 1)
        colon = _COLON.match(text, pos, min(end, pos + _LEAST_WINDOW))
        if colon is None:
            raise Refused
        colons = 1
        for start in range(0, len(key), self.step):
            colons += key.count(":", start, start + self.step)
            if self._spent(self.step):
                yield
        self.colons += colons
        return key, colon.end()

    def _string(self, pos: int) -> Generator[None, None, tuple[str, int]]:
        """A big string, from just after its opening quote, a slice at a time.

        A first pass finds its end and its length (the text is ASCII with no
        ``\\u`` escape: each escape is two bytes for one character), a second
        decodes each slice into a string made at that length
        (:class:`~qmpevents.codec.strfill.StringFill`): no step copies what the
        steps before it decoded.
        """
        text = self.text
        end = len(text)
        cuts = [pos]
        length = 0
        while True:
            stop = self._match(_BODY, cuts[-1], self.step)
            body = text[cuts[-1]:stop]
            length += len(body) - body.count(b"\\") + body.count(b"\\\\")
            del body
            if stop == cuts[-1] and not (stop < end and text[stop] == 0x22):
                raise Refused  # not terminated
            cuts.append(stop)
            if stop < end and text[stop] == 0x22:
                break
            yield
        fill = StringFill(length, 0x7F)
        for start, stop in itertools.pairwise(cuts):
            if stop > start:
                part = _ANY.decode(b'"' + text[start:stop] + b'"')
                if not isinstance(part, str):
                    raise Refused
                self.colons += part.count(":")
                try:
                    fill.add(part)
                except ValueError as exc:  # not the escapes counted: msgspec took others
                    raise Refused from exc
                del part
                yield
        try:
            return fill.result(), cuts[-1] + 1
        except ValueError as exc:
            raise Refused from exc
