"""QEMU's lexer, streamer and parser ports (the exact path), unit by unit."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from qmpevents.codec import ParseError, ParseErrorKind, parser
from qmpevents.codec.lexer import Streamer, Tok, TokenRun
from qmpevents.codec.parser import JSONParseError, parse_string, parse_tokens
from qmpevents.codec.stray import PendingStray


def lex(data: bytes, **limits: int) -> list[Any]:
    """Every message (token list) or error text the streamer emits for *data*."""
    out: list[Any] = []

    def emit(tokens: TokenRun | None, error: ParseError | PendingStray | None) -> None:
        if isinstance(error, PendingStray):  # a huge token's stray error, built late
            error = error.now()
        out.append(error.desc if error is not None else list(tokens or []))

    streamer = Streamer(emit, **limits)
    for byte in data:
        streamer.feed_byte(byte)
    return out


def parse(data: bytes) -> Any:
    (tokens,) = lex(data + b"\n")
    assert isinstance(tokens, list), tokens
    return parse_tokens(tokens)


def parse_error(data: bytes) -> str:
    with pytest.raises(JSONParseError) as info:
        parse(data)
    return info.value.desc


# --- lexer / streamer -------------------------------------------------------------------

def test_tokens_of_a_message() -> None:
    (tokens,) = lex(b"{'a': [1, -2.5e3, true, \"x\"]}")
    assert tokens == [(Tok.LCURLY, b"{"), (Tok.STRING, b"'a'"), (Tok.COLON, b":"),
                      (Tok.LSQUARE, b"["), (Tok.INTEGER, b"1"), (Tok.COMMA, b","),
                      (Tok.FLOAT, b"-2.5e3"), (Tok.COMMA, b","), (Tok.KEYWORD, b"true"),
                      (Tok.COMMA, b","), (Tok.STRING, b'"x"'), (Tok.RSQUARE, b"]"),
                      (Tok.RCURLY, b"}")]


def test_scalar_at_top_level_needs_the_next_byte() -> None:
    assert lex(b"42") == []
    assert lex(b"42 ") == [[(Tok.INTEGER, b"42")]]
    assert lex(b'"s"') == [[(Tok.STRING, b'"s"')]]


def test_streamer_idle_only_at_a_message_boundary() -> None:
    streamer = Streamer(lambda tokens, error: None)
    assert streamer.idle
    for byte in b'{"a": ':
        streamer.feed_byte(byte)
    assert not streamer.idle
    for byte in b"1}":
        streamer.feed_byte(byte)
    assert streamer.idle


def test_stray_byte_error_and_recovery() -> None:
    assert lex(b"@{}") == ["JSON parse error, stray '@'", [(Tok.LCURLY, b"{"),
                                                            (Tok.RCURLY, b"}")]]


def test_stray_error_text_stops_at_nul() -> None:
    assert lex(b'"a\x00b"')[0] == "JSON parse error, stray '\"a'"


def test_unbalanced_closer_is_delivered_at_once() -> None:
    assert lex(b"]") == [[(Tok.RSQUARE, b"]")]]


def test_nesting_limit_counts_the_outer_object() -> None:
    assert lex(b"[[[]]]", max_nesting=3)[0] != "JSON nesting depth limit exceeded"
    assert lex(b"[[[[]]]]", max_nesting=3)[0] == "JSON nesting depth limit exceeded"


def test_token_size_limit() -> None:
    assert lex(b'"' + b"a" * 20 + b'"', max_message_size=10)[0] == (
        "JSON token size limit exceeded")


def test_token_count_limit() -> None:
    out = lex(b"[" + b"1," * 20 + b"1]", max_tokens=10)
    assert out[0] == "JSON token count limit exceeded"


# --- parser -----------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "value"), [
    (b'{"a": {"b": [1, 2, {}]}, "c": []}', {"a": {"b": [1, 2, {}]}, "c": []}),
    (b"[true, false, null]", [True, False, None]),
    (b"-0", 0),
    (b"1.5", 1.5),
    (b"1E2", 100.0),
    (b"18446744073709551615", 18446744073709551615),
    (b"18446744073709551616", 1.8446744073709552e19),
    (b"-9223372036854775808", -9223372036854775808),
    (b"-9223372036854775809", -9.223372036854776e18),
    (b"'single \\' \"quoted\"'", "single ' \"quoted\""),
    (b'"\\u00e9\\u00E9 \\/ \\b\\f\\n\\r\\t \\\\ \\""', "\u00e9\u00e9 / \b\f\n\r\t \\ \""),
    (b'"\\ud83d\\ude00"', "\U0001F600"),
    (b'"\\u0000"', "\0"),
    (b'"\xc3\xa9\xe2\x98\x83"', "\u00e9\u2603"),
    (b'"\xc0\x80"', "\0"),  # modified UTF-8 NUL
    (b'"\x7f"', "\x7f"),
])
def test_values(data: bytes, value: Any) -> None:
    result = parse(data)
    assert result == value
    assert type(result) is type(value)


@pytest.mark.parametrize(("data", "desc"), [
    (b'{"a": }', "JSON parse error, expecting value"),
    (b"[1,]", "JSON parse error, expecting value"),
    (b'{"a": nope}', "JSON parse error, invalid keyword 'nope'"),
    (b'{"a": 1 ]', "JSON parse error, expected separator in dict"),
    (b"[1 2]", "JSON parse error, expected separator in list"),
    (b'{"a": 1, "a": 2}', "JSON parse error, duplicate key"),
    (b'{"a" 1}', "JSON parse error, missing : in object pair"),
    (b"{1: 2}", "JSON parse error, key is not a string in object"),
    (b"{[]: 2}", "JSON parse error, key is not a string in object"),
    (b'"\\q"', "JSON parse error, invalid escape sequence in string"),
    (b'"\\ud800"', "JSON parse error, \\ud800 is not a valid Unicode character"),
    (b'"\\ud83dx"', "JSON parse error, \\ud83d is not a valid Unicode character"),
    (b'"\\uFFFE"', "JSON parse error, \\uFFFE is not a valid Unicode character"),
    (b'"\xef\xb7\x90"', "JSON parse error, invalid UTF-8 sequence in string"),
    (b'"\xed\xa0\x80"', "JSON parse error, invalid UTF-8 sequence in string"),
])
def test_errors(data: bytes, desc: str) -> None:
    assert parse_error(data) == desc


def test_premature_end() -> None:
    with pytest.raises(JSONParseError, match="premature EOI"):
        parse_tokens([(Tok.LCURLY, b"{"), (Tok.STRING, b'"a"'), (Tok.COLON, b":")])


def test_deep_nesting_is_not_recursive() -> None:
    depth = 1024
    value = parse(b"[" * depth + b"]" * depth)
    for _ in range(depth - 1):
        assert isinstance(value, list) and len(value) == 1
        value = value[0]
    assert value == []


def test_parse_string_directly() -> None:
    assert parse_string(b'"a\\nb"') == "a\nb"
    assert parse_string(b"'it\\'s'") == "it's"


# --- big strings: C-speed slices, exactly QEMU's loop ----------------------------------

_ESCAPE_VALUES = {ord('"'): '"', ord("'"): "'", ord("\\"): "\\", ord("/"): "/",
                  ord("b"): "\b", ord("f"): "\f", ord("n"): "\n", ord("r"): "\r", ord("t"): "\t"}


def qemu_string_loop(text: bytes) -> str:
    """QEMU's ``parse_string`` as it is written (json-parser.c), one step per escape:
    the reference the sliced, C-speed conversion must match."""
    def fail(message: str) -> JSONParseError:
        return JSONParseError(ParseError(ParseErrorKind.SYNTAX, f"JSON parse error, {message}"))

    def valid(cp: int) -> bool:
        return 0 <= cp <= 0x10FFFF and not 0xD800 <= cp <= 0xDFFF and not (
            (cp & 0xFFFE) == 0xFFFE or 0xFDD0 <= cp <= 0xFDEF)

    def hex4(at: int) -> int:
        digits = text[at:at + 4]
        if len(digits) != 4 or any(b not in b"0123456789abcdefABCDEF" for b in digits):
            return -1
        return int(digits, 16)

    quote, out, i = text[0], [], 1
    while text[i] != quote:
        if text[i] == 0x5C:
            begin, kind = i, text[i + 1]
            i += 2
            if kind in _ESCAPE_VALUES:
                out.append(_ESCAPE_VALUES[kind])
                continue
            if kind != ord("u"):
                raise fail("invalid escape sequence in string")
            cp = hex4(i)
            i += 4
            if 0xD800 <= cp <= 0xDBFF and text[i:i + 2] == b"\\u":
                trailing = hex4(i + 2)
                if 0xDC00 <= trailing <= 0xDFFF:
                    cp = (0x10000 + ((cp & 0x3FF) << 10)) | (trailing & 0x3FF)
                    i += 6
                else:
                    cp = -1
            if cp != 0 and not valid(cp):
                raise fail(f"{text[begin:i].decode('utf-8', 'replace')} is not a valid "
                           "Unicode character")
            out.append(chr(cp))
            continue
        # mod_utf8_codepoint: one character; C0 80 is NUL.
        if text[i:i + 2] == b"\xc0\x80":
            out.append("\0")
            i += 2
            continue
        for size in (1, 2, 3, 4):
            try:
                char = text[i:i + size].decode("utf-8")
            except UnicodeDecodeError:
                continue
            break
        else:
            raise fail("invalid UTF-8 sequence in string")
        if not valid(ord(char)):
            raise fail("invalid UTF-8 sequence in string")
        out.append(char)
        i += size
    return "".join(out)


_PIECES = [
    b"plain text ", b"x", b"\\u00e9", b"\\u00E9", b"\\\"", b"\\\\", b"\\\\\\\\", b"\\/",
    b"\\'", b"\\n\\t", b"\\q", b"\\u12", b"\\u12G4", b"\\ud83d\\ude00", b"\\uD83D\\uDE00",
    b"\\ud800", b"\\udc00", b"\\ud800\\u0041", b"\\ud800\\n", b"\\uFFFE", b"\\uFDD0",
    b"\\u0000", b"\\ud83f\\udffe", b"\xc3\xa9", b"\xe2\x98\x83", b"\xf0\x9f\x98\x80",
    b"\xef\xbf\xbe", b"\xef\xb7\x90", b"\xc0\x80", b"\xed\xa0\x80", b"\x80", b"\xc3",
    b"\xf4\x90\x80\x80", b"\x7f", b"'", b'"',
]


def random_string_token(rng: random.Random, quote: bytes) -> bytes:
    pieces = [piece for piece in _PIECES if piece != quote]
    weights = [30 if piece in (b"x", b"plain text ", b"\\u00e9") else 1 for piece in pieces]
    body = b"".join(rng.choices(pieces, weights, k=rng.randrange(1, 60)))
    return quote + body + quote


def converted(convert: Any, text: Any) -> Any:
    try:
        return ("value", convert(text))
    except JSONParseError as exc:
        return ("error", exc.desc)


@pytest.mark.parametrize("segment", [8, 13, 64])
def test_sliced_string_conversion_is_qemus_loop(monkeypatch: pytest.MonkeyPatch,
                                                segment: int) -> None:
    # Tiny slices: every way of cutting a string (escapes, pairs, UTF-8, backslash
    # runs) is met in a few thousand strings.
    monkeypatch.setattr(parser, "STRING_SEGMENT", segment)
    rng = random.Random(segment)
    for _ in range(3000):
        text = random_string_token(rng, rng.choice((b'"', b"'")))
        expected = converted(qemu_string_loop, text)
        assert converted(parse_string, text) == expected, text
        # ... and within a message, parsed in steps.
        message = [(Tok.LCURLY, b"{"), (Tok.STRING, text), (Tok.COLON, b":"),
                   (Tok.STRING, text), (Tok.RCURLY, b"}")]
        got = converted(parse_tokens, message)
        if expected[0] == "value":
            assert got == ("value", {expected[1]: expected[1]}), text
        else:
            assert got == expected, text


@pytest.mark.parametrize(("piece", "char"), [
    (b"\\u00e9", "\u00e9"), (b"\\\\", "\\"), (b"\\ud83d\\ude00", "\U0001F600"),
    (b"\xc3\xa9", "\u00e9"), (b"x", "x"), (b"\\n\xe2\x98\x83", "\n\u2603"),
])
def test_huge_valid_string_is_converted_in_short_c_speed_steps(
        monkeypatch: pytest.MonkeyPatch, piece: bytes, char: str) -> None:
    exact = []
    monkeypatch.setattr(parser, "_exact_steps", lambda *args: exact.append(args))
    count = (4 << 20) // len(piece)
    steps = parser.string_steps(b'"' + piece * count + b'"')
    longest, pauses = 0.0, 0
    while True:
        began = time.process_time()
        try:
            next(steps)
        except StopIteration as done:
            value = done.value
            break
        finally:
            longest = max(longest, time.process_time() - began)
        pauses += 1
    assert not exact  # every slice was cut where both sides convert alike
    assert value == char * count
    assert pauses >= (4 << 20) // parser.STRING_SEGMENT - 1
    assert longest < 0.05, longest  # was one step of the whole string (1.2 s for 9 MiB)


def test_huge_string_with_one_bad_character_is_refused_as_qemu_does() -> None:
    text = b'"' + b"\\u00e9" * (1 << 18) + b"\\uFFFE" + b"\\u00e9" * 4 + b'"'
    with pytest.raises(JSONParseError, match="uFFFE is not a valid Unicode character"):
        parse_string(text)
