"""Input that makes a message per byte or two: bounded work per step.

After QEMU's token count limit (2 Mi tokens), QEMU's JSON streamer starts
afresh and takes every following token alone: ``1,1,1,...`` then gives a
reply per token.  The byte-by-byte path's budget counted bytes only, so one
4 KiB step completed 4,096 messages, and the server answered all of them
before yielding: another monitor's ``query-status`` waited 236 ms during a
6 MiB such message.  Each message now costs budget too.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from test_robust_framing import plain_slices, qmp_server_process, second_monitor_waits

from qmpevents.codec import value_framer
from qmpevents.codec.framing import MESSAGE_WEIGHT
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
    assert stalls[0] < 0.050, stalls[0]
    assert wait < 1.0, wait  # wall time: loose, for a loaded machine
