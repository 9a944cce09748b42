"""``qmpevents demo`` as a process: all 8 spec events within 30 s, plain when piped,
coloured on a terminal, and Ctrl-C at any point ends it cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from cli_process import plain, run_on_pty, running

from qmpevents.catalog import SPEC_EVENTS

pytestmark = pytest.mark.subprocess


def summary(out: str) -> dict[str, int]:
    """The counts of the closing summary (``  NAME   N`` lines)."""
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("  ") and len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.mark.slow
async def test_demo_piped_shows_all_8_events_plain_within_30_s() -> None:
    started = time.monotonic()
    async with running("demo") as cli:
        status = await cli.wait(timeout=30)
    elapsed = time.monotonic() - started
    out = "".join(cli.out)
    assert status == 0, cli.err
    assert elapsed < 30
    assert cli.err == []
    assert "\x1b[" not in out
    counts = summary(out)
    assert set(SPEC_EVENTS) <= set(counts) and all(counts[name] for name in SPEC_EVENTS)
    streamed = [line.split()[2] for line in out.splitlines()
                if line[:2].isdigit() and len(line.split()) >= 3]
    assert set(streamed) >= set(SPEC_EVENTS)
    assert f"all {len(SPEC_EVENTS)} spec events seen" in out


async def test_demo_on_a_terminal_is_coloured() -> None:
    env = {key: value for key, value in os.environ.items() if key != "NO_COLOR"}
    status, out = await asyncio.to_thread(run_on_pty, "demo", "--pace", "0", env=env)
    assert status == 0, out
    assert "\x1b[" in out
    counts = summary(plain(out))
    assert all(counts.get(name) for name in SPEC_EVENTS), out


async def test_ctrl_c_mid_demo_exits_cleanly() -> None:
    # At several points: right after the VM is up, and in the middle of the scenario.
    for events_before in (0, 0, 1, 4):
        async with running("demo", "--pace", "0.2") as cli:
            first = await cli.wait_line("# simulated VM on")
            socket_path = first.split()[4].rstrip(",")
            for _ in range(events_before):
                await cli.wait_line(lambda line: line[:2].isdigit())
            cli.proc.send_signal(signal.SIGINT)
            status = await cli.wait()
        err = "".join(cli.err)
        assert status == 130, err
        assert err == "qmpevents demo: interrupted\n"
        assert not any(line.startswith("  BLOCK_IO_ERROR") for line in cli.out)
        assert not os.path.exists(socket_path)  # the VM was closed on the way out
