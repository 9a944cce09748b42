"""QEMU's input limits, with its error texts, and memory under a garbage stream.

Nesting deeper than 1024, a message over the size limit, more tokens than
the token limit: each is answered with QEMU's text and the monitor stays
usable.  A peer that streams garbage keeps the server's buffer and RSS bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
from robust_support import (
    TRAILER,
    VERSION,
    answer_all,
    eventually,
    expected_replies,
    reference,
    rss_kib,
    server,
)

from qmpevents.codec import MAX_NESTING, ParseError, ParseErrorKind, value_framer
from qmpevents.codec.framing import Framer
from qmpevents.protocol import Command, CommandFailure
from qmpevents.server import QMPServer, ServerOptions, UnixAddress
from qmpevents.testing import RawQMP

AFTER = b'{"return": {}, "id": "after"}\r\n'


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_nesting_1024_is_accepted_1025_refused_with_qemus_text() -> None:
    conn = server()
    # The request object is one level: an id nested 1023 deep makes 1024 in all.
    conn.receive_data(b'{"execute": "stop", "id": ' + nested(MAX_NESTING - 1) + b"}\n")
    ok = answer_all(conn)
    assert len(ok) == 1 and ok[0].startswith(b'{"return": {}, "id": [[[')
    conn.receive_data(b'{"execute": "stop", "id": ' + nested(MAX_NESTING) + b"}\n" + TRAILER)
    replies = answer_all(conn)
    assert replies[0] == (b'{"error": {"class": "GenericError", '
                          b'"desc": "JSON nesting depth limit exceeded"}}\r\n')
    assert replies == expected_replies(reference(
        b'{"execute": "stop", "id": ' + nested(MAX_NESTING) + b"}\n" + TRAILER))
    assert replies[-1] == AFTER


def test_message_size_limit_with_qemus_text() -> None:
    conn = server(max_message_size=4096)
    big = b'{"execute": "stop", "id": "' + b"x" * 5000 + b'"}\n'
    conn.receive_data(big + TRAILER)
    replies = answer_all(conn)
    assert replies[0] == (b'{"error": {"class": "GenericError", '
                          b'"desc": "JSON token size limit exceeded"}}\r\n')
    assert replies == expected_replies(reference(big + TRAILER, max_message_size=4096))
    assert replies[-1] == AFTER
    # Many small tokens add up the same way (QEMU counts token bytes, not blanks).
    many = b'{"execute": "stop", "id": [' + b"1, " * 3000 + b"1]}\n" + TRAILER
    conn.receive_data(many)
    replies = answer_all(conn)
    assert b"JSON token size limit exceeded" in replies[0]
    assert replies == expected_replies(reference(many, max_message_size=4096))
    assert replies[-1] == AFTER


def test_token_count_limit_with_qemus_text() -> None:
    framer: Framer[Any] = Framer(json.loads, lambda value: value, max_tokens=100,
                                 qemu_exact=True)
    items = framer.feed(b"[" + b"1," * 200 + b"1]\n" + b'{"execute": "stop"}\n')
    assert items[0] == ParseError(ParseErrorKind.TOO_MANY_TOKENS,
                                 "JSON token count limit exceeded")
    assert items[-1] == {"execute": "stop"}
    assert framer.buffered == 0


class _Echo:
    def execute(self, command: Command) -> Any:
        if command.name == "fail":
            raise CommandFailure("GenericError", "no")
        return {}


GARBAGE_MB = 2


def _garbage(rng: random.Random, size: int) -> bytes:
    """One chunk of one kind of hostile input."""
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(size)
    if kind == 1:  # a string that never ends
        return b'{"execute": "stop", "id": "' + b"y" * size
    if kind == 2:  # digits for ever
        return b"[" + b"7" * size
    if kind == 3:  # brackets past the nesting limit
        return b"[" * size
    if kind == 4:  # short garbage lines
        return b"}{:,\n" * (size // 5)
    return b"\xff" * size


@pytest.mark.slow
async def test_garbage_stream_keeps_server_memory_bounded(
        tmp_path: Any, figures: Callable[[str, object], None]) -> None:
    path = f"/tmp/qmpev-garbage-{os.getpid()}.sock"
    limit = 64 * 1024
    qmp = QMPServer([UnixAddress(path)], _Echo(), version=VERSION,
                    options=ServerOptions(max_message_size=limit))
    await qmp.start()
    try:
        peer = await RawQMP.unix(path)
        await peer.negotiate()
        monitor = next(iter(qmp._monitors))
        replies = 0

        async def drain() -> None:
            nonlocal replies
            while chunk := await peer.reader.read(1 << 16):
                replies += chunk.count(b"\n")

        reader = asyncio.create_task(drain())
        rng = random.Random(5)
        sent = 0
        max_buffered = 0
        rss_before = rss_kib()
        rss_peak = rss_before
        started = time.perf_counter()
        while sent < GARBAGE_MB << 20:
            chunk = _garbage(rng, 32 * 1024)
            await peer.send(chunk)
            sent += len(chunk)
            conn = monitor._conn
            assert conn is not None
            max_buffered = max(max_buffered, conn.buffered_bytes)
            rss_peak = max(rss_peak, rss_kib())
        elapsed = time.perf_counter() - started
        # The monitor still works: end whatever is half-read, then a command.
        await peer.send(TRAILER)
        await eventually(lambda: replies > 0 and not monitor.closed, what="replies")
        reader.cancel()
        check = await RawQMP.unix(path)
        await check.negotiate()
        await check.send(b'{"execute": "query-status", "id": 1}\n')
        assert b'"id": 1' in await check.line()
        await peer.send(b'{"execute": "query-status", "id": "again"}\n')
        while b'"again"' not in (line := await peer.line()):
            pass
        assert line == b'{"return": {}, "id": "again"}\r\n'
        assert max_buffered <= limit + 256 * 1024  # the framer's bound + one socket read
        assert rss_peak - rss_before < 32 * 1024, (rss_before, rss_peak)
        figures("garbage stream: bytes sent to one monitor (64 KiB message limit)",
                f"{sent / 2**20:.1f} MiB in {elapsed:.1f} s "
                f"({sent / 2**20 / elapsed:.2f} MiB/s through QEMU's exact lexer)")
        figures("garbage stream: most input held unparsed (partial line + backlog)",
                f"{max_buffered} bytes")
        figures("garbage stream: server RSS before / peak",
                f"{rss_before / 1024:.1f} / {rss_peak / 1024:.1f} MiB")
    finally:
        await qmp.close()


def test_framer_buffer_bounded_on_endless_garbage_kinds() -> None:
    """Every kind of endless input leaves at most the limit buffered."""
    rng = random.Random(9)
    for kind in range(6):
        framer = value_framer(max_message_size=4096)
        for _ in range(40):
            chunk = _garbage(random.Random(kind * 100 + rng.randrange(100)), 1024)
            framer.feed(chunk)
            assert framer.buffered <= 4096, kind
