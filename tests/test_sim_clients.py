"""Third-party clients against the simulator: qemu.qmp, and the pytest fixture."""

from __future__ import annotations

import asyncio

import pytest
from qemu.qmp import QMPClient
from qemu.qmp.events import EventListener

from qmpevents.sim import SimulatedVM, parse_drive
from qmpevents.sim.block import ErrorPolicy


async def test_qemu_qmp_negotiates_executes_and_receives_events(
        simulated_vm: SimulatedVM) -> None:
    client = QMPClient("test")
    await client.connect(simulated_vm.socket_path)
    try:
        listener = EventListener(("STOP", "RESET"))
        with client.listen(listener):
            assert await client.execute("query-status") == {
                "running": True, "singlestep": False, "status": "running"}
            assert await client.execute("stop") == {}
            stop = await asyncio.wait_for(listener.get(), 5)
        assert stop["event"] == "STOP"
        with client.listen(listener):
            await client.execute("system_reset")
            event = await asyncio.wait_for(listener.get(), 5)
        assert event["event"] == "RESET"
        version = await client.execute("query-version")
        assert isinstance(version, dict)
        assert version["qemu"] == {"major": 7, "minor": 2, "micro": 22}
    finally:
        await client.disconnect()


@pytest.mark.simulated_vm(profile="qemu-7.2", drives=["disk0,werror=stop"])
async def test_fixture_marker_options(simulated_vm: SimulatedVM) -> None:
    assert simulated_vm.machine.profile == "qemu-7.2"
    client = QMPClient("marker")
    await client.connect(simulated_vm.socket_path)
    try:
        listener = EventListener(("BLOCK_IO_ERROR", "STOP"))
        with client.listen(listener):
            await client.execute("x-sim-io-error", {"device": "disk0", "operation": "write"})
            first = await asyncio.wait_for(listener.get(), 5)
            second = await asyncio.wait_for(listener.get(), 5)
        assert (first["event"], first["data"]["action"], second["event"]) == (  # type: ignore[index]
            "BLOCK_IO_ERROR", "stop", "STOP")
    finally:
        await client.disconnect()


def test_parse_drive() -> None:
    assert parse_drive("d") == parse_drive("d,werror=enospc,rerror=report")
    config = parse_drive("d,rerror=stop,werror=ignore")
    assert (config.werror, config.rerror) == (ErrorPolicy.IGNORE, ErrorPolicy.STOP)
    for bad, message in (("d,rerror=enospc", "'enospc' invalid read error action"),
                         ("d,werror=x", "'x' invalid write error action"),
                         ("d,foo=1", "unknown"), (",werror=stop", "expected"),
                         ("d,werror=stop,werror=stop", "repeated")):
        with pytest.raises(ValueError, match=message):
            parse_drive(bad)
    with pytest.raises(ValueError, match="Duplicate ID 'd' for drive"):
        SimulatedVM(drives=["d", "d"])
