"""``qmpevents watch`` against real QEMU 7.2, once: RESUME and SHUTDOWN as QEMU sends them."""

from __future__ import annotations

import json

import pytest
from cli_process import running
from qemu_support import QemuProcess, requires_qemu

import qmpevents

pytestmark = [requires_qemu, pytest.mark.qemu]


async def test_watch_real_qemu_until_shutdown() -> None:
    # QEMU serves one client per monitor: the watch takes the first, commands the second.
    async with QemuProcess(extra_qmp=1) as vm, running(
            "watch", vm.socket_path, "--json", "--until", "SHUTDOWN", "--timeout", "20",
            "-v") as cli:
        await cli.wait_line("connected", "err")  # -v logs the client's connection
        async with qmpevents.connect(vm.extra_socket_paths[0]) as qmp:
            await qmp.execute("cont")
            resume = json.loads(await cli.line())
            assert (resume["vm"], resume["event"]) == ("qmp", "RESUME")
            await qmp.execute("quit")
            assert await cli.wait(timeout=20) == 0
    shutdown = json.loads(cli.out[-1])
    assert shutdown["event"] == "SHUTDOWN"
    assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert "Traceback" not in "".join(cli.err)
