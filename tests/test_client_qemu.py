"""The client against real QEMU 7.2: typed run-state and VNC events, expect, end of stream.

QEMU starts paused (-S) and device-less; every wait is on a QMP event or
reply with a timeout, never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from qemu_support import QemuProcess, requires_qemu

import qmpevents
from qmpevents.catalog import (
    Reset,
    Resume,
    Shutdown,
    Stop,
    VncConnected,
    VncDisconnected,
    VncInitialized,
)
from qmpevents.sim.vnc import free_display
from qmpevents.vnc_client import handshake

pytestmark = [requires_qemu, pytest.mark.qemu]



async def test_run_state_events_typed() -> None:
    async with QemuProcess() as vm, qmpevents.connect(vm.socket_path) as qmp:
        assert qmp.greeting is not None
        assert qmp.greeting.version["qemu"]["major"] == 7
        assert (await qmp.execute("query-status"))["status"] == "prelaunch"
        async with qmp.listen("RESUME", "STOP", "RESET") as events:
            await qmp.execute("cont")
            resume = await events.get(timeout=10)
            assert isinstance(resume, Resume) and resume.data is None
            await qmp.execute("stop")
            stop = await events.get(timeout=10)
            assert isinstance(stop, Stop)
            assert stop.raw is not None and stop.raw.endswith(b'"event": "STOP"}')
            await qmp.execute("system_reset")
            reset = await events.get(timeout=10)
        assert isinstance(reset, Reset)
        assert reset.data is not None
        assert reset.data.guest is False and reset.data.reason == "host-qmp-system-reset"
        assert reset.timestamp > 1e9


async def test_expect_and_shutdown_ends_iteration() -> None:
    async with QemuProcess() as vm, qmpevents.connect(vm.socket_path) as qmp:
        async with qmp.expect("RESUME", "STOP", timeout=10) as expectation:
            await qmp.execute("cont")
            await qmp.execute("stop")
        assert [type(e) for e in expectation.events] == [Resume, Stop]
        stream = qmp.events()
        with contextlib.suppress(qmpevents.ConnectionLost):
            await qmp.execute("quit", timeout=10)
        names = []
        async with asyncio.timeout(10):
            async for event in stream:  # ends at QEMU's exit
                names.append(event)
        assert [e.name for e in names] == ["SHUTDOWN"]
        shutdown = names[0]
        assert isinstance(shutdown, Shutdown)
        assert shutdown.data is not None and shutdown.data.reason == "host-qmp-quit"


async def test_vnc_events_typed() -> None:
    display = free_display(first=40)
    async with QemuProcess("-vnc", f"127.0.0.1:{display}") as vm, \
            qmpevents.connect(vm.socket_path) as qmp:
        async with qmp.expect("VNC_CONNECTED", "VNC_INITIALIZED", "VNC_DISCONNECTED",
                              timeout=10) as expectation:
            viewer = await handshake("127.0.0.1", 5900 + display)  # RFB 3.8, security None
            await viewer.close()
        connected, initialized, disconnected = expectation.events
        assert isinstance(connected, VncConnected)
        assert isinstance(initialized, VncInitialized)
        assert isinstance(disconnected, VncDisconnected)
        assert connected.data.server.service == str(5900 + display)
        assert connected.data.server.auth == "none"
        assert connected.data.client.host == "127.0.0.1"
        assert connected.data.client.websocket is False
        assert disconnected.data.client.service == connected.data.client.service
