"""Record real QEMU's exact QMP replies to protocol-level inputs.

Usage::

    python tests/qemu_replies.py OUT.json    # e.g. tests/data/qemu72_replies.json

writes a JSON list of ``{"input": <input bytes as latin-1 text>, "negotiate": bool,
"replies": [line, ...]}``. Reply lines are raw (event timestamps are kept; the
consumer masks them), decoded as text, without their CRLF. Every default input is
recorded twice: before negotiation (``negotiate: false``) and after it. An entry
whose input produced more than :data:`MAX_STORED_REPLIES` lines (the over-deep
nesting case) keeps only the first 3 lines in ``replies`` and adds
``"reply_count"`` (all lines) and ``"error_count"`` (lines with an ``"error"``).

Importable: :func:`capture`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qemu_support import QemuProcess  # tests/ is on sys.path

from qmpevents.testing import ProbeTimeoutError, RawQMP

__all__ = ["DEFAULT_INPUTS", "EVENT_INPUTS", "capture", "parser_idle_after", "records"]

#: Read timeout (seconds) for inputs that leave QEMU's parser mid-message.
QUIET = 2.0
MAX_STORED_REPLIES = 100

# --------------------------------------------------------------------------------------
# A model of QEMU 7.2's JSON lexer (qobject/json-lexer.c) and streamer
# (qobject/json-streamer.c), only to tell whether given bytes leave the parser idle.
# --------------------------------------------------------------------------------------

_START, _RECOVERY, _DQ, _DQ_ESC, _SQ, _SQ_ESC = range(6)
_ZERO, _DIGITS, _SIGN, _MANT, _MANT_DIGITS, _EXP_E, _EXP_SIGN, _EXP_DIGITS, _KEYWORD = range(6, 15)
# Pseudo-states returned by _step():
_TOKEN = 100  # a token ends with this (consumed) char
_TOKEN_LA = 101  # a scalar token ended just before this char (lookahead, not consumed)
_ERROR = 102  # lexical error; char consumed; lexer enters recovery
_RESYNC = 103  # recovery ends just before this char (lookahead, not consumed)

_STRUCT = frozenset(b"[]{}:,")
_DIGIT = frozenset(b"0123456789")
_LOWER = frozenset(range(ord("a"), ord("z") + 1))
_START_OF = {0x22: _DQ, 0x27: _SQ, 0x30: _ZERO, 0x2D: _SIGN}


def _step(state: int, c: int) -> int:
    """One transition of QEMU's lexer table: the next state or a pseudo-state."""
    if state == _START:
        if c in b" \t\r\n":
            return _START
        if c in _STRUCT:
            return _TOKEN
        if c in _START_OF:
            return _START_OF[c]
        if c in _DIGIT:
            return _DIGITS
        return _KEYWORD if c in _LOWER else _ERROR
    if state == _RECOVERY:
        if (c < 0x20 and c != 0x09) or c >= 0xFE or c in _STRUCT:
            return _RESYNC
        return _RECOVERY
    if state in (_DQ, _SQ):
        if not 0x20 <= c <= 0xFD:
            return _ERROR
        if c == 0x5C:
            return state + 1  # _DQ_ESC / _SQ_ESC
        return _TOKEN if c == (0x22 if state == _DQ else 0x27) else state
    if state in (_DQ_ESC, _SQ_ESC):
        return state - 1 if 0x20 <= c <= 0xFD else _ERROR
    if state == _ZERO:
        if c in _DIGIT:
            return _ERROR
        return _MANT if c == 0x2E else _TOKEN_LA
    if state == _DIGITS:
        if c in _DIGIT:
            return _DIGITS
        if c in b"eE":
            return _EXP_E
        return _MANT if c == 0x2E else _TOKEN_LA
    if state == _SIGN:
        if c == 0x30:
            return _ZERO
        return _DIGITS if c in _DIGIT else _ERROR
    if state == _MANT:
        return _MANT_DIGITS if c in _DIGIT else _ERROR
    if state == _MANT_DIGITS:
        if c in _DIGIT:
            return _MANT_DIGITS
        return _EXP_E if c in b"eE" else _TOKEN_LA
    if state == _EXP_E:
        if c in b"+-":
            return _EXP_SIGN
        return _EXP_DIGITS if c in _DIGIT else _ERROR
    if state == _EXP_SIGN:
        return _EXP_DIGITS if c in _DIGIT else _ERROR
    if state == _EXP_DIGITS:
        return _EXP_DIGITS if c in _DIGIT else _TOKEN_LA
    assert state == _KEYWORD
    return _KEYWORD if c in _LOWER else _TOKEN_LA


def parser_idle_after(data: bytes, max_nesting: int = 1024) -> bool:
    """Whether QEMU 7.2's fresh JSON parser is between messages after *data*.

    A model of ``qobject/json-lexer.c`` and ``qobject/json-streamer.c``. True when
    no token is half-lexed and no partial message is queued, so a following probe
    is parsed on its own (the lexer's error-*recovery* state counts as idle: the
    probe's leading ``{`` resynchronises it without an extra error). False e.g.
    after ``{``, an unterminated string, or a number/keyword with nothing after it
    (QEMU needs one more byte to end such a token).
    """
    state = _START
    brace = bracket = queued = 0

    def token(c: int | None) -> None:
        nonlocal brace, bracket, queued
        brace += {0x7B: 1, 0x7D: -1}.get(c or 0, 0)
        bracket += {0x5B: 1, 0x5D: -1}.get(c or 0, 0)
        if brace + bracket > max_nesting:  # "JSON nesting depth limit exceeded"
            brace = bracket = queued = 0
            return
        queued += 1
        if (brace > 0 or bracket > 0) and brace >= 0 and bracket >= 0:
            return
        brace = bracket = queued = 0  # message complete: parsed and emitted

    for c in data:
        while True:
            new = _step(state, c)
            if new == _RESYNC:
                state = _START
                continue  # look at c again
            if new == _TOKEN_LA:
                token(None)
                state = _START
                continue  # look at c again
            if new == _TOKEN:
                token(c if state == _START else None)
                state = _START
            elif new == _ERROR:
                brace = bracket = queued = 0  # "JSON parse error, stray '...'"
                state = _RECOVERY
            else:
                state = new
            break
    return state in (_START, _RECOVERY) and queued == 0


# --------------------------------------------------------------------------------------
# Capture
# --------------------------------------------------------------------------------------


def _text(lines: Iterable[bytes]) -> list[str]:
    return [line.removesuffix(b"\r\n").decode("utf-8", "surrogateescape") for line in lines]


async def _capture_one(socket_path: str, data: bytes, negotiate: bool) -> list[str]:
    qmp = await RawQMP.unix(socket_path, timeout=10.0, retry=True)
    lines: list[bytes] = []
    idle = parser_idle_after(data)
    try:
        if negotiate:
            await qmp.negotiate(timeout=10.0)
        else:
            await qmp.greeting(timeout=10.0)
        await qmp.send(data)
        if idle:
            try:
                lines = await qmp.sync(quiet=QUIET)
            except ProbeTimeoutError as exc:
                print(f"warning: probe swallowed after {data[:60]!r}", file=sys.stderr)
                lines = exc.lines
        else:
            lines = await qmp.lines_until_quiet(quiet=QUIET)
    finally:
        tail = await qmp.aclose()
    if not idle:
        lines += tail
    return _text(lines)


async def capture(
    inputs: list[bytes], negotiate: bool, socket_path: str | None = None
) -> list[list[str]]:
    """QEMU's reply lines (text, CRLF stripped) to each input, in order.

    One QEMU serves all inputs (started here unless *socket_path* names a running
    one's QMP socket); each input gets a fresh connection, which is half-closed and
    drained to QEMU's EOF before the next one opens (QEMU serves one client at a time).
    If *negotiate*, ``qmp_capabilities`` is sent first (its reply is not recorded).

    How the end of the replies is found: if the input leaves QEMU's JSON parser idle
    (see :func:`parser_idle_after`), a probe ``{"execute": "query-status", "id":
    "__probe__"}`` follows and the replies are the lines before the probe's reply.
    Inputs that leave the parser mid-message (an unterminated ``{``/``[``/string, or
    a bare number or keyword with no byte after it) would swallow the probe -- and
    the probe's bytes would change what QEMU says -- so for those no probe is sent:
    lines are read with a 2 s timeout, the connection is closed, and whatever arrived
    (normally nothing) is recorded. Likewise, if a probe is unexpectedly not answered,
    the lines that came within the 2 s timeout are recorded and a warning is printed.
    """
    if socket_path is None:
        async with QemuProcess() as qemu:
            return await capture(inputs, negotiate, qemu.socket_path)
    return [await _capture_one(socket_path, data, negotiate) for data in inputs]


# --------------------------------------------------------------------------------------
# Default inputs
# --------------------------------------------------------------------------------------

CRLF = b"\r\n"


def _qs(id_json: bytes) -> bytes:
    """``query-status`` with a raw *id_json* id, CRLF-terminated."""
    return b'{"execute": "query-status", "id": ' + id_json + b"}" + CRLF


def _nested_id(depth: int) -> bytes:
    return _qs(b"[" * depth + b"]" * depth)


_UNICODE_RAW = "\u00e9\u2603\U0001f600".encode()

DEFAULT_INPUTS: list[bytes] = [
    # baseline and negotiation
    b'{"execute": "query-status"}' + CRLF,
    _qs(b"1"),
    b'{"execute": "qmp_capabilities"}' + CRLF,
    b'{"execute": "qmp_capabilities", "id": "c1"}\r\n{"execute": "qmp_capabilities", "id": "c2"}'
    + CRLF,
    b'{"execute": "qmp_capabilities", "arguments": {"enable": ["bogus"]}, "id": 9}' + CRLF,
    b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}\r\n'
    b'{"exec-oob": "query-status", "id": "oob1"}' + CRLF,
    # wire-doc error rows
    b'{"execute": "no-such-command", "id": 3}' + CRLF,
    b'{"execute": }' + CRLF,
    b'{"execute": "query-status",}' + CRLF,
    b"}" + CRLF,
    b"]" + CRLF,
    b'{"execute": nope}' + CRLF,
    b'{"execute": "query-status" ]' + CRLF,
    b'{"execute": "a\tb"}' + CRLF,
    _qs(b'"a\tb"'),
    b"[1,2,3]" + CRLF,
    b'"x"' + CRLF,
    b"42" + CRLF,
    b"null" + CRLF,
    b"{}" + CRLF,
    b'{"id": 5}' + CRLF,
    b'{"foo": 1}' + CRLF,
    b'{"execute": "query-status", "foo": 1, "id": 6}' + CRLF,
    b'{"execute": 1, "id": 7}' + CRLF,
    b'{"execute": "query-status", "arguments": [], "id": 8}' + CRLF,
    b'{"execute": "query-status", "arguments": {"x": 1}}' + CRLF,
    b'{"execute": "query-status", "arguments": null, "id": 11}' + CRLF,
    b'{"execute": "query-status", "control": {"run-oob": true}, "id": 12}' + CRLF,
    b'{"exec-oob": "query-status"}' + CRLF,
    b'{"exec-oob": "query-status", "execute": "query-status", "id": 10}' + CRLF,
    b'{"execute": "human-monitor-command", "arguments": {"command-line": 1}}' + CRLF,
    b'{"execute": "human-monitor-command", "arguments": {}}' + CRLF,
    b'{"execute": "human-monitor-command", "arguments": {"command-line": "info status"}, '
    b'"id": 17}' + CRLF,
    b'{"execute": "human-monitor-command", "arguments": {"command-line": "bogus"}}' + CRLF,
    b'{"execute": "device_del", "arguments": {"id": "nope"}}' + CRLF,
    b'{"execute": "qom-list", "arguments": {"path": "/nope"}}' + CRLF,
    # id echo
    _qs(b'"abc"'),
    _qs(b"-7"),
    _qs(b"0.1"),
    _qs(b"1.5"),
    _qs(b"1.0"),
    _qs(b"-0"),
    _qs(b"-0.0"),
    _qs(b"1e5"),
    _qs(b"1E+2"),
    _qs(b"2.5e-3"),
    _qs(b"123456789.123456789"),
    _qs(b"0.30000000000000004"),
    _qs(b"1e16"),
    _qs(b"1e17"),
    _qs(b"1e20"),
    _qs(b"1e-5"),
    _qs(b"1e-7"),
    _qs(b"1.7976931348623157e308"),
    _qs(b"1e400"),
    _qs(b"-1e400"),
    _qs(b"5e-324"),
    _qs(b"1e-400"),
    _qs(b"9223372036854775807"),
    _qs(b"-9223372036854775808"),
    _qs(b"9223372036854775808"),
    _qs(b"18446744073709551615"),
    _qs(b"18446744073709551616"),
    _qs(b"-9223372036854775809"),
    _qs(b"null"),
    _qs(b"true"),
    _qs(b"false"),
    _qs(b"{}"),
    _qs(b"[]"),
    _qs(b'{"b": 1, "a": 2, "c": 3, "id": 4, "execute": 5, "z": {"y": 1, "x": 2}}'),
    _qs(b'{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7, "h": 8}'),
    _qs(b'{"h": 8, "g": 7, "f": 6, "e": 5, "d": 4, "c": 3, "b": 2, "a": 1}'),
    _qs(b'[1, [2, [3, []]], {"k": [null, true]}, "s"]'),
    _qs(b'"' + _UNICODE_RAW + b'"'),
    _qs(b'"\\u00e9\\u2603\\ud83d\\ude00"'),
    _qs(b'"\\u00E9\\u2603\\uD83D\\uDE00"'),
    _qs(b'"\\u0000"'),
    _qs(b'"a\\u0000b"'),
    _qs(b'"\\uD800"'),
    _qs(b'"\\uDC00"'),
    _qs(b'"\\ud800"'),
    _qs(b'"\\udbff\\udfff"'),
    _qs(b'"\\uD800x"'),
    _qs(b'"\\uFFFE"'),
    _qs(b'"\\uFFFF"'),
    _qs(b'"\\u0041"'),
    _qs(b'"\\u001f\\u007f\\u0080"'),
    _qs(b'"a\\/b"'),
    _qs(b'"\\b\\f\\n\\r\\t\\"\\\\"'),
    _qs(b'"\\\'"'),
    _qs(b'"\\x"'),
    _qs(b'"\\u12"'),
    _qs(b'"\x7f"'),
    # other JSON syntax / framing
    b"{'execute': 'query-status', 'id': 'sq'}" + CRLF,
    b"{'execute': 'query-status', 'id': 'it''s'}" + CRLF,
    b"{'execute': 'query-status', 'id': '\"dq\" \\' sq'}" + CRLF,
    b'{"execute": "query-status", "id": 1}{"execute": "query-status", "id": 2}' + CRLF,
    b'{"execute": "query-status", "id": 1}\r\n{"execute": "query-status", "id": 2}\r\n'
    b'{"execute": "query-status", "id": 3}' + CRLF,
    b'{"execute": "query-status", "id": "nonl"}',
    b'\r\n\r\n  \t{"execute": "query-status", "id": "ws"}' + CRLF,
    b'{"execute": "query-status", "id": "lf"}\n',
    b'{\r\n  "execute" : "query-status" ,\r\n  "id" : "multi"\r\n}' + CRLF,
    CRLF,
    b"[}" + CRLF,
    b'{"a" 1}' + CRLF,
    b"{1: 2}" + CRLF,
    b'{"a": 1 "b": 2}' + CRLF,
    b"[1 2]" + CRLF,
    b'{"execute": "query-status", "execute": "query-status"}' + CRLF,
    b'{"id": 1, "id": 2, "execute": "query-status"}' + CRLF,
    b'{"execute": "query-status", "id": "dup", "execute": "stop"}' + CRLF,
    # invalid UTF-8 in a string
    _qs(b'"\xc3\x28"'),
    _qs(b'"\xff"'),
    _qs(b'"\xfe"'),
    _qs(b'"\xc0\x80"'),
    _qs(b'"\xed\xa0\x80"'),
    _qs(b'"\xe2\x98"'),
    # numbers and keywords, bare and as id
    b"-" + CRLF,
    b"-0" + CRLF,
    b"01" + CRLF,
    b"1." + CRLF,
    b"1e5" + CRLF,
    b"1E+2" + CRLF,
    b".5" + CRLF,
    _qs(b"-"),
    _qs(b"01"),
    _qs(b"1."),
    _qs(b".5"),
    _qs(b"+1"),
    _qs(b"True"),
    _qs(b"nul"),
    _qs(b"nope"),
    b"True" + CRLF,
    b"nul" + CRLF,
    b"nope" + CRLF,
    b"true" + CRLF,
    # NUL byte and other control bytes outside strings
    b"\x00" + CRLF,
    b'{"execute": "query-status",\x00 "id": 1}' + CRLF,
    b'\x00{"execute": "query-status", "id": "after-nul"}' + CRLF,
    b'\xff{"execute": "query-status", "id": "after-ff"}' + CRLF,
    b'\x01{"execute": "query-status", "id": "after-01"}' + CRLF,
    # a stray byte inside a message, answered at once (tests/qtest/qmp-test.c, qmp_protocol)
    b"{\xff",
    b"{\x01",
    b"{'bad \xff",
    b'{"execute": "query-status", "id": [1, 2, \x01',
    # nesting limit: total depth 1024 is fine, 1025 is not
    _nested_id(1023),
    _nested_id(1024),
    # inputs that leave the parser mid-message (no probe; 2 s read timeout)
    b"{",
    b"[" + CRLF,
    b'{"execute": "query-status"' + CRLF,
    b'{"execute": "query-status", "id": "unterminated' + CRLF,
    b"42",
    b"true",
]

#: Inputs that change run state / emit events; recorded after :data:`DEFAULT_INPUTS`
#: (QEMU starts with ``-S``, i.e. paused in ``prelaunch``).
EVENT_INPUTS: list[bytes] = [
    b'{"execute": "stop", "id": "s1"}\r\n{"execute": "cont", "id": "c1"}' + CRLF,
    b'{"execute": "stop", "id": "s2"}' + CRLF,
    b'{"execute": "query-status", "id": "paused"}' + CRLF,
    b'{"execute": "cont", "id": "c2"}\r\n{"execute": "cont", "id": "c3"}\r\n'
    b'{"execute": "stop", "id": "s3"}\r\n{"execute": "stop", "id": "s4"}' + CRLF,
]


def _record(data: bytes, negotiate: bool, replies: list[str]) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "input": data.decode("latin-1"),
        "negotiate": negotiate,
        "replies": replies,
    }
    if len(replies) > MAX_STORED_REPLIES:
        rec["replies"] = replies[:3]
        rec["reply_count"] = len(replies)
        rec["error_count"] = sum('"error": ' in line for line in replies)
    return rec


async def records() -> list[dict[str, Any]]:
    """Capture :data:`DEFAULT_INPUTS` un-negotiated, then negotiated, then
    :data:`EVENT_INPUTS` (both ways), all against one fresh QEMU."""
    out: list[dict[str, Any]] = []
    async with QemuProcess() as qemu:
        for negotiate in (False, True):
            replies = await capture(DEFAULT_INPUTS, negotiate, qemu.socket_path)
            out += [_record(d, negotiate, r) for d, r in zip(DEFAULT_INPUTS, replies, strict=True)]
        for negotiate in (False, True):
            replies = await capture(EVENT_INPUTS, negotiate, qemu.socket_path)
            out += [_record(d, negotiate, r) for d, r in zip(EVENT_INPUTS, replies, strict=True)]
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUT.json", file=sys.stderr)
        return 2
    recs = asyncio.run(records())
    path = Path(argv[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recs, indent=1, ensure_ascii=True) + "\n", encoding="utf-8")
    print(f"wrote {len(recs)} records to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
