"""The client against the simulator (qmpevents.sim.SimulatedVM), as management code uses it."""

from __future__ import annotations

import contextlib

import pytest

import qmpevents
from qmpevents.catalog import BlockIoError, Reset, Stop
from qmpevents.errors import ExpectationFailed, QMPError

sim = pytest.importorskip("qmpevents.sim")


async def test_io_error_subscribe_then_act() -> None:
    async with sim.SimulatedVM(drives=["ide0-hd1,werror=stop"], profile="qemu-7.2") as vm, \
            qmpevents.connect(vm.socket_path) as qmp:
        assert (await qmp.execute("query-status"))["status"] == "running"
        async with qmp.listen("BLOCK_IO_ERROR", "STOP") as events:
            await qmp.execute("x-sim-io-error", {"device": "ide0-hd1", "operation": "write"})
            error = await events.get(timeout=5)
            stop = await events.get(timeout=5)
        assert isinstance(error, BlockIoError)
        assert (error.data.device, error.data.operation, error.data.action) == (
            "ide0-hd1", "write", "stop")
        assert isinstance(stop, Stop)
        assert (await qmp.execute("query-status"))["status"] == "io-error"


async def test_expect_wait_for_and_errors() -> None:
    async with sim.SimulatedVM(profile="qemu-7.2") as vm, \
            qmpevents.connect(vm.socket_path) as qmp:
        async with qmp.expect("STOP", timeout=5):
            await qmp.execute("stop")
        reset = qmp.wait_for("RESET", timeout=5, match={"guest": False})
        await qmp.execute("system_reset")
        assert isinstance(await reset, Reset)
        with pytest.raises(ExpectationFailed, match="expected SHUTDOWN; received"):
            async with qmp.expect("SHUTDOWN", timeout=0):  # what came with the reply only
                await qmp.execute("cont")
        with pytest.raises(QMPError) as info:
            await qmp.execute("no-such-command")
        assert info.value.error_class == "CommandNotFound"


async def test_quit_ends_iteration() -> None:
    async with sim.SimulatedVM(profile="qemu-7.2") as vm, \
            qmpevents.connect(vm.socket_path) as qmp:
        stream = qmp.events()
        with contextlib.suppress(qmpevents.ConnectionLost):  # reply may go with the socket
            await qmp.execute("quit", timeout=5)
        names = [event.name async for event in stream]
        assert names[0] == "SHUTDOWN"
