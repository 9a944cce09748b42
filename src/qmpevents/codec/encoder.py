"""Output exactly as QEMU writes it (``qobject/qjson.c``, compact mode).

Byte-exact output matters because users diff our simulator's lines against
real QEMU's.  Three QEMU habits are reproduced:

* dictionary keys come out in QDict's hash-bucket order, not insertion order
  (that is why QEMU writes ``{"timestamp": ..., "event": ...}``);
* output is pure ASCII: everything outside 0x20-0x7E is a ``\\uXXXX`` escape
  with upper-case hex, astral characters as surrogate pairs;
* doubles are printed with ``%.17g``, so ``1.0`` becomes ``1``.

A monitor with ``pretty=on`` gets the same text laid out by
:func:`pretty_wire`: one member per line, four spaces per level, and every
newline written as CRLF (QEMU's ``monitor_puts`` turns each ``\n`` into
``\r\n``); an empty object is ``{``, CRLF, the enclosing indent, ``}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

QDICT_BUCKETS = 512

_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\\x7f-\U0010ffff]')
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
                  "\r": "\\r", "\t": "\\t"}


_CACHED_KEY = 256
"""Keys up to this length have their bucket cached (a peer's huge keys are not kept)."""


def qdict_bucket(key: str) -> int:
    """QDict's bucket for *key*: QEMU's ``tdb_hash`` modulo 512."""
    return _cached_bucket(key) if len(key) <= _CACHED_KEY else _bucket(key)


def _bucket(key: str) -> int:
    # tdb_hash adds each byte shifted by (i * 5 % 24): the shift repeats every 24
    # bytes, so the sum is 24 sums of every 24th byte, shifted -- at C speed, for
    # a peer's megabytes-long key too.
    data = key.encode("utf-8", "surrogatepass")
    value = 0x238F13AF * len(data)
    for start in range(24):
        value += sum(data[start::24]) << (start * 5 % 24)
    return ((1103515243 * (value & 0xFFFFFFFF) + 12345) & 0xFFFFFFFF) % QDICT_BUCKETS


_cached_bucket = lru_cache(maxsize=4096)(_bucket)


def qdict_order(keys: Sequence[str]) -> list[str]:
    """Keys in the order QEMU iterates a QDict built by inserting *keys* in turn.

    Buckets ascend; inside a bucket the newest entry comes first
    (``QLIST_INSERT_HEAD``).
    """
    position = {key: index for index, key in enumerate(keys)}
    return sorted(keys, key=lambda key: (qdict_bucket(key), -position[key]))


def _escape_match(match: re.Match[str]) -> str:
    return _escape_char(match.group())


def _escape_char(char: str) -> str:
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code > 0xFFFF:
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04X}\\u{0xDC00 + (code & 0x3FF):04X}"
    if 0xD800 <= code <= 0xDFFF:  # a lone surrogate is not a character
        return "\\uFFFD"
    return f"\\u{code:04X}"


_BIG_STRING = 4096
"""Above this length a string is escaped by one table of its distinct characters."""


def encode_string(text: str) -> str:
    """A JSON string literal as QEMU writes it."""
    if len(text) <= _BIG_STRING:
        return '"' + _NEEDS_ESCAPE.sub(_escape_match, text) + '"'
    # A peer's megabytes of non-ASCII (an id echoed back): one call per distinct
    # character, not per occurrence, then one C-speed pass.
    table = {ord(char): _escape_char(char) for char in set(text) if _NEEDS_ESCAPE.match(char)}
    return '"' + text.translate(table) + '"'


class _Text(str):
    """Output text queued on the encoder's work stack (not a value to encode)."""

    __slots__ = ()


def _encode(value: Any, out: list[str]) -> None:
    # Iterative: QEMU echoes values nested 1023 deep, past Python's recursion limit.
    todo: list[Any] = [value]
    pop = todo.pop
    push = todo.append
    emit = out.append
    while todo:
        value = pop()
        if type(value) is _Text:
            emit(value)
        elif isinstance(value, str):
            emit(encode_string(value))
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
                continue
            keys = qdict_order(list(value))
            push(_Text("}"))
            for index in range(len(keys) - 1, -1, -1):
                key = keys[index]
                push(value[key])
                push(_Text(("{" if index == 0 else ", ") + encode_string(key) + ": "))
        elif isinstance(value, list | tuple):
            if not value:
                emit("[]")
                continue
            push(_Text("]"))
            for index in range(len(value) - 1, -1, -1):
                push(value[index])
                push(_Text("[" if index == 0 else ", "))
        else:
            raise TypeError(f"cannot encode {type(value).__name__} as QMP JSON")


def encode_json(value: Any) -> str:
    """*value* (plain JSON types) as QEMU's compact JSON text."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out)


def encode_message(value: Any) -> bytes:
    """One QMP wire line: QEMU's JSON text terminated by CRLF, as ASCII bytes."""
    return (encode_json(value) + "\r\n").encode("ascii")


# A compact wire text's tokens: strings (escapes included), the separators QEMU
# writes (", " and ": "), brackets, line ends, and any run of scalar text.
_WIRE_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|, |: |[{}\[\]]|\r\n|[^"{}\[\],:\r]+')
_OPENERS = frozenset((b"{", b"["))
_CLOSERS = frozenset((b"}", b"]"))


def pretty_wire(data: bytes) -> bytes:
    """QEMU's ``pretty=on`` layout of compact wire *data* (whole lines of it).

    It works on the bytes, not on values, because the compact text is already
    in QDict order and encoded once for every monitor (events are broadcast):
    relaying it keeps order and escapes exactly as they were written.
    """
    out: list[bytes] = []
    emit = out.append
    depth = 0
    line_start = False  # after an opening bracket or a comma: the indent is due
    for token in _WIRE_TOKEN.findall(data):
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
    return b"".join(out)
