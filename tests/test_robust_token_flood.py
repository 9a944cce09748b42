"""Input that makes a message per byte or two: bounded work per step.

After QEMU's token count limit (2 Mi tokens), QEMU's JSON streamer starts
afresh and takes every following token alone: ``1,1,1,...`` then gives a
reply per token.  The byte-by-byte path's budget counted bytes only, so one
4 KiB step completed 4,096 messages, and the server answered all of them
before yielding: another monitor's ``query-status`` waited 236 ms during a
6 MiB such message.  Each message now costs budget too.

Many small messages on one line (``{}{}{}...``, no newline) cost each the
rest of the line: the scan of each message looked at everything up to the
newline, so 20 KB stalled a server for 2 s, and 1.6 MB of events on one
line froze a client for 15 s.  The scan now takes a line in doubling
windows, and a server's framer hands out a bounded number of messages per
step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from robust_support import stall_bound
from test_robust_framing import (
    GREETING,
    LoopStalls,
    plain_slices,
    qmp_server_process,
    raw_server,
    second_monitor_waits,
)

import qmpevents
from qmpevents.codec import scan, value_framer
from qmpevents.codec.framing import FEED_MESSAGES, MESSAGE_WEIGHT
from qmpevents.protocol.server import EXACT_SLICE

Figures = Callable[[str, object], None]


def test_a_step_of_the_exact_path_completes_a_bounded_number_of_messages() -> None:
    # Top-level scalars, each a message of its own (QEMU answers each: not an object).
    count = 20_000
    data = b"1 " * count + b"\n"
    framer = value_framer()
    per_step: list[int] = []
    out: list[object] = []
    chunk = data
    while True:
        step = framer.feed(chunk, budget=EXACT_SLICE)
        per_step.append(len(step))
        out += step
        chunk = b""
        if not framer.pending:
            break
    assert out == [1] * count  # the same messages, in order, however many steps
    assert max(per_step) <= EXACT_SLICE // MESSAGE_WEIGHT + 1, max(per_step)  # was 4,096


@pytest.mark.slow
@pytest.mark.subprocess
async def test_second_monitor_waits_little_while_a_line_of_scalars_is_answered(
        figures: Figures) -> None:
    # 128 Ki top-level scalars on one line: each is answered ("QMP input must be a
    # JSON object"), as each token after QEMU's token limit is.
    data = b"1 " * (128 << 10) + b"\n"
    async with qmp_server_process() as (path, stalls):
        wait, trips, _ = await second_monitor_waits(path, plain_slices(data))
    figures("a line of 128 Ki scalars, a reply each: second monitor's worst wait / "
            "server loop stall",
            f"{wait * 1000:.0f} ms wall / {stalls[0] * 1000:.0f} ms CPU over {trips} round trips")
    assert stalls[0] < stall_bound(), stalls[0]
    assert wait < 1.0, wait  # wall time: loose, for a loaded machine


def test_many_messages_on_one_line_are_scanned_in_linear_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    scanned: list[int] = []
    end_of = scan._end_of

    def counting(pattern: object, data: bytes, pos: int, end: int | None = None) -> int:
        scanned.append((len(data) if end is None else end) - pos)
        return end_of(pattern, data, pos, end)  # type: ignore[arg-type]
    monkeypatch.setattr(scan, "_end_of", counting)
    count = 5000
    data = b"{}" * count  # no newline: one line for ever
    framer = value_framer()
    out: list[object] = []
    chunk = data
    while True:
        out += framer.feed(chunk, budget=EXACT_SLICE)
        chunk = b""
        if not framer.pending:
            break
    assert out == [{}] * count
    assert sum(scanned) < 300 * len(data), sum(scanned)  # was 5 k messages x the rest


def test_a_server_framer_hands_out_a_bounded_number_of_small_messages_per_step() -> None:
    count = 20_000
    for data in (b"{}" * count, b"{}\n" * count):
        framer = value_framer()
        out: list[object] = []
        most = 0
        chunk = data
        while True:
            step = framer.feed(chunk, budget=EXACT_SLICE)
            most = max(most, len(step))
            out += step
            chunk = b""
            if not framer.pending:
                break
        assert out == [{}] * count
        assert most <= FEED_MESSAGES + EXACT_SLICE // MESSAGE_WEIGHT, most  # was 20,000


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("separator", [b"", b"\n"], ids=["one-line", "lines"])
async def test_second_monitor_waits_little_during_many_small_messages(
        figures: Figures, separator: bytes) -> None:
    data = (b"{}" + separator) * 20_000
    async with qmp_server_process() as (path, stalls):
        wait, trips, _ = await second_monitor_waits(path, plain_slices(data))
    shape = "on one line" if not separator else "one per line"
    figures(f"20,000 messages '{{}}' {shape}, each answered: second monitor's worst wait / "
            "server loop stall",
            f"{wait * 1000:.0f} ms wall / {stalls[0] * 1000:.0f} ms CPU over {trips} round trips")
    assert stalls[0] < stall_bound(), stalls[0]  # was 2.1-2.7 s on one line, 60 ms one per line
    assert wait < 1.0, wait  # wall time: loose, for a loaded machine


@pytest.mark.subprocess
async def test_client_takes_many_events_on_one_line_in_linear_time(figures: Figures) -> None:
    count = 20_000
    event = b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}'
    async with (raw_server(GREETING, after_negotiation=event * count) as path,
                qmpevents.connect(f"unix:{path}", connect_timeout=5.0) as qmp):
        stream = qmp.events()
        with LoopStalls() as stalls:
            asking = asyncio.ensure_future(qmp.execute("x", timeout=60))  # sends them
            for _ in range(count):
                await stream.get(timeout=30)
            asking.cancel()
    figures("client: 20,000 events on one line (1.3 MB, no newline)",
            f"loop stall {stalls.worst * 1000:.0f} ms CPU")
    assert stalls.worst < stall_bound(), stalls.worst  # was over 15 s


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("member", [b'"ab"', b"1e5"], ids=["strings", "numbers"])
async def test_second_monitor_waits_little_during_a_list_of_tiny_members(
        figures: Figures, member: bytes) -> None:
    # 900 k tiny members in 4.5 MB: a fast-path batch took 512 KiB whatever its
    # member count (100 k values made in one step: 70 ms, 9.6 k page faults).
    data = b'{"execute": "big", "arguments": {"a": [' + (member + b",") * 900_000 + b'1]}}\n'
    async with qmp_server_process() as (path, stalls):
        wait, trips, _ = await second_monitor_waits(path, plain_slices(data))
    figures(f"a list of 900 k tiny members ({member.decode()}): second monitor's worst wait / "
            "server loop stall",
            f"{wait * 1000:.0f} ms wall / {stalls[0] * 1000:.0f} ms CPU over {trips} round trips")
    assert stalls[0] < stall_bound(), stalls[0]  # was 66-70 ms
    assert wait < 1.0, wait  # wall time: loose, for a loaded machine
