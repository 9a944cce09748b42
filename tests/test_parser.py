"""QEMU's lexer, streamer and parser ports (the exact path), unit by unit."""

from __future__ import annotations

from typing import Any

import pytest

from qmpevents.codec import ParseError
from qmpevents.codec.lexer import Streamer, Tok, TokenRun
from qmpevents.codec.parser import JSONParseError, parse_string, parse_tokens


def lex(data: bytes, **limits: int) -> list[Any]:
    """Every message (token list) or error text the streamer emits for *data*."""
    out: list[Any] = []

    def emit(tokens: TokenRun | None, error: ParseError | None) -> None:
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
