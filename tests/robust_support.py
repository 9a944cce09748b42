"""Helpers of the robustness tests: the exact reference, a mutation fuzzer, process figures.

The reference for "what QEMU would do with these bytes" is the codec's exact
path alone -- the byte-for-byte port of QEMU's lexer, streamer and parser --
fed one byte at a time.  The server's framer (fast path plus exact path, any
read split) must produce the same messages, so the same replies.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import time
from collections.abc import Callable
from typing import Any

from qmpevents.codec import ParseError, encode_message, value_framer
from qmpevents.codec.lexer import Streamer
from qmpevents.codec.parser import JSONParseError, parse_tokens
from qmpevents.codec.stray import PendingStray
from qmpevents.protocol import ServerConnection
from qmpevents.protocol.server import EXACT_SLICE

VERSION: dict[str, Any] = {}  # small: a fresh monitor per input encodes its greeting
NEGOTIATE = b'{"execute": "qmp_capabilities"}\n'
# After any input: a byte that is an error in every lexer state (so whatever was
# half-read ends), a newline to leave error recovery, then a command that must work.
TRAILER = b'\n\xff\n{"execute": "query-status", "id": "after"}\n'


def reference(data: bytes, **limits: int) -> list[Any]:
    """Messages of *data* per QEMU's exact algorithm: values or :class:`ParseError`."""
    out: list[Any] = []

    def emit(tokens: Any, error: ParseError | PendingStray | None) -> None:
        if isinstance(error, PendingStray):  # a huge token's stray error, built late
            error = error.now()
        if error is not None:
            out.append(error)
            return
        try:
            out.append(parse_tokens(tokens))
        except JSONParseError as exc:
            out.append(exc.error)

    streamer = Streamer(emit, **limits)
    feed = streamer.feed_byte
    for byte in data:
        feed(byte)
    return out


def answer_all(conn: ServerConnection) -> list[bytes]:
    """Run every command the connection hands out (``{}`` for each); its reply lines."""
    for command in conn.commands():
        conn.send_return(command, {})
    return conn.data_to_send().splitlines(keepends=True)


def server(negotiated: bool = True, **kwargs: Any) -> ServerConnection:
    conn = ServerConnection(version=VERSION, **kwargs)
    conn.send_greeting()
    conn.data_to_send()
    if negotiated:
        conn.receive_data(NEGOTIATE)
        assert answer_all(conn) == [b'{"return": {}}\r\n']
    return conn


def expected_replies(messages: list[Any], negotiated: bool = True) -> list[bytes]:
    """The reply lines a QEMU monitor gives to *messages* (from :func:`reference`).

    A parse error is answered directly; a value is handed, already parsed, to a
    model monitor in the same state, so request checks (tested against real
    QEMU elsewhere) are factored out and only the framing is compared.  (The
    model takes the value through its inbox: re-encoding would turn ``-0.0``
    into ``-0``, an integer.)
    """
    model = server(negotiated)
    replies: list[bytes] = []
    for message in messages:
        if isinstance(message, ParseError):
            replies.append(encode_message({"error": {"class": "GenericError",
                                                     "desc": message.desc}}))
            continue
        model._inbox.append(message)
        lines = answer_all(model)
        assert len(lines) == 1, (message, lines)
        replies.extend(lines)
    return replies


def feed_split(feed: Callable[[bytes], object], data: bytes, cuts: list[int]) -> None:
    """Feed *data* in pieces cut at *cuts* (positions, any order, duplicates allowed)."""
    start = 0
    for cut in sorted(set(cuts)):
        if 0 < cut < len(data):
            feed(data[start:cut])
            start = cut
    feed(data[start:])


# -- a seeded mutation fuzzer of valid QMP messages ---------------------------

COMMAND_SEEDS = [
    b'{"execute": "qmp_capabilities"}',
    b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}',
    b'{"execute": "query-status"}',
    b'{"execute": "query-status", "id": 1}',
    b'{"execute": "stop", "id": "x-1"}',
    b'{"exec-oob": "query-status", "id": {"a": [1, 2.5e3, null]}}',
    b'{"execute": "x-sim-io-error", "arguments": {"device": "disk0", "operation": "write"}}',
    b'{"execute": "x-sim-rtc-change", "arguments": {"offset": -42}, "id": [true, false]}',
    b'{"execute": "change-vnc-password", "arguments": {"password": "s\\u00e9cr\\"et"}}',
    b"{'execute': 'query-block', 'id': 'sq'}",
    b'{"arguments": {}, "execute": "cont", "id": 18446744073709551615}',
    b'[{"execute": "query-status"}]',
    b'"execute"',
    b"12345678901234567890123",
]
SERVER_SEEDS = [
    b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, '
    b'"capabilities": ["oob"]}}',
    b'{"return": {}, "id": "qe1"}',
    b'{"return": {"running": true, "singlestep": false, "status": "running"}, "id": "qe2"}',
    b'{"error": {"class": "GenericError", "desc": "it failed"}, "id": "qe3"}',
    b'{"timestamp": {"seconds": 1700000000, "microseconds": 123456}, "event": "STOP"}',
    b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RTC_CHANGE", '
    b'"data": {"offset": -5, "qom-path": "/machine/unattached/device[8]"}}',
    b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "BLOCK_IO_ERROR", "data": '
    b'{"device": "disk0", "operation": "write", "action": "stop", "nospace": false}}',
    b'{"event": "X_UNKNOWN", "data": {"\\ud83d\\ude00": 1e400}}',
]
_INTERESTING = [
    b"{", b"}", b"[", b"]", b":", b",", b'"', b"'", b"\\", b"\\u", b"\\ud800", b"\\u0000",
    b"\\uDC00\\uD800", b"\n", b"\r\n", b"\t", b" ", b"\x00", b"\x0b", b"\x7f", b"\x80",
    b"\xc0\x80", b"\xc3(", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xfe", b"\xff",
    b"true", b"fals", b"null", b"nul", b"-", b"-0", b"0.", b"1e", b"1e999", b"-1e-999",
    b"99999999999999999999999", b"-9223372036854775809", b"18446744073709551616",
    b'"a": 1, "a": 2', b'"execute": 1', b'"arguments": []', b'"exec-oob": "x"', b"[" * 40,
    b"{" * 40, b"]" * 40, b'"id": {"id": [{}]}', b"\xef\xbb\xbf",
]


class Mutator:
    """Seeded mutations of valid messages: the same seed gives the same inputs."""

    def __init__(self, seed: int, seeds: list[bytes]) -> None:
        self.rng = random.Random(seed)
        self.seeds = seeds

    def _one(self, data: bytearray) -> None:
        rng = self.rng
        op = rng.randrange(9)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:  # flip a bit
            at = rng.randrange(len(data))
            data[at] ^= 1 << rng.randrange(8)
        elif op == 1 and data:  # replace a byte
            data[rng.randrange(len(data))] = rng.choice(b'{}[]:,"\\\' \n\x00\x80\xff0e.-tun')
        elif op == 2:  # insert an interesting token
            data[pos:pos] = rng.choice(_INTERESTING)
        elif op == 3:  # insert random bytes
            data[pos:pos] = os.urandom(rng.randrange(1, 8)) if rng.random() < 0.1 else \
                bytes(rng.randrange(256) for _ in range(rng.randrange(1, 6)))
        elif op == 4 and data:  # delete a range
            end = min(len(data), pos + rng.randrange(1, 12))
            del data[pos:end]
        elif op == 5:  # truncate
            del data[pos:]
        elif op == 6 and data:  # duplicate a range
            start = rng.randrange(len(data))
            data[pos:pos] = data[start:start + rng.randrange(1, 20)]
        elif op == 7:  # splice in another message, with or without a separator
            data[pos:pos] = rng.choice((b"", b"\n", b" ")) + rng.choice(self.seeds)
        else:  # nest the whole thing
            depth = rng.randrange(1, 8)
            data[:] = b"[" * depth + data + b"]" * rng.randrange(depth + 1)

    def input(self) -> bytes:
        rng = self.rng
        data = bytearray(rng.choice(self.seeds))
        for _ in range(rng.randrange(1, 5)):
            self._one(data)
        if rng.random() < 0.7:
            data += b"\n"
        return bytes(data)

    def cuts(self, length: int) -> list[int]:
        return [self.rng.randrange(length + 1) for _ in range(self.rng.randrange(4))]


# -- process figures ---------------------------------------------------------

def rss_kib() -> int:
    """This process's resident set size, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def eventually(condition: Callable[[], bool], timeout: float = 10.0,
                     what: str = "condition") -> None:
    """Wait until *condition* holds, yielding to the loop; fail after *timeout* seconds.

    For states with no event to await (a socket closed by the kernel, a file
    written by another process): a deadline-bound wait, not a sleep.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


@functools.cache
def stall_bound() -> float:
    """The most loop-thread CPU seconds one loop iteration may take in these
    tests: 50 ms, or ten slices of the exact parser's work measured on this
    machine if more (a slice is about 5 ms where the bounds were set, 10-20 ms
    on a slow 2-core VM).  The best of nine (noise only adds), in this
    thread's CPU time as the stalls are: other threads' work does not inflate
    it.  What these tests guard against did a whole message in one step
    (seconds); regressions of 12-23 slices (60-117 ms where the bounds were
    set) show on fast machines only."""
    data = (b'{"execute": "big", "arguments": {"data": ["\xc3\xa9", ' + b"1, " * 8192
            + b'1]}, "id": 1}\n')
    times = []
    for _ in range(9):
        framer = value_framer()
        began = time.thread_time()
        framer.feed(data, budget=EXACT_SLICE)
        times.append(time.thread_time() - began)
        assert framer.pending, "one slice did not stop at its budget"
    return max(0.050, 10 * min(times))
