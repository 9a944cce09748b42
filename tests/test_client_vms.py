"""``qmpevents.watch_vms``: many VMs, directories and reconnects as a library.

Simulated VMs on private sockets; re-scans and retries run on a ManualClock that
the test advances, so nothing waits for real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_process import short_dir

import qmpevents
from qmpevents import ManualClock, RtcChange
from qmpevents.sim import SimulatedVM


@pytest.fixture
def directory() -> Iterator[Path]:
    with short_dir("vms") as path:  # socket paths must fit in sun_path
        yield Path(path)


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run (socket I/O, no timer involved) until *condition*, for 10 s at most."""
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0)


async def _offset(vms: qmpevents.client.VMs) -> tuple[str, int]:
    vm, event = await vms.get(timeout=None)
    assert isinstance(event, RtcChange)
    return vm, event.data.offset


async def test_fixed_targets_named_and_filtered(directory: Path) -> None:
    async with SimulatedVM(qmp=f"unix:{directory}/a.sock") as a, \
            SimulatedVM(qmp=f"unix:{directory}/b.sock") as b, \
            qmpevents.watch_vms(f"{directory}/a.sock", f"bee={directory}/b.sock",
                                events=[RtcChange]) as vms:
        a.machine.rtc_change(1)
        a.machine.stop()           # filtered out
        b.machine.rtc_change(2)
        got = {await _offset(vms), await _offset(vms)}
    assert got == {("a", 1), ("bee", 2)}


async def test_a_directory_is_rescanned_and_lost_vms_come_back(directory: Path) -> None:
    clock = ManualClock()
    statuses: list[tuple[str, str]] = []
    async with qmpevents.watch_vms(f"{directory}/", clock=clock, rescan=1.0,
                                   on_status=lambda vm, status, _: statuses.append(
                                       (vm, status))) as vms:
        assert vms.followed == []
        first = SimulatedVM(qmp=f"unix:{directory}/101.qmp")
        await first.start()
        await clock.advance_when_waiting(1.0)  # the re-scan finds it
        await until(lambda: ("101", "attached") in statuses)
        first.machine.rtc_change(7)
        assert await _offset(vms) == ("101", 7)
        await first.close()   # socket removed: a VM found by a scan is given up
        await until(lambda: ("101", "gone") in statuses)
    assert statuses == [("101", "attached"), ("101", "lost"), ("101", "gone")]


async def test_a_fixed_target_that_drops_is_retried_until_back(directory: Path) -> None:
    clock = ManualClock()
    path = f"{directory}/vm.sock"
    statuses: list[str] = []
    vm = SimulatedVM(qmp=f"unix:{path}")
    await vm.start()
    async with qmpevents.watch_vms(path, clock=clock, retry_delay=2.0,
                                   on_status=lambda _vm, status, _: statuses.append(
                                       status)) as vms:
        await vm.close()
        await until(lambda: "lost" in statuses)
        async with SimulatedVM(qmp=f"unix:{path}") as again:
            await clock.advance_when_waiting(2.0)  # the retry back-off
            await until(lambda: "back" in statuses)
            again.machine.rtc_change(3)
            assert await _offset(vms) == ("vm", 3)
    assert statuses == ["lost", "back"]


async def test_an_unreachable_fixed_target_fails_on_entry(directory: Path) -> None:
    with pytest.raises(OSError):
        async with qmpevents.watch_vms(f"{directory}/nobody.sock"):
            pass


def test_targets_are_checked_at_once() -> None:
    with pytest.raises(qmpevents.AddressError):
        qmpevents.watch_vms("tcp:nowhere")
