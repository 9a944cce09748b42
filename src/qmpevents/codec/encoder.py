"""Output exactly as QEMU writes it (``qobject/qjson.c``, compact mode).

Byte-exact output matters because users diff our simulator's lines against
real QEMU's.  Three QEMU habits are reproduced:

* dictionary keys come out in QDict's hash-bucket order, not insertion order
  (that is why QEMU writes ``{"timestamp": ..., "event": ...}``);
* output is pure ASCII: everything outside 0x20-0x7E is a ``\\uXXXX`` escape
  with upper-case hex, astral characters as surrogate pairs;
* doubles are printed with ``%.17g``, so ``1.0`` becomes ``1``.

A monitor with ``pretty=on`` gets the same text laid out by
:func:`pretty_wire` (:class:`PrettyLayout` for text fed in pieces): one member
per line, four spaces per level, and every newline written as CRLF (QEMU's
``monitor_puts`` turns each ``\n`` into ``\r\n``); an empty object is ``{``,
CRLF, the enclosing indent, ``}``.

A peer's value echoed back can be tens of MiB: strings are escaped at C speed,
and :class:`MessageSteps` produces a message in bounded steps (a few ms each)
for a server that must serve its other peers meanwhile.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from functools import lru_cache
from json.encoder import encode_basestring_ascii
from typing import Any

QDICT_BUCKETS = 512

_CACHED_KEY = 256
"""Keys up to this length have their bucket cached (a peer's huge keys are not kept)."""


def qdict_bucket(key: str) -> int:
    """QDict's bucket for *key*: QEMU's ``tdb_hash`` modulo 512."""
    return _cached_bucket(key) if len(key) <= _CACHED_KEY else _bucket(key)


def qemu_bytes(text: str) -> bytes:
    """*text* as QEMU stores a string: UTF-8, but U+0000 as ``C0 80`` (its parser's
    modified UTF-8), which is what its hashes of a key see."""
    return text.encode("utf-8", "surrogatepass").replace(b"\x00", b"\xc0\x80")


def _bucket(key: str) -> int:
    data = qemu_bytes(key)
    return _bucket_of(len(data), _byte_sums(data, 0))


def _byte_sums(data: bytes, offset: int) -> int:
    """tdb_hash's sum over *data*, found at byte *offset* of the key.

    tdb_hash adds each byte shifted by (i * 5 % 24): the shift repeats every 24
    bytes, so the sum is 24 sums of every 24th byte, shifted -- at C speed, for
    a peer's megabytes-long key too, and in pieces (:class:`LongKeyBucket`).
    """
    value = 0
    for start in range(24):
        value += sum(data[start::24]) << ((offset + start) % 24 * 5 % 24)
    return value


def _bucket_of(size: int, sums: int) -> int:
    value = 0x238F13AF * size + sums
    return ((1103515243 * (value & 0xFFFFFFFF) + 12345) & 0xFFFFFFFF) % QDICT_BUCKETS


class LongKeyBucket:
    """The bucket of a key too long to hash in one step, a slice of it per step.

    Sliced by characters: each encodes on its own (:func:`qemu_bytes`), so the
    slices' bytes are the key's bytes."""

    __slots__ = ("_at", "_key", "_size", "_sums")

    def __init__(self, key: str) -> None:
        self._key = key
        self._at = self._size = self._sums = 0

    def advance(self, characters: int) -> int | None:
        """Hash up to *characters* more; the bucket once the whole key is hashed."""
        key = self._key
        end = min(len(key), self._at + max(1, characters))
        data = qemu_bytes(key[self._at:end])
        self._sums += _byte_sums(data, self._size)
        self._size += len(data)
        self._at = end
        return _bucket_of(self._size, self._sums) if end == len(key) else None


_cached_bucket = lru_cache(maxsize=4096)(_bucket)


def qdict_order(keys: Sequence[str]) -> list[str]:
    """Keys in the order QEMU iterates a QDict built by inserting *keys* in turn.

    Buckets ascend; inside a bucket the newest entry comes first
    (``QLIST_INSERT_HEAD``).
    """
    position = {key: index for index, key in enumerate(keys)}
    return sorted(keys, key=lambda key: (qdict_bucket(key), -position[key]))


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SWAP_HEX_CASE = str.maketrans("abcdefABCDEF", "ABCDEFabcdef")
_SWAP_HEX_CASE_BYTES = bytes.maketrans(b"abcdefABCDEF", b"ABCDEFabcdef")


def _escape_at_c_speed(text: str) -> str:
    """QEMU's string literal by the json module's C escaper, fixed up in C-speed passes.

    ``encode_basestring_ascii`` escapes what QEMU escapes (DEL included) with the
    same short forms, but writes lower-case hex and keeps lone surrogates.  So
    lone surrogates become U+FFFD first; the letters a-f/A-F swap case before
    and after, which leaves the text's own letters as they were and turns the
    escapes' hex upper-case; the two short escapes made of such letters
    (``\\b``, ``\\f``) are swapped back, past each escaped backslash.
    """
    if _LONE_SURROGATE.search(text) is not None:
        text = _LONE_SURROGATE.sub("\ufffd", text)
    if text.isascii():
        swapped = text.translate(_SWAP_HEX_CASE)
    else:  # str.translate is per character beyond ASCII; bytes.translate is not
        swapped = text.encode().translate(_SWAP_HEX_CASE_BYTES).decode()
    out = encode_basestring_ascii(swapped).translate(_SWAP_HEX_CASE)
    if "\\B" in out or "\\F" in out:
        out = (out.replace("\\\\", "\x80").replace("\\B", "\\b").replace("\\F", "\\f")
               .replace("\x80", "\\\\"))  # no \x80 in ASCII output: a safe stand-in
    return out


def encode_string(text: str) -> str:
    """A JSON string literal as QEMU writes it."""
    if text.isascii() and text.isprintable():
        # Only '"' and '\\' to escape, which both write as QEMU does: the common case.
        return encode_basestring_ascii(text)
    return _escape_at_c_speed(text)


class _Text(str):
    """Output text queued on the encoder's work stack (not a value to encode)."""

    __slots__ = ()


class _StringRest:
    """The rest of a string too big for one step, from *start* (its quote is out)."""

    __slots__ = ("start", "text")

    def __init__(self, text: str, start: int) -> None:
        self.text = text
        self.start = start


class _Members:
    """A big list's elements, or a big dict's members in QDict order, from *index*."""

    __slots__ = ("index", "keys", "value")

    def __init__(self, value: Any, keys: list[str] | None) -> None:
        self.value = value
        self.keys = keys  # None for a list
        self.index = 0


class _KeyOrder:
    """A dict's QDict order, worked out in steps (a big dict, or one with a key
    too long to hash at once): each key to its bucket (newest first inside
    one), then the buckets in turn -- no sort."""

    __slots__ = ("buckets", "index", "keys", "long_key", "value")

    def __init__(self, value: Mapping[str, Any]) -> None:
        self.value = value
        self.keys = list(value)
        self.buckets: list[list[str]] = [[] for _ in range(QDICT_BUCKETS)]
        self.index = 0
        self.long_key: LongKeyBucket | None = None  # the key being hashed in steps

    def order(self) -> list[str]:
        return [key for bucket in self.buckets for key in reversed(bucket)]


STEP_WORK = 128 * 1024
"""Work of one encoding step: about that many characters of strings (a few ms),
or a sixteenth as many other items."""

_ITEM_WORK = 16
_BUCKET_WORK = 10 * _ITEM_WORK  # a key's bucket (tdb_hash) costs about ten items
_SMALL_CONTAINER = 256
"""Lists and dicts up to this size are pushed whole; bigger ones are walked in steps."""
_SHORT_KEY = 64
"""Keys up to this length are written with their separators; longer ones are strings
of their own on the work stack (counted, and cut if huge)."""
_UNBOUNDED = sys.maxsize


def _encode(todo: list[Any], out: list[str], budget: int) -> None:
    """Encode what *todo* holds onto *out* until about *budget* work is done.

    Iterative: QEMU echoes values nested 1023 deep, past Python's recursion
    limit; and resumable: what is left stays on *todo*, so a big value is
    encoded over several calls (:class:`MessageSteps`), each bounded whatever
    the value's shape.  A string is cut only between characters, so that each
    piece is whole escapes.
    """
    pop = todo.pop
    push = todo.append
    emit = out.append
    work = 0
    while todo and work < budget:  # items count when their container is pushed
        value = pop()
        kind = type(value)
        if kind is _Text:
            emit(value)
        elif kind is str or isinstance(value, str):
            if len(value) > budget - work:
                push(_StringRest(value, 0))
                emit('"')
            else:
                emit(encode_string(value))
                work += len(value)
        elif value is True:
            emit("true")
        elif value is False:
            emit("false")
        elif value is None:
            emit("null")
        elif isinstance(value, int):
            emit(str(value))
        elif isinstance(value, float):
            emit(format(value, ".17g"))
        elif isinstance(value, Mapping):
            if not value:
                emit("{}")
            elif len(value) > _SMALL_CONTAINER or (
                    len(value) > 1 and max(map(len, value)) > _CACHED_KEY):
                push(_KeyOrder(value))
            else:
                keys = qdict_order(list(value)) if len(value) > 1 else list(value)
                push(_Text("}"))
                for index in range(len(keys) - 1, -1, -1):
                    key = keys[index]
                    push(value[key])
                    if len(key) <= _SHORT_KEY:
                        push(_Text(("{" if index == 0 else ", ") + encode_string(key) + ": "))
                    else:  # a peer's long key: a string of its own, encoded in steps
                        push(_Text(": "))
                        push(key)
                        push(_Text("{" if index == 0 else ", "))
                work += len(keys) * 3 * _ITEM_WORK
        elif isinstance(value, list | tuple):
            if not value:
                emit("[]")
            elif len(value) > _SMALL_CONTAINER:
                push(_Members(value, None))
            else:
                push(_Text("]"))
                for index in range(len(value) - 1, -1, -1):
                    push(value[index])
                    push(_Text("[" if index == 0 else ", "))
                work += len(value) * 2 * _ITEM_WORK
        elif kind is _StringRest:
            text = value.text
            start = value.start
            end = start + max(budget - work, STEP_WORK // 16)
            if end < len(text):
                push(_StringRest(text, end))
                emit(encode_string(text[start:end])[1:-1])
            else:
                emit(encode_string(text[start:] if start else text)[1:])
            work += end - start
        elif kind is _Members:
            index = value.index
            items = value.value
            keys = value.keys
            value.index = index + 1
            work += 2 * _ITEM_WORK
            if index + 1 < len(items):
                push(value)
            else:
                push(_Text("]" if keys is None else "}"))
            if keys is None:
                push(items[index])
                emit("[" if index == 0 else ", ")
                continue
            key = keys[index]
            push(items[key])
            opener = "{" if index == 0 else ", "
            if len(key) <= _SHORT_KEY:
                emit(opener + encode_string(key) + ": ")
            else:
                push(_Text(": "))
                push(key)
                emit(opener)
        elif kind is _KeyOrder:
            keys = value.keys
            buckets = value.buckets
            index = value.index
            while index < len(keys) and work < budget:
                key = keys[index]
                if len(key) > _CACHED_KEY:  # a peer's long key: hashed a slice per step
                    if value.long_key is None:
                        value.long_key = LongKeyBucket(key)
                    bucket = value.long_key.advance(budget - work)
                    work += min(len(key), budget - work)
                    if bucket is None:
                        break
                    value.long_key = None
                else:
                    bucket = qdict_bucket(key)
                    work += _BUCKET_WORK
                buckets[bucket].append(key)
                index += 1
            value.index = index
            push(value if index < len(keys) else _Members(value.value, value.order()))
        else:
            raise TypeError(f"cannot encode {type(value).__name__} as QMP JSON")


def encode_json(value: Any) -> str:
    """*value* (plain JSON types) as QEMU's compact JSON text."""
    out: list[str] = []
    _encode([value], out, _UNBOUNDED)
    return "".join(out)


def encode_message(value: Any) -> bytes:
    """One QMP wire line: QEMU's JSON text terminated by CRLF, as ASCII bytes."""
    return (encode_json(value) + "\r\n").encode("ascii")


class MessageSteps:
    """One QMP wire line (:func:`encode_message`'s bytes), produced in bounded steps.

    For a reply that echoes a peer's huge value (an ``id``, a key named in an
    error): each :meth:`next_piece` does about *step* work (a few ms), so that
    a server writing it can serve its other peers in between.  Pieces end
    between tokens or inside a string between escapes (a streaming layout,
    :class:`PrettyLayout`, can follow them); joined, they are exactly
    :func:`encode_message`'s bytes.
    """

    __slots__ = ("_step", "_todo")

    def __init__(self, value: Any, step: int = STEP_WORK) -> None:
        self._todo: list[Any] = [_Text("\r\n"), value]
        self._step = step

    @property
    def done(self) -> bool:
        return not self._todo

    def next_piece(self, step: int | None = None) -> bytes:
        """The next piece of the line, about *step* work (the default's if None);
        empty once :attr:`done`."""
        out: list[str] = []
        _encode(self._todo, out, self._step if step is None else step)
        return "".join(out).encode("ascii")


# A compact wire text's tokens: strings (escapes included; the last may be cut, its
# closing quote to come), the separators QEMU writes (", " and ": "), brackets,
# line ends, and any run of scalar text.
_WIRE_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?|, |: |[{}\[\]]|\r\n|[^"{}\[\],:\r]+')
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*(")?')  # group 1: the closing quote
_OPENERS = frozenset((b"{", b"["))
_CLOSERS = frozenset((b"}", b"]"))


class PrettyLayout:
    """QEMU's ``pretty=on`` layout of compact wire text, fed in pieces.

    It works on the bytes, not on values, because the compact text is already
    in QDict order and encoded once for every monitor (events are broadcast):
    relaying it keeps order and escapes exactly as they were written.  Pieces
    may end between tokens or inside a string between escapes, as
    :class:`MessageSteps` cuts a big message (and whole lines do): the layout
    of the pieces is that of their concatenation.
    """

    __slots__ = ("_depth", "_in_string", "_line_start")

    def __init__(self) -> None:
        self._depth = 0
        self._line_start = False  # after an opening bracket or a comma: the indent is due
        self._in_string = False   # the last piece ended inside a string

    def feed(self, data: bytes) -> bytes:
        """The layout of *data*, the next piece of the wire text."""
        out: list[bytes] = []
        emit = out.append
        start = 0
        if self._in_string:
            match = _STRING_REST.match(data)
            assert match is not None  # the pattern matches the empty string
            emit(match.group())
            if match.group(1) is None:  # the string goes on in the next piece
                return b"".join(out)
            self._in_string = False
            start = match.end()
        depth = self._depth
        line_start = self._line_start
        tokens = _WIRE_TOKEN.findall(data, start)
        for token in tokens:
            if token in _CLOSERS:
                depth -= 1
                if not line_start:
                    emit(b"\r\n")
                emit(b"    " * depth + token)
                line_start = False
            elif token == b", ":
                emit(b",\r\n")
                line_start = True
            elif token == b": " or token == b"\r\n":
                emit(token)
            else:
                if line_start:
                    emit(b"    " * depth)
                    line_start = False
                emit(token)
                if token in _OPENERS:
                    depth += 1
                    emit(b"\r\n")
                    line_start = True
        if tokens and tokens[-1][:1] == b'"':
            rest = _STRING_REST.match(tokens[-1], 1)
            self._in_string = rest is not None and rest.group(1) is None
        self._depth = depth
        self._line_start = line_start
        return b"".join(out)


def pretty_wire(data: bytes) -> bytes:
    """QEMU's ``pretty=on`` layout of compact wire *data* (whole lines of it)."""
    return PrettyLayout().feed(data)
