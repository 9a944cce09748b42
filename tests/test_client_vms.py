"""``qmpevents.watch_vms``: many VMs, directories and reconnects as a library.

Simulated VMs on private sockets; re-scans and retries run on a ManualClock that
the test advances, so nothing waits for real time.
"""

from __future__ import annotations

import asyncio
import errno
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_process import short_dir
from socket_support import GREETING, Handler, serving

import qmpevents
from qmpevents import ManualClock, RtcChange
from qmpevents.client import vms as vms_module
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


async def test_hooks_see_each_connection_its_traffic_and_its_events(directory: Path) -> None:
    """on_event instead of the queue; on_link up and down; trace per connection; on_state."""
    clock = ManualClock()
    path = f"{directory}/vm.sock"
    states: list[qmpevents.client.VMState] = []
    links: list[tuple[str, bool]] = []
    traffic: list[tuple[str, str]] = []
    got: list[tuple[str, int]] = []

    async def on_event(vm: str, event: qmpevents.QMPEvent) -> None:
        assert isinstance(event, RtcChange)
        got.append((vm, event.data.offset))

    def trace(target: qmpevents.client.Target) -> Callable[[str, bytes], None]:
        return lambda direction, data: traffic.append((target.name, direction))

    async with SimulatedVM(qmp=f"unix:{path}") as vm:
        vms = qmpevents.watch_vms(
            path, f"{directory}/later/", f"{directory}/*.nothing", clock=clock,
            on_event=on_event, on_state=states.append, trace=trace,
            on_link=lambda target, client: links.append((target.name, client is not None)))
        assert await vms.start() == []
        try:
            assert [(s.vm, s.status, s.detail, s.target) for s in states] == [
                (f"{directory}/later/", "waiting", "no such directory yet", None),
                (f"{directory}/*.nothing", "waiting", "no VM socket matches yet", None)]
            await until(lambda: links == [("vm", True)])  # the follower's first step
            assert ("vm", "in") in traffic and ("vm", "out") in traffic  # greeting, capabilities
            vm.machine.rtc_change(4)
            await until(lambda: got == [("vm", 4)])
            assert vms._queue.empty()  # delivered to on_event, not queued
        finally:
            await vm.close()
            await until(lambda: any(s.status == "lost" for s in states))
            await vms.close()
    assert links == [("vm", True), ("vm", False)]
    lost = states[-1]
    assert (lost.status, lost.detail, lost.error, lost.scanned) == (
        "lost", "disconnected", None, False)


async def test_start_reports_every_unreachable_fixed_target(directory: Path) -> None:
    async with SimulatedVM(qmp=f"unix:{directory}/up.sock"):
        vms = qmpevents.watch_vms(f"{directory}/up.sock", f"{directory}/a.sock",
                                  f"b={directory}/b.sock")
        unreachable = await vms.start()
        await vms.close()
    assert [(u.target.name, type(u.error)) for u in unreachable] == [
        ("a", qmpevents.ConnectError), ("b", qmpevents.ConnectError)]
    assert all(isinstance(u.error, OSError) and u.error.errno == errno.ENOENT
               for u in unreachable)
    assert str(unreachable[0].error) == f"unix:{directory}/a.sock: No such file or directory"
    assert vms.followed == []  # the reachable one is not followed either


async def test_a_scanned_vm_whose_socket_comes_back_is_back(directory: Path) -> None:
    clock = ManualClock()
    statuses: list[str] = []
    async with qmpevents.watch_vms(f"{directory}/", clock=clock, rescan=1.0,
                                   on_status=lambda _vm, status, _: statuses.append(status)):
        for _ in range(2):
            vm = SimulatedVM(qmp=f"unix:{directory}/101.qmp")
            await vm.start()
            await clock.advance_when_waiting(1.0)  # the re-scan finds it
            await until(lambda: statuses[-1:] in (["attached"], ["back"]))
            await vm.close()
            await until(lambda: statuses[-1:] == ["gone"])
    assert statuses == ["attached", "lost", "gone", "back", "lost", "gone"]


async def test_an_on_event_that_raises_stops_that_vm_only(directory: Path) -> None:
    states: list[qmpevents.client.VMState] = []
    got: list[str] = []

    async def on_event(vm: str, event: qmpevents.QMPEvent) -> None:
        if vm == "bad":
            raise RuntimeError("a bug in the handler")
        got.append(vm)

    async with SimulatedVM(qmp=f"unix:{directory}/bad.sock") as bad, \
            SimulatedVM(qmp=f"unix:{directory}/good.sock") as good, \
            qmpevents.watch_vms(f"{directory}/bad.sock", f"{directory}/good.sock",
                                on_event=on_event, on_state=states.append) as vms:
        bad.machine.rtc_change(1)
        await until(lambda: any(s.status == "failed" for s in states))
        good.machine.rtc_change(2)
        await until(lambda: got == ["good"])
        assert [a.rsplit("/", 1)[1] for a in vms.followed] == ["good.sock"]
    failed = next(s for s in states if s.status == "failed")
    assert failed.vm == "bad" and isinstance(failed.error, RuntimeError)


async def test_a_busy_consumer_slows_the_vm_down_and_loses_nothing(directory: Path) -> None:
    """Backpressure, not a stalled subscriber: the VM is not cut off after stall_timeout."""
    clock = ManualClock()
    path = f"{directory}/vm.sock"
    clients: list[qmpevents.QMPClient] = []
    statuses: list[str] = []

    def on_link(target: qmpevents.client.Target, client: qmpevents.QMPClient | None) -> None:
        if client is not None:
            clients.append(client)

    def on_status(name: str, status: str, detail: str) -> None:
        statuses.append(status)

    async with (SimulatedVM(qmp=f"unix:{path}") as vm,  # seed: RTC_CHANGE not throttled
                qmpevents.watch_vms(path, clock=clock, maxsize=10, on_link=on_link,
                                    on_status=on_status) as vms):
        await until(lambda: bool(clients) and clients[0].connected)
        for offset in range(6000):
            vm.machine.emit("RTC_CHANGE", {"offset": offset, "qom-path": "/machine/rtc"})
        await until(lambda: clients[0].reading_blocked)  # every queue on the way is full
        clock.advance(11)  # longer than the client's default stall_timeout
        async with asyncio.timeout(30):  # a VM cut off would never deliver the rest
            offsets = [(await _offset(vms))[1] for _ in range(6000)]
    assert offsets == list(range(6000))
    assert "lost" not in statuses


async def test_a_burst_before_the_name_reply_loses_nothing() -> None:
    """QEMU answers query-name after the events it had queued: 20,000 of them here."""
    from qmpevents.testing import FakeQMP

    async with FakeQMP(events_after_negotiation=20_000) as fake, \
            qmpevents.watch_vms(fake.address, clock=ManualClock()) as vms:
        async with asyncio.timeout(30):
            offsets = [(await _offset(vms))[1] for _ in range(20_000)]
    assert offsets == list(range(20_000))


def _nameless_vm(events: int, pad: int = 0) -> Handler:
    """Negotiates, sends *events* STOPs (each with *pad* bytes of data), and never
    answers query-name (nor anything else)."""
    data = b', "data": {"pad": "%s"}' % (b"x" * pad) if pad else b""
    stop = b'{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}%s}\r\n' % data

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        request = json.loads(await reader.readline())
        writer.write(b'{"return": {}, "id": "%s"}\r\n' % request["id"].encode() + stop * events)
        while await reader.readline():
            pass
    return serve


async def test_a_fixed_target_that_never_says_its_name_loses_no_event(directory: Path) -> None:
    """watch --timeout 3 on such a VM printed 0 of its 5 events: start() waited for the
    name, and the timeout cancelled it with the events it held."""
    path = f"{directory}/vm.sock"
    got: list[tuple[str, str]] = []

    async def on_event(vm: str, event: qmpevents.QMPEvent) -> None:
        got.append((vm, event.name))

    async with asyncio.timeout(10), serving(_nameless_vm(events=5), path):
        vms = qmpevents.watch_vms(path, clock=ManualClock(), on_event=on_event)
        assert await vms.start() == []  # connected: naming goes on in the follower
        await vms.close()  # the name never came: what was held is delivered first
    assert got == [("vm", "STOP")] * 5


async def test_a_vm_that_floods_before_saying_its_name_is_shown_by_its_path(
        directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The events held while naming are bounded in bytes: past the bound the VM is
    shown under its target's name and its events flow (1.5-2.6 GB were held)."""
    monkeypatch.setattr(vms_module, "EARLY_BYTES", 1 << 20)
    path = f"{directory}/vm.sock"
    got: list[str] = []

    async def on_event(vm: str, event: qmpevents.QMPEvent) -> None:
        got.append(vm)

    async with asyncio.timeout(10), serving(_nameless_vm(events=40, pad=100_000), path), \
            qmpevents.watch_vms(path, clock=ManualClock(), on_event=on_event):
        await until(lambda: len(got) == 40)  # no name, no close: they flow
    assert set(got) == {"vm"}
