"""Input framing: QEMU's framing rules, limits and error texts; fast path == exact path.

The key property of the codec is at the bottom: whatever the bytes and however
they are split, the fast+exact :class:`Framer` yields exactly what feeding
every byte through the exact path alone (QEMU's lexer + streamer + parser,
:func:`reference`) yields.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import re
import sys
import threading
import tracemalloc
from typing import Any, Literal
from unittest import mock

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmpevents.catalog import Event
from qmpevents.codec import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_NESTING,
    Framer,
    ParseError,
    ParseErrorKind,
    lexer,
    scan,
    value_framer,
)
from qmpevents.codec.framing import BLOCK_PIECE
from qmpevents.codec.lexer import Streamer, TokenRun
from qmpevents.codec.parser import JSONParseError, parse_tokens
from qmpevents.codec.stray import PendingStray
from qmpevents.protocol import messages
from qmpevents.rawtext import RawDemand

SURROGATES: tuple[Literal["Cs"]] = ("Cs",)  # no lone surrogates: not UTF-8

# --- the reference: every byte through the exact path ---------------------------------


class Reference:
    """QEMU's lexer + streamer + parser alone, fed byte by byte."""

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 max_nesting: int = MAX_NESTING) -> None:
        self.out: list[Any] = []
        self._streamer = Streamer(self._emit, max_message_size=max_message_size,
                                  max_nesting=max_nesting)

    def _emit(self, tokens: TokenRun | None, error: ParseError | PendingStray | None) -> None:
        if isinstance(error, PendingStray):  # a huge token's stray error, built late
            error = error.now()
        if error is not None:
            self.out.append(error)
            return
        assert tokens is not None
        try:
            self.out.append(parse_tokens(tokens))
        except JSONParseError as exc:
            self.out.append(exc.error)

    def feed(self, data: bytes) -> None:
        for byte in data:
            self._streamer.feed_byte(byte)


def reference(data: bytes, **limits: int) -> list[Any]:
    ref = Reference(**limits)
    ref.feed(data)
    return ref.out


def canon(value: Any) -> Any:
    """A form where 1, 1.0, True, -0.0 and 0.0 all differ (``==`` would merge them)."""
    if isinstance(value, ParseError):
        return ("error", value.desc)
    if isinstance(value, bool) or value is None:
        return ("const", repr(value))
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else repr(value))
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, list):
        return ("list", [canon(item) for item in value])
    assert isinstance(value, dict), value
    return ("dict", [(key, canon(item)) for key, item in value.items()])


def feed_all(framer: Framer[Any], chunks: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    chunks, start = [], 0
    for point in points:
        chunks.append(data[start:point])
        start = point
    chunks.append(data[start:])
    return chunks


def errors(items: list[Any]) -> list[str]:
    return [item.desc for item in items if isinstance(item, ParseError)]


# --- QEMU's framing rules -------------------------------------------------------------


def test_several_messages_in_one_read() -> None:
    framer = value_framer()
    data = b'{"execute": "a"}\r\n{"execute": "b", "id": 1}\n{"execute": "c"}'
    assert framer.feed(data) == [{"execute": "a"}, {"execute": "b", "id": 1},
                                 {"execute": "c"}]


def test_several_messages_on_one_line_without_newline() -> None:
    framer = value_framer()
    assert framer.feed(b'{"execute": "a"}{"execute": "b"}') == [{"execute": "a"},
                                                                {"execute": "b"}]
    assert framer.buffered == 0


def test_one_message_split_over_many_reads() -> None:
    framer = value_framer()
    message = b'{"execute": "query-status", "id": "x"}\r\n'
    out: list[Any] = []
    for byte in message:
        out.extend(framer.feed(bytes([byte])))
    assert out == [{"execute": "query-status", "id": "x"}]
    assert framer.buffered == 0


def test_no_trailing_newline_needed() -> None:
    framer = value_framer()
    assert framer.feed(b'{"execute": "stop"}') == [{"execute": "stop"}]
    assert framer.feed(b"[1, 2]") == [[1, 2]]


def test_partial_message_is_buffered_until_complete() -> None:
    framer = value_framer()
    assert framer.feed(b'{"execute": ') == []
    assert framer.buffered > 0
    assert framer.feed(b'"cont"}') == [{"execute": "cont"}]
    assert framer.buffered == 0


def test_read_ending_on_a_brace_inside_a_message_stays_buffered() -> None:
    # The fast path keeps waiting (no per-byte exact path for the rest of a big
    # message) when the read ends with '}' but the JSON is merely cut short.
    framer = value_framer()
    assert framer.feed(b'{"execute": "x", "id": {"a": "}') == []
    assert framer.buffered > 0
    assert not framer._slow
    assert framer.feed(b'"}}\n') == [{"execute": "x", "id": {"a": "}"}}]


def test_complete_message_of_the_exact_path_without_newline_is_answered_at_once() -> None:
    framer = value_framer()
    assert framer.feed('{"execute": "\u00e9"}'.encode()) == [{"execute": "\u00e9"}]
    assert framer.feed(b'{"a": 1, "a": 2}') == [
        ParseError(ParseErrorKind.SYNTAX, "JSON parse error, duplicate key")]


@pytest.mark.parametrize("data", [
    b"{\xff", b"{\x01", b"{'bad \xff",  # QEMU's tests/qtest/qmp-test.c, qmp_protocol
    b'{"execute": "x", "id": [1, 2, \x01', b'[{"a": "b\xfe', b"[1, 01", b"{ %",
])
def test_stray_byte_inside_a_message_is_answered_at_once(data: bytes) -> None:
    # QEMU's lexer reports a stray byte when it arrives, not when more bytes do.
    framer = value_framer()
    out = framer.feed(data)
    assert [canon(item) for item in out] == [canon(item) for item in reference(data)]
    assert out and isinstance(out[0], ParseError), data
    assert out[0].kind is ParseErrorKind.LEXICAL
    assert framer.feed(b'\n{"execute": "ok"}\n') == [{"execute": "ok"}]
    # The client's framer may keep a short cut line for its next read's block
    # decode: the error comes with that read.
    client = client_framer()
    out = client.feed(data) + client.feed(b'\n{"return": {}, "id": "a"}\n')
    assert isinstance(out[0], ParseError) and out[0].kind is ParseErrorKind.LEXICAL
    assert out[-1] == messages.Return({}, "a")


def test_stray_byte_late_in_a_held_message_is_answered_at_once() -> None:
    framer = value_framer()
    assert framer.feed(b'{"execute": "x", "id": [') == []
    for _ in range(50):
        assert framer.feed(b'"abc", 12, {"k": [true, null]}, ') == []
    assert framer.buffered > 1000
    out = framer.feed(b"1, \x7f")
    assert errors(out) == ["JSON parse error, stray '\x7f'"]
    assert framer.buffered == 0


def test_message_held_over_many_reads_is_answered_with_its_last_byte() -> None:
    framer = value_framer()
    chunks = [b'{"execute": "x", "id": [', *[b'[1, "]"], ' for _ in range(100)], b"[]]}"]
    out = [item for chunk in chunks for item in framer.feed(chunk)]
    assert out == [{"execute": "x", "id": [*([[1, "]"]] * 100), []]}]
    assert framer.feed(b'{"a": [1]}{"b": 2}  {"c"') == [{"a": [1]}, {"b": 2}]


def count_exact_path_bytes(framer: Framer[Any]) -> list[int]:
    """The bytes *framer* feeds its exact (byte by byte) path from now on, as they go."""
    seen: list[int] = []
    feed_byte = framer._streamer.feed_byte

    def counting(byte: int) -> None:
        seen.append(byte)
        feed_byte(byte)

    framer._streamer.feed_byte = counting  # type: ignore[method-assign]
    return seen


def test_thousands_of_brackets_at_depth_3_stay_on_the_fast_path() -> None:
    # An ordinary 95 KiB reply: 4,002 brackets, nested 3 deep.
    item = b'["' + b"x" * 42 + b'"]'
    reply = b'{"return": [' + b", ".join([item] * 1999) + b'], "id": "big"}\r\n'
    assert sum(map(reply.count, (b"[", b"]", b"{", b"}"))) == 4002 and len(reply) > 95_000
    for framer in (value_framer(), client_framer()):
        exact = count_exact_path_bytes(framer)
        out = feed_all(framer, [reply[i:i + 8192] for i in range(0, len(reply), 8192)])
        assert len(out) == 1 and exact == []
    (first,) = value_framer().feed(reply)
    assert isinstance(first, dict) and first["return"][1998] == ["x" * 42]


def _scan_results(chunks: list[bytes], max_nesting: int) -> list[int]:
    """What one MessageScan says of each chunk, up to its first answer."""
    message = scan.MessageScan(max_nesting)
    results = []
    for chunk in chunks:
        results.append(message.feed(chunk))
        if results[-1] != scan.GOES_ON:
            break
    return results


_BRACKETY = st.lists(st.sampled_from([b"{", b"}", b"[", b"]", b'"a]"', b"1", b",", b" "]),
                     max_size=40).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(first=st.sampled_from([b"{", b"["]), body=_BRACKETY, cuts=st.lists(st.integers(1, 40),
                                                                         max_size=3),
       max_nesting=st.sampled_from([1, 2, 3, 1024]))
def test_the_scan_shortcut_for_inner_pairs_finds_the_same_end(
        first: bytes, body: bytes, cuts: list[int], max_nesting: int) -> None:
    """Counting the brackets with innermost pairs removed first (the shortcut for
    many of them) ends the message where counting them all does.  At the
    nesting limit it may say SUSPECT where the full count goes on: the exact
    path then decides, as it does whenever the scan is unsure."""
    message = first + body
    points = sorted({c for c in cuts if c < len(message)})
    chunks = [message[a:b] for a, b in zip([0, *points], [*points, len(message)], strict=True)]
    with_shortcut = _scan_results(chunks, max_nesting)
    with mock.patch.object(scan, "_PAIRS", re.compile(rb"(?!)")):  # no pair: all counted
        counted = _scan_results(chunks, max_nesting)
    if with_shortcut != counted:
        at = next(i for i, (a, b) in enumerate(zip(with_shortcut, counted, strict=False))
                  if a != b)
        assert (with_shortcut[at], counted[at]) == (scan.SUSPECT, scan.GOES_ON), (
            chunks, with_shortcut, counted)


def test_the_scan_shortcut_may_be_unsure_only_at_the_nesting_limit() -> None:
    """The reviewer's case: the shortcut's bound on the depth is one above it."""
    assert _scan_results([b"{{}{"], 2) == [scan.SUSPECT]
    assert _scan_results([b"{{}{"], 3) == [scan.GOES_ON]


def test_deeply_nested_messages_on_one_line_end_where_qemu_ends_them() -> None:
    # Strings holding brackets, both kinds of brackets, many messages on one
    # line: the scan finds each end with C-speed counts, not the exact path.
    unit = b'{"a": ' + b"[" * 200 + b'"]}[{", {"k": "[[["}' + b"]" * 200 + b"}"
    data = unit * 40 + b"[1]"
    for chunks in ([data], [data[i:i + 997] for i in range(0, len(data), 997)]):
        framer = value_framer()
        exact = count_exact_path_bytes(framer)
        out = feed_all(framer, chunks)
        assert len(out) == 41 and exact == []
        assert [canon(v) for v in out] == [canon(v) for v in reference(data)]


@pytest.mark.parametrize(("data", "kind"), [
    (b"\xff\n", ParseErrorKind.LEXICAL),
    (b'{"a" 1}\n', ParseErrorKind.SYNTAX),
    (b'{"a": 1, "a": 2}\n', ParseErrorKind.SYNTAX),
    (b"[" * 1025 + b"\n", ParseErrorKind.TOO_DEEP),
    (b'["' + b"a" * 5000 + b'"]\n', ParseErrorKind.TOO_LARGE),
])
def test_parse_errors_carry_their_kind(data: bytes, kind: ParseErrorKind) -> None:
    framer = value_framer(max_message_size=4096)
    first = framer.feed(data)[0]
    assert isinstance(first, ParseError) and first.kind is kind
    assert first == reference(data, max_message_size=4096)[0]


def test_too_large_carries_the_size_reached_and_the_limit() -> None:
    out = value_framer(max_message_size=64).feed(b'["' + b"a" * 100 + b'"]\n')
    error = out[0]
    assert isinstance(error, ParseError) and error.kind is ParseErrorKind.TOO_LARGE
    assert error.limit == 64 and error.size is not None and error.size > 64
    assert error.desc == "JSON token size limit exceeded"
    many = value_framer().feed(b"[" + b"1," * 200 + b"1]\n")
    tokens: Framer[Any] = Framer(json.loads, lambda value: value, max_tokens=100)
    assert tokens.feed(b"[" + b"1," * 200 + b"1]\n")[0].kind is ParseErrorKind.TOO_MANY_TOKENS
    assert many == [[1] * 201]


def test_budget_slices_the_exact_path_and_keeps_the_order() -> None:
    # Short tokens: lexed one byte at a time (a long string would be one C-speed run).
    data = b"{'execute': 'x', 'id': [" + b"1, " * 17_000 + b"1]}\n" + b'{"execute": "after"}\n'
    framer = value_framer()
    out = framer.feed(data, budget=4096)
    assert out == [] and framer.pending > 0
    assert framer.feed(b'{"execute": "later"}\n', budget=4096) == []  # waits its turn
    rounds = 2
    while framer.pending:
        out.extend(framer.feed(b"", budget=4096))
        rounds += 1
    assert out == [{"execute": "x", "id": [1] * 17_001}, {"execute": "after"},
                   {"execute": "later"}]
    assert rounds >= 51_000 // 4096


def test_leading_whitespace_and_crlf_are_skipped() -> None:
    framer = value_framer()
    assert framer.feed(b'\r\n\r\n  \t{"execute": "a"}\r\n\r\n') == [{"execute": "a"}]
    assert framer.feed(b"   \r\n") == []


def test_single_quoted_strings() -> None:
    framer = value_framer()
    assert framer.feed(b"{'execute': 'query-status', 'id': 'sq'}\n") == [
        {"execute": "query-status", "id": "sq"}]
    assert framer.feed(b"{'a': 'it\\'s \"x\"'}\n") == [{"a": "it's \"x\""}]


def test_bare_scalar_needs_a_delimiter() -> None:
    framer = value_framer()
    assert framer.feed(b"42") == []
    assert framer.feed(b" ") == [42]
    assert framer.feed(b'"x"') == ["x"]
    assert framer.feed(b"null\n") == [None]


def test_huge_integers_become_floats() -> None:
    framer = value_framer()
    out = framer.feed(b'{"id": 18446744073709551616, "a": 18446744073709551615, '
                      b'"b": -9223372036854775808, "c": -9223372036854775809}\n')
    assert out == [{"id": 1.8446744073709552e19, "a": 18446744073709551615,
                    "b": -9223372036854775808, "c": -9.223372036854776e18}]
    value = out[0]
    assert isinstance(value["id"], float) and isinstance(value["a"], int)
    assert isinstance(value["b"], int) and isinstance(value["c"], float)


def test_unicode_escapes_and_slash() -> None:
    framer = value_framer()
    out = framer.feed(b'{"a": "\\u00e9\\u2603\\ud83d\\ude00 \\/ \\t"}\n')
    assert out == [{"a": "\u00e9\u2603\U0001F600 / \t"}]


# --- QEMU's parse errors (the wire doc's table) ---------------------------------------

@pytest.mark.parametrize(("data", "expected"), [
    (b'{"execute": }\n', ["JSON parse error, expecting value"]),
    (b'{"execute": "a",}\n', ["JSON parse error, expecting value"]),
    (b"}\n", ["JSON parse error, expecting value"]),
    (b'{"execute": nope}\n', ["JSON parse error, invalid keyword 'nope'"]),
    (b'{"execute": "query-status" ]\n', ["JSON parse error, expected separator in dict"]),
    (b'{"a": 1, "a": 2}\n', ["JSON parse error, duplicate key"]),
    (b'{"a" 1}\n', ["JSON parse error, missing : in object pair"]),
    (b"{1: 2}\n", ["JSON parse error, key is not a string in object"]),
    (b"[1 2]\n", ["JSON parse error, expected separator in list"]),
    (b'"\\x"\n', ["JSON parse error, invalid escape sequence in string"]),
    (b'"\\ud800"\n', ["JSON parse error, \\ud800 is not a valid Unicode character"]),
])
def test_parse_error_texts(data: bytes, expected: list[str]) -> None:
    framer = value_framer()
    assert errors(framer.feed(data)) == expected
    assert framer.feed(b'{"execute": "ok"}\n') == [{"execute": "ok"}]


def test_raw_tab_in_string_is_a_stray_error_then_relexed() -> None:
    framer = value_framer()
    out = framer.feed(b'{"execute": "a\tb"}\n')
    assert errors(out)[0] == "JSON parse error, stray '\"a\t'"
    assert all(isinstance(item, ParseError) for item in out)
    assert len(out) > 1  # the rest is re-lexed as more garbage, as QEMU does
    assert framer.feed(b'{"execute": "ok"}\n') == [{"execute": "ok"}]


def test_invalid_utf8_in_string_is_an_error() -> None:
    framer = value_framer()
    out = framer.feed(b'{"execute": "a\xffb"}\n')
    assert out and errors(out)[0].startswith("JSON parse error, stray ")
    assert framer.feed(b'{"execute": "ok"}\n') == [{"execute": "ok"}]


def test_duplicate_key_is_caught_on_the_fast_path_too() -> None:
    # A complete line msgspec would accept (last key wins) but QEMU refuses.
    framer = value_framer()
    assert framer.feed(b'{"execute": "a", "execute": "b"}\n') == [
        ParseError(ParseErrorKind.SYNTAX, "JSON parse error, duplicate key")]


def test_form_feed_is_not_whitespace_to_qemu() -> None:
    # bytes.strip() would drop \x0b and \x0c; QEMU's lexer calls them stray.
    framer = value_framer()
    for junk in (b"\x0c", b"\x0b"):
        data = junk + b'{"execute": "a"}' + junk + b"\n"
        assert [canon(v) for v in framer.feed(data)] == [canon(v) for v in reference(data)]
        assert errors(reference(data))


def test_an_exponent_right_after_a_leading_zero_is_answered_as_qemu_does() -> None:
    """QEMU's lexer has no exponent after a leading 0: ``0E0`` in an unfinished message
    is a stray 'E' answered at once, ``0e0`` the keyword ``e0`` (found by atheris: the
    scan took ``0E0`` for a number and waited for the message's end)."""
    for data in (b"[[[nl0E0\n", b"[[0E", b"[[0e", b"[0e0]\n", b"{\"a\": -0E1\n",
                 b"[[0.5e", b"[[10e", b"[0.0e1, 10e2, -0, 0]\n"):
        for cut in range(1, len(data) + 1):  # every split into two reads
            framer = value_framer()
            out = framer.feed(data[:cut]) + framer.feed(data[cut:])
            assert [canon(v) for v in out] == [canon(v) for v in reference(data)], (data, cut)


# --- limits ---------------------------------------------------------------------------

def nested(depth: int) -> bytes:
    """A message whose total nesting (outer object included) is *depth*."""
    return b'{"id": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_nesting_1024_is_accepted() -> None:
    framer = value_framer()
    out = framer.feed(nested(MAX_NESTING) + b"\n")
    assert len(out) == 1 and isinstance(out[0], dict)
    depth, value = 2, out[0]["id"]  # the outer object is level 1
    while value:
        depth, value = depth + 1, value[0]
    assert depth == MAX_NESTING


def test_nesting_1025_is_an_error_and_the_stream_recovers() -> None:
    framer = value_framer()
    out = framer.feed(nested(MAX_NESTING + 1) + b"\n")
    assert errors(out)[0] == "JSON nesting depth limit exceeded"
    assert all(isinstance(item, ParseError) for item in out)
    assert len(out) > 1000  # the rest is re-lexed as garbage: ~1 error per token, as QEMU
    assert framer.feed(b'{"execute": "query-status", "id": 1}\n') == [
        {"execute": "query-status", "id": 1}]


def test_nesting_error_matches_the_exact_path() -> None:
    data = nested(MAX_NESTING + 1) + b'\n{"execute": "x"}\n'
    assert [canon(v) for v in value_framer().feed(data)] == [canon(v) for v in reference(data)]


def test_message_size_limit_then_resync() -> None:
    framer = value_framer(max_message_size=64)
    big = b'{"execute": "x", "id": "' + b"a" * 200 + b'"}\n'
    out = framer.feed(big)
    assert errors(out)[0] == "JSON token size limit exceeded"
    assert framer.buffered <= 64
    assert framer.feed(b'{"execute": "ok"}\n') == [{"execute": "ok"}]


def test_message_size_limit_in_small_reads() -> None:
    framer = value_framer(max_message_size=64)
    out: list[Any] = []
    for i in range(0, 300, 7):
        out.extend(framer.feed((b'{"id": "' + b"b" * 300)[i:i + 7]))
        assert framer.buffered <= 64
    assert "JSON token size limit exceeded" in errors(out)
    out = framer.feed(b'"}\n{"execute": "ok"}\n')
    assert out[-1] == {"execute": "ok"}


def test_message_just_under_the_limit() -> None:
    # QEMU counts token bytes plus one: a 10-byte compact message needs a limit of 11.
    data = b'{"a":1234}'
    too_large = ParseError(ParseErrorKind.TOO_LARGE, "JSON token size limit exceeded")
    assert reference(data, max_message_size=10)[0] == too_large
    assert value_framer(max_message_size=10).feed(data + b"\n")[0] == too_large
    assert value_framer(max_message_size=11).feed(data + b"\n") == [{"a": 1234}]


def test_buffer_never_grows_past_the_limit_on_garbage() -> None:
    framer = value_framer(max_message_size=1000)
    for _ in range(100):
        framer.feed(b"{" + b"x" * 499)
        assert framer.buffered <= 1000
    for _ in range(100):
        framer.feed(b'{"a": "' + b"y" * 499)
        assert framer.buffered <= 1000


# --- what a framer builds messages with -----------------------------------------------

def test_a_framer_takes_from_message_alone() -> None:
    """It needed a from_value too, which was then never called."""
    framer: Framer[tuple[Any, bytes]] = Framer(
        lambda line: (msgspec.json.decode(line), line),
        from_message=lambda value, raw: (value, raw))
    text = b"{'a': [1, 2]}"  # QEMU's single quotes: the exact path's
    assert framer.feed(b'{"b": 3}\r\n' + text + b"\r\n") == [({"b": 3}, b'{"b": 3}'),
                                                            ({"a": [1, 2]}, text)]


@pytest.mark.parametrize("builders", [{}, {"from_value": lambda value: value,
                                           "from_message": lambda value, raw: value}])
def test_a_framer_takes_exactly_one_way_to_build_messages(builders: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="exactly one of from_value and from_message"):
        Framer(json.loads, **builders)


# --- the client's typed framer --------------------------------------------------------

def client_framer(*, raw_read: bool = False, **kwargs: Any) -> Framer[Any]:
    """The client's framer; *raw_read*: as once its consumer has read a ``raw``."""
    demand = RawDemand()
    demand.seen = raw_read
    return Framer(messages.decode_line, messages.from_value,
                  decode_block=functools.partial(messages.decode_event_block, demand=demand),
                  **kwargs)


def line_framer() -> Framer[Any]:
    """The client's framer with no block decode: every line on its own."""
    return Framer(messages.decode_line, messages.from_value)


EVENT = (b'{"timestamp": {"seconds": 1267041730, "microseconds": 281295}, '
         b'"event": "STOP"}')


def test_typed_framer_keeps_raw_lines() -> None:
    framer = client_framer()
    out = framer.feed(EVENT + b"\r\n" + b'{"return": {}, "id": "a"}\r\n' + EVENT + b"\r\n")
    assert [type(item).__name__ for item in out] == ["Stop", "Return", "Stop"]
    first, _reply, last = out
    assert isinstance(first, Event) and isinstance(last, Event)
    assert first.raw == EVENT and last.raw == EVENT
    assert out[1] == messages.Return({}, "a")


def test_typed_framer_block_and_line_paths_agree() -> None:
    lines = [EVENT, b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "NEW_ONE", '
             b'"data": {"x": [1]}}', b'{"return": {"status": "running"}, "id": 7}', EVENT]
    stream = b"\r\n".join(lines) + b"\r\n"
    whole = client_framer().feed(stream)
    single = [item for line in lines for item in client_framer().feed(line + b"\n")]
    assert whole == single
    assert [getattr(item, "raw", None) for item in whole] == [
        getattr(item, "raw", None) for item in single]


@pytest.mark.parametrize("stream", [
    EVENT + b", " + EVENT + b"\r\n" + EVENT + b"\r\n",  # two values on one line
    EVENT + b"\r\n\r\n" + EVENT + b" " + EVENT + b"\r\n",  # a blank line, then two
    EVENT[:20] + b"\r\n" + EVENT[20:] + b"\r\n" + EVENT + b"\r\n",  # one over two lines
    EVENT[:20] + b"\r" + EVENT[20:] + b"\r\n" + EVENT + b"\r\n",  # a bare CR inside
    EVENT + b"\r\n[" + EVENT + b"]\r\n",  # an array of one event
    EVENT + b"\r\n" + EVENT + b"\n" + EVENT + b"\r\n",  # an LF line among CRLF ones
    EVENT + b"\n" + EVENT + b"\n",  # LF only
])
@pytest.mark.parametrize("raw_read", [False, True])
def test_block_decode_never_shifts_raw_lines(stream: bytes, raw_read: bool) -> None:
    """However the values sit on the lines, the raw text stays each event's own."""
    whole = client_framer(raw_read=raw_read).feed(stream)
    line_path = Framer(messages.decode_line, messages.from_value).feed(stream)
    assert whole == line_path
    assert [getattr(item, "raw", None) for item in whole] == [
        getattr(item, "raw", None) for item in line_path]
    for item in whole:
        if isinstance(item, Event) and item.raw is not None:
            assert messages.decode_line(item.raw) == item


@pytest.mark.parametrize("tokens", [10, 60, 200])
@pytest.mark.parametrize("raw_read", [False, True])
def test_the_token_limit_holds_on_the_block_path_too(tokens: int, raw_read: bool) -> None:
    """A line of more tokens than QEMU's limit was one event to the block
    decoder, and the limit's error and resync line by line (attacker's finding)."""
    data = b"0," * (tokens - 1) + b"0"
    many = EVENT[:-1] + b', "data": {"a": [' + data + b"]}}"
    stream = EVENT + b"\r\n" + many + b"\r\n" + EVENT + b"\r\n"
    whole = client_framer(raw_read=raw_read, max_tokens=64).feed(stream)
    line_path = Framer(messages.decode_line, messages.from_value, max_tokens=64).feed(stream)
    in_reads = feed_all(client_framer(raw_read=raw_read, max_tokens=64),
                        split_at(stream, list(range(7, len(stream), 7))))
    assert whole == line_path == in_reads  # held over reads too (attacker's finding)
    names = [type(item).__name__ for item in whole]
    if tokens > 10:  # refused as QEMU's parser refuses it (then token by token, as QEMU)
        assert names[:2] == ["Stop", "ParseError"] and names[-1] == "Stop"
        assert whole[1].kind is ParseErrorKind.TOO_MANY_TOKENS
    else:
        assert names == ["Stop"] * 3


def test_a_message_of_only_structural_tokens_over_the_limit_is_refused_at_once() -> None:
    """No string in it, so its structural bytes are all tokens: certainly over
    QEMU's limit, it is one error, not then taken token by token."""
    message = b"[" + b"{}," * 100 + b"{}]"
    for chunks in ([message + b"\n"], split_at(message + b"\n", list(range(5, 300, 5)))):
        out = feed_all(client_framer(max_tokens=64, max_message_size=1024), chunks)
        assert [item.kind for item in out] == [ParseErrorKind.TOO_MANY_TOKENS]


def test_structural_bytes_in_a_string_are_no_tokens() -> None:
    """A big message whose string holds many commas was refused as too many
    tokens (the reviewer's finding: QEMU echoes such a path in DeviceNotFound)."""
    stop = EVENT[:-1] + b', "data": {"s": "' + b"," * 200 + b'"}}\n'
    for chunks in ([stop], split_at(stop, list(range(7, len(stop), 7)))):
        out = feed_all(client_framer(max_tokens=64, max_message_size=1024), chunks)
        assert [type(item).__name__ for item in out] == ["Stop"]


def stamped_stop(microseconds: int) -> bytes:
    return (b'{"timestamp": {"seconds": 1267041730, "microseconds": %d}, "event": "STOP"}'
            % microseconds)


def read_events(framer: Framer[Any], data: bytes) -> list[Event]:
    """What *framer* makes of *data*, which must be catalog events only."""
    items = framer.feed(data)
    events = [item for item in items if isinstance(item, Event)]
    assert len(events) == len(items)
    return events


def test_each_event_of_a_read_gets_its_own_raw_in_any_order() -> None:
    """``raw`` is cut out of the read when asked for: each event finds its own
    text whatever the order of asking, and after the read's other events are
    gone."""
    lines = [stamped_stop(index) for index in range(300)]
    survivors = read_events(client_framer(), b"\r\n".join(lines) + b"\r\n")[::7]
    later = read_events(client_framer(), b"\r\n".join(lines) + b"\r\n")
    assert [event.raw for event in reversed(survivors)] == lines[::7][::-1]
    assert [event.raw for event in later] == lines


def test_equal_events_in_one_read_keep_their_own_texts() -> None:
    first_text = b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}'
    second_text = b'{"event": "STOP", "timestamp": {"microseconds": 2, "seconds": 1}}'
    first, second = read_events(client_framer(), first_text + b"\n" + second_text + b"\n")
    assert first == second
    assert (second.raw, first.raw) == (second_text, first_text)


def test_threads_reading_raw_of_one_read_at_once_each_get_their_own() -> None:
    lines = [stamped_stop(index) for index in range(400)]
    reads = [read_events(client_framer(), b"\n".join(lines) + b"\n") for _ in range(30)]
    start = threading.Barrier(4)
    seen: list[list[bytes | None]] = []

    def read_all(offset: int) -> None:
        start.wait()
        for events in reads:  # every thread reads every read, each from another event
            seen.append([events[(index + offset * 97) % len(events)].raw
                         for index in range(len(events))])

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        threads = [threading.Thread(target=read_all, args=(offset,)) for offset in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    expected = {offset: [lines[(index + offset * 97) % len(lines)] for index in range(len(lines))]
                for offset in range(4)}
    assert len(seen) == 4 * len(reads)
    assert all(texts in expected.values() for texts in seen)


def test_an_event_keeps_its_read_only_until_its_raw_is_read() -> None:
    lines = [stamped_stop(index) for index in range(800)]  # about 60 KB: one read
    tracemalloc.start()
    try:
        data = b"\r\n".join(lines) + b"\r\n"
        size = len(data)
        framer = client_framer()
        events = read_events(framer, data)
        kept = events[400]
        del data, events
        framer.feed(b"")  # it holds its last output until the next feed
        holding = tracemalloc.get_traced_memory()[0]
        assert size < holding < size + 16 * 1024  # the read, and little per event of it
        assert kept.raw == lines[400]
        assert tracemalloc.get_traced_memory()[0] < 16 * 1024
    finally:
        tracemalloc.stop()


def test_a_small_event_never_keeps_a_big_neighbour_alive() -> None:
    big = (b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "BLOCK_IO_ERROR", '
           b'"data": {"device": "d", "operation": "write", "action": "report", '
           b'"reason": "' + b"x" * 1_000_000 + b'"}}')
    tracemalloc.start()
    try:
        framer = client_framer()
        events = read_events(framer, big + b"\r\n" + stamped_stop(3) + b"\r\n")
        kept = events[1]
        del events
        framer.feed(b"")
        assert tracemalloc.get_traced_memory()[0] < 16 * 1024
        assert kept.raw == stamped_stop(3)
    finally:
        tracemalloc.stop()


def test_a_message_held_over_many_lines_and_reads_is_block_decoded_once_at_most() -> None:
    """A pretty-printed message held over reads was offered to the block decoder
    again at every read with a newline: quadratic in its size."""
    offered: list[int] = []

    def counting(block: bytes) -> list[Any]:
        offered.append(len(block))
        return messages.decode_event_block(block)

    members = b",\r\n".join(b'    "k%d": %d' % (index, index) for index in range(40_000))
    pretty = (b'{\r\n  "timestamp": {"seconds": 1, "microseconds": 2},\r\n'
              b'  "event": "NEW",\r\n  "data": {\r\n' + members + b'\r\n  }\r\n}\r\n')
    framer = Framer(messages.decode_line, from_message=messages.from_value,
                    decode_block=counting)
    out = [item for start in range(0, len(pretty), 65536)
           for item in framer.feed(pretty[start:start + 65536])]
    assert [type(item).__name__ for item in out] == ["UnknownEvent"]
    assert sum(offered) < 2 * len(pretty)


class ScanCountingBytes(bytes):
    """Bytes that count how far the framer's newline searches on them reach."""

    reached = 0

    def find(self, sub: Any, start: Any = None, end: Any = None) -> int:
        found = super().find(sub, start, end)
        stop = len(self) if end is None else min(end, len(self))
        ScanCountingBytes.reached += (stop if found < 0 else found) - (start or 0)
        return found

    def rfind(self, sub: Any, start: Any = None, end: Any = None) -> int:
        stop = len(self) if end is None else min(end, len(self))
        ScanCountingBytes.reached += stop - (start or 0)
        return super().rfind(sub, start, end)

    def rstrip(self, chars: Any = None) -> bytes:
        ScanCountingBytes.reached += len(self)
        return super().rstrip(chars)


@pytest.mark.parametrize("separator", [b" ", b"\r"])
def test_many_messages_and_no_newline_in_one_feed_cost_linear_time(separator: bytes) -> None:
    """Each message searched the rest of the buffer for a newline (quadratic)."""
    events = [stamped_stop(index) for index in range(2000)]
    data = ScanCountingBytes(separator.join(events) + separator)
    ScanCountingBytes.reached = 0
    out = client_framer().feed(data)
    assert len(out) == 2000
    assert ScanCountingBytes.reached <= 8 * len(data)  # linear: not 1000 times it


def test_many_messages_on_one_line_are_offered_to_the_block_decoder_once() -> None:
    """Each message of a line refused whole was offered with the rest of the
    line to the block decoder, which decoded it all again: quadratic."""
    offered: list[int] = []

    def counting(block: bytes) -> list[Any]:
        offered.append(len(block))
        return messages.decode_event_block(block)

    data = b"".join(stamped_stop(index) for index in range(4000)) + b"\n"
    framer = Framer(messages.decode_line, from_message=messages.from_value,
                    decode_block=counting)
    assert len(framer.feed(data)) == 4000
    assert sum(offered) <= 2 * len(data)


def counting_client_framer(**options: Any) -> tuple[Framer[Any], list[int], list[int]]:
    """The client's framer (with *options*), with the sizes its block decoder and
    its line decoder are offered."""
    blocks: list[int] = []
    lines: list[int] = []

    def block_decoder(block: bytes) -> list[Any]:
        blocks.append(len(block))
        return messages.decode_event_block(block)

    def line_decoder(line: bytes) -> Any:
        lines.append(len(line))
        return messages.decode_line(line)

    framer = Framer(line_decoder, messages.from_value, decode_block=block_decoder, **options)
    return framer, blocks, lines


def test_a_read_beginning_with_the_lf_of_a_crlf_is_decoded_as_a_block() -> None:
    """Its first newline counted as a line without an event: the read's every
    line then went one at a time (one read in about 180 of a fast stream)."""
    framer, blocks, lines = counting_client_framer()
    stops = [stamped_stop(index) for index in range(100)]
    assert len(framer.feed(stops[0] + b"\r")) == 1
    blocks.clear()
    lines.clear()
    out = framer.feed(b"\n" + b"\r\n".join(stops[1:]) + b"\r\n")
    assert len(out) == 99
    assert len(blocks) == 1 and not lines


def test_a_line_of_many_messages_cut_by_the_feed_cap_is_not_offered_again() -> None:
    """Each step after the cap retried the block decoder and the line decoder on
    the rest of the line: quadratic in the line (91 us per event at 64,000)."""
    framer, blocks, lines = counting_client_framer(feed_messages=64)
    data = b" ".join(stamped_stop(index) for index in range(4000)) + b"\r\n"
    out = framer.feed(data, budget=4096)
    steps = 1
    while framer.pending:
        out += framer.feed(b"", budget=4096)
        steps += 1
    assert len(out) == 4000 and steps > 10  # the cap cut the line many times
    assert sum(blocks) + sum(lines) <= 3 * len(data)


def test_a_reply_in_a_big_read_sends_only_its_piece_line_by_line() -> None:
    """One reply near the start of a 256 KiB read sent all 3,300 lines of the
    read down the line-by-line path (the reviewer's finding)."""
    framer, blocks, lines = counting_client_framer()
    stops = [stamped_stop(index) + b"\r\n" for index in range(3300)]
    reply = b'{"return": {}, "id": "7"}\r\n'
    data = b"".join([*stops[:10], reply, *stops[10:]])
    out = framer.feed(data)
    assert [type(item).__name__ for item in out].count("Stop") == 3300
    assert sum(lines) <= BLOCK_PIECE + len(reply)  # the refused piece's lines, no more
    assert sum(blocks) <= 2 * len(data)


def test_a_big_read_is_decoded_in_pieces_each_event_keeping_only_its_own() -> None:
    framer, blocks, _lines = counting_client_framer()
    stops = [stamped_stop(index) + b"\r\n" for index in range(4000)]  # about 340 KiB
    data = b"".join(stops)
    out = read_events(framer, data)
    assert len(out) == 4000
    assert sum(blocks) == len(data) and max(blocks) <= BLOCK_PIECE
    shared = out[-1]._raw  # the piece's text, until the raw is read
    assert isinstance(shared, tuple) and len(shared[0]._text) <= BLOCK_PIECE
    assert [event.raw for event in out] == [stop[:-2] for stop in stops]


def test_blanks_before_a_message_are_no_part_of_its_size_wherever_the_read_cuts() -> None:
    head = b'{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}, "data": {"x": "'
    message = head + b"y" * (298 - len(head) - 3) + b'"}}'  # under the limit of 300
    data = b"  " + message + b" \n"
    for cut in range(1, len(data)):
        out = feed_all(client_framer(max_message_size=300), [data[:cut], data[cut:]])
        assert [type(item).__name__ for item in out] == ["Stop"], cut


def test_raw_asked_for_deep_in_the_stack_of_an_event_nested_deep() -> None:
    text = (b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP", "data": '
            b'{"x": ' + b"[" * 600 + b"]" * 600 + b', "s": "[{\\"}"}}')
    odd = (b'{"timestamp": {"seconds": 1, "microseconds": 3}, "event": "RESUME", '
           b'"data": {"y": 0e1}}')  # a number QEMU's lexer splits: valid JSON all the same
    event, other = read_events(client_framer(), text + b"\n" + odd + b"\n")

    def raw_at_depth(depth: int) -> bytes | None:
        return event.raw if depth == 0 else raw_at_depth(depth - 1)

    frame: Any = sys._getframe()
    here = 0
    while frame is not None:
        here, frame = here + 1, frame.f_back
    # 600 levels asked for 560 frames short of the limit: msgspec's pass needs 600.
    assert raw_at_depth(sys.getrecursionlimit() - 560 - here) == text
    assert other.raw == odd


def test_an_escaped_event_key_is_an_event_whatever_shares_its_read() -> None:
    escaped = b'{"\\u0065vent": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}'
    reply = b'{"return": {}, "id": "a"}'
    alone = client_framer().feed(escaped + b"\n")
    shared = client_framer().feed(escaped + b"\n" + reply + b"\n")
    assert [type(item).__name__ for item in alone] == ["Stop"]
    assert [type(item).__name__ for item in shared] == ["Stop", "Return"]


# --- hypothesis: chunking, exactness, garbage -----------------------------------------

def _qemu_char(char: str) -> bool:
    """QEMU refuses surrogates and noncharacters (U+FDD0..U+FDEF, U+xFFFE/F)."""
    code = ord(char)
    return not (0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE)


texts = st.text(st.characters(exclude_categories=SURROGATES).filter(_qemu_char), max_size=8)
ascii_texts = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8)


def json_values(text: st.SearchStrategy[str], big: int) -> st.SearchStrategy[Any]:
    scalars = (st.none() | st.booleans() | st.integers(-big, big)
               | st.floats(allow_nan=False, allow_infinity=False) | text)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=12,
    )


@st.composite
def message_text(draw: st.DrawFn, ascii_only: bool = False) -> bytes:
    """One valid QMP-ish message in one of several spellings."""
    text = ascii_texts if ascii_only else texts
    # In ASCII-only mode, no integer of 19+ digits either (the non-exact
    # typed framer keeps those exact where QEMU turns them into doubles).
    big = 10**18 - 1 if ascii_only else 2**70
    value = {"execute": draw(text.filter(bool)), "id": draw(json_values(text, big))}
    styles = ["compact", "spaced", "pretty"] if ascii_only else [
        "compact", "spaced", "ascii", "pretty"]
    style = draw(st.sampled_from(styles))
    if style == "compact":
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    if style == "spaced":
        return json.dumps(value, ensure_ascii=False).encode()
    if style == "ascii":
        return json.dumps(value).encode()
    return json.dumps(value, indent=2).replace("\n", "\r\n").encode()


@st.composite
def valid_streams(draw: st.DrawFn) -> bytes:
    parts = []
    for text in draw(st.lists(message_text(), min_size=1, max_size=6)):
        parts.append(draw(st.sampled_from([b"", b" ", b"\r\n", b"\n\n"])))
        parts.append(text)
        parts.append(draw(st.sampled_from([b"\r\n", b"\n", b" \r\n", b""])))
    return b"".join(parts) + b"\n"


_fragments = st.sampled_from([
    b"{", b"}", b"[", b"]", b":", b",", b'"', b"'", b"\\", b"\\u", b"\\ud83d", b"\\u00e9",
    b"\n", b"\r\n", b" ", b"\t", b"\x0c", b"\x0b", b"\x00", b"\xff", b"\xfe", b"\xc3\xa9",
    b"\xc0\x80", b"true", b"nope", b"null", b"-", b"0", b"1.5e3", b"12345678901234567890",
    b'"a"', b'"a":1', b'{"a":1,"a":2}', b"{}", b"[]", b'{"execute": "x"}',
    b"\x7f", b"1e999", b"-0", b"-0.0",
])
garbage_streams = st.lists(
    st.one_of(_fragments, message_text(), st.binary(max_size=12)), max_size=20,
).map(b"".join)


def check_exact(data: bytes, cuts: list[int], framer: Framer[Any], ref: Reference) -> None:
    """The fast+exact framer == the exact path alone, after every chunk.

    After each chunk the framer has produced a prefix of what the exact path
    produced for the same bytes (the fast path may hold an unterminated line
    starting with ``{``/``[`` a little longer, never get it wrong); whenever the
    bytes so far end with a newline, and at the end, exactly the same.
    """
    got: list[Any] = []
    fed = b""
    for chunk in [*split_at(data, cuts), b"\n"]:
        got.extend(canon(item) for item in framer.feed(chunk))
        ref.feed(chunk)
        fed += chunk
        want = [canon(item) for item in ref.out]
        if fed.endswith(b"\n"):
            assert got == want, (fed, got, want)
        else:
            assert got == want[:len(got)], (fed, got, want)
        # A stray byte is answered as soon as it arrives, as QEMU does, with
        # everything before it: only what follows the last one may lag.
        lexical = [i for i, item in enumerate(ref.out)
                   if isinstance(item, ParseError) and item.kind is ParseErrorKind.LEXICAL]
        if lexical:
            assert len(got) > lexical[-1], (fed, got, want)
        assert framer.buffered <= framer._max_fast_line


# QMPEVENTS_FUZZ_EXAMPLES raises the count for a long fuzz run.
EXACT = settings(max_examples=int(os.environ.get("QMPEVENTS_FUZZ_EXAMPLES", "300")), deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@EXACT
@given(valid_streams(), st.lists(st.integers(min_value=0), max_size=12))
def test_any_split_of_a_valid_stream_decodes_the_same(data: bytes, cuts: list[int]) -> None:
    whole = [canon(v) for v in value_framer().feed(data)]
    assert not any(kind == "error" for kind, _ in whole)
    assert [canon(v) for v in feed_all(value_framer(), split_at(data, cuts))] == whole
    assert whole == [canon(v) for v in reference(data)]


@EXACT
@given(st.binary(max_size=200), st.lists(st.integers(min_value=0), max_size=10))
def test_fast_path_equals_exact_path_on_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    check_exact(data, cuts, value_framer(), Reference())


@pytest.mark.slow
@EXACT
@given(garbage_streams, st.lists(st.integers(min_value=0), max_size=10))
def test_fast_path_equals_exact_path_on_mixed_streams(data: bytes, cuts: list[int]) -> None:
    check_exact(data, cuts, value_framer(), Reference())


@pytest.mark.fuzz
@EXACT
@given(garbage_streams, st.lists(st.integers(min_value=0), max_size=10),
       st.integers(min_value=4, max_value=80), st.integers(min_value=1, max_value=5))
def test_fast_path_equals_exact_path_with_small_limits(
        data: bytes, cuts: list[int], size: int, depth: int) -> None:
    decoder = msgspec.json.Decoder()
    framer: Framer[Any] = Framer(decoder.decode, lambda value: value, qemu_exact=True,
                                 max_message_size=size, max_nesting=depth)
    check_exact(data, cuts, framer, Reference(max_message_size=size, max_nesting=depth))


@EXACT
@given(st.lists(st.binary(max_size=300), max_size=12), st.integers(min_value=8, max_value=512))
def test_garbage_never_raises_and_buffer_stays_bounded(chunks: list[bytes], limit: int) -> None:
    for framer in (value_framer(max_message_size=limit),
                   client_framer(max_message_size=limit)):
        for chunk in chunks:
            for item in framer.feed(chunk):
                assert isinstance(item, ParseError | messages.Unrecognized | messages.Greeting
                                  | messages.Return | messages.ErrorReply | dict | list | str
                                  | int | float | type(None)) or hasattr(item, "raw"), item
            assert framer.buffered <= limit


@pytest.mark.slow
@pytest.mark.parametrize("raw_read", [False, True])
@EXACT
@given(st.lists(message_text(ascii_only=True), min_size=1, max_size=5),
       st.lists(st.integers(min_value=0), max_size=8))
def test_typed_framer_equals_exact_path_on_valid_streams(raw_read: bool, texts: list[bytes],
                                                         cuts: list[int]) -> None:
    data = b"\r\n".join(texts) + b"\r\n"
    got = feed_all(client_framer(raw_read=raw_read), split_at(data, cuts))
    want = [messages.from_value(value) for value in reference(data)]
    assert got == want
    assert [getattr(item, "raw", None) for item in got] == [
        getattr(item, "raw", None) for item in feed_all(line_framer(), split_at(data, cuts))]


# --- C-speed runs of the exact path: the same as byte by byte -----------------------------

_RUN_PIECES = [
    b"{", b"}", b"[", b"]", b":", b",", b" ", b"\n", b"\t", b"\r", b"\x01", b"\xff", b"@",
    b'"' + b"s" * 40, b"'" + b"q" * 40, b"\\u00e9" * 5, b"\\", b'"', b"'", b"1" * 30,
    b"1.5e" + b"7" * 30, b"-0.", b"tru" + b"e" * 30, b"null", b" " * 30, b"z" * 30,
    b"\xc3\xa9" * 10, b'{"execute": "x", "arguments": {"a": "' + b"y" * 50,
]


@pytest.mark.parametrize("gather_above", [lexer.GATHER_ABOVE, 8])
@pytest.mark.parametrize("limit", [48, 100, 1000])
def test_runs_of_the_exact_path_give_what_byte_by_byte_gives(
        monkeypatch: pytest.MonkeyPatch, limit: int, gather_above: int) -> None:
    # Long strings, digits, keywords, blanks and garbage, a size limit that falls
    # inside the runs, any read split and any budget: exactly the reference's output.
    # (With a small gather_above, string tokens go on in a Gathering: the same.)
    monkeypatch.setattr(lexer, "GATHER_ABOVE", gather_above)
    rng = random.Random(limit)
    for _ in range(400):
        data = b"".join(rng.choices(_RUN_PIECES, k=rng.randrange(1, 40))) + b"\n\xff\n"
        framer = value_framer(max_message_size=limit)
        budget = rng.choice((None, 1, 7, 300))
        out: list[Any] = []
        for chunk in split_at(data, [rng.randrange(len(data) + 1) for _ in range(3)]):
            out.extend(framer.feed(chunk, budget=budget))
        while framer.pending:
            out.extend(framer.feed(b"", budget=budget))
        expected = reference(data, max_message_size=limit)
        assert [canon(item) for item in out] == [canon(item) for item in expected], data


def test_string_over_the_size_limit_is_lexed_at_c_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    lexed = 0
    feed_byte = Streamer.feed_byte

    def counting(self: Streamer, byte: int) -> None:
        nonlocal lexed
        lexed += 1
        feed_byte(self, byte)

    monkeypatch.setattr(Streamer, "feed_byte", counting)
    limit = 1 << 20
    data = (b'{"execute": "x", "arguments": {"a": "' + b"A" * (limit + 100) + b'"}}\n'
            + b'{"execute": "next"}\n')
    framer = value_framer(max_message_size=limit)
    out = [item for start in range(0, len(data), 8192)
           for item in framer.feed(data[start:start + 8192], budget=4096)]
    while framer.pending:
        out.extend(framer.feed(b"", budget=4096))
    assert errors(out) == ["JSON token size limit exceeded", "JSON parse error, stray 'A'",
                           "JSON parse error, expecting value",
                           "JSON parse error, expecting value"]
    assert out[-1] == {"execute": "next"}
    assert lexed < 1000  # the tokens around the string, not its megabyte
