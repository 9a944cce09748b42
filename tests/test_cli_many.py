"""``qmpevents watch`` over 50 VMs at once: one is killed and restarted; the watch reports
the loss and the return and misses no event of the 49 others.

49 VMs are simulated in this process (cheap on 2 cores); the 50th is a ``qmpevents
serve`` process, so that it can really be killed (SIGKILL: its socket file stays
behind, stale) and started again on the same path.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
from collections.abc import AsyncIterator

import pytest
from cli_process import Cli, running, short_dir

import qmpevents
from qmpevents.sim import SimulatedVM

pytestmark = pytest.mark.subprocess

IN_PROCESS = 49
ROUNDS = 3  # before the kill, while the 50th is down, after it is back
PER_ROUND = 10


@contextlib.asynccontextmanager
async def serve(path: str) -> AsyncIterator[Cli]:
    """``qmpevents serve`` on *path*, once it listens."""
    async with running("serve", "--qmp", f"unix:{path}") as vm:
        await vm.wait_line("QMP listening on", "err")
        yield vm


async def test_watch_50_vms_one_killed_and_restarted() -> None:
    with short_dir("many") as directory:
        sims = [SimulatedVM(qmp=[f"unix:{directory}/vm{n:02d}.qmp"], name=f"vm{n:02d}")
                for n in range(IN_PROCESS)]
        await asyncio.gather(*(vm.start() for vm in sims))
        victim = os.path.join(directory, "vm49.qmp")
        total = IN_PROCESS * ROUNDS * PER_ROUND + 1
        offset = 0

        def round_of_events() -> None:
            nonlocal offset
            for _ in range(PER_ROUND):
                for vm in sims:
                    vm.machine.rtc_change(offset)
                offset += 1

        try:
            async with serve(victim) as first, running(
                    "watch", directory, "--json", "--rescan", "0.2",
                    "--count", str(total), "--timeout", "60") as cli:
                attached: set[str] = set()
                while len(attached) < IN_PROCESS + 1:
                    line = await cli.wait_line(": attached", "err")
                    attached.add(line.split(": ")[1])
                round_of_events()

                await first.kill()  # SIGKILL: no SHUTDOWN, no socket removal, a crash
                await cli.wait_line("vm49: lost", "err")
                round_of_events()  # the 49 others go on while one is down

                async with serve(victim):
                    await cli.wait_line("vm49: back", "err")
                    round_of_events()
                    async with qmpevents.connect(victim) as qmp:
                        await qmp.execute("x-sim-rtc-change", {"offset": 4242})
                    assert await cli.wait(timeout=60) == 0, "".join(cli.err)
        finally:
            await asyncio.gather(*(vm.close() for vm in sims))

    per_vm: dict[str, list[int]] = collections.defaultdict(list)
    for line in cli.out:
        event = json.loads(line)
        assert event["event"] == "RTC_CHANGE"
        per_vm[event["vm"]].append(event["data"]["offset"])
    expected = list(range(ROUNDS * PER_ROUND))
    assert {vm: offsets for vm, offsets in per_vm.items() if vm != "vm49"} == {
        f"vm{n:02d}": expected for n in range(IN_PROCESS)}
    assert per_vm["vm49"] == [4242]
    notes = [line for line in cli.err if ": attached" not in line]
    assert [line.split(": ", 2)[1] for line in notes] == ["vm49", "vm49"], notes
    assert "lost" in notes[0] and notes[1] == "qmpevents watch: vm49: back\n"
