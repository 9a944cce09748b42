"""``qmpevents watch`` against real QEMU 7.2, once: RESUME and SHUTDOWN as QEMU sends them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_process import running
from qemu_support import QemuProcess, requires_qemu

import qmpevents
from qmpevents.recording import read_recording

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


async def test_record_all_messages_names_real_qemu_by_its_name(tmp_path: Path) -> None:
    """``-name realvm``: every record says ``realvm`` with --all-messages too, as without."""
    async with QemuProcess("-name", "realvm", extra_qmp=1) as vm:
        for extra, command, event in (((), "cont", "RESUME"),
                                      (("--all-messages",), "stop", "STOP")):
            out = tmp_path / f"rec{len(extra)}.jsonl"
            async with running("record", vm.socket_path, "-o", str(out), "--count", "1",
                               "--timeout", "20", *extra) as cli:
                await cli.wait_line("recording to", "err")
                async with qmpevents.connect(vm.extra_socket_paths[0]) as qmp:
                    await qmp.execute(command)
                assert await cli.wait(timeout=20) == 0
            found = list(read_recording(str(out)))
            assert {r.vm for r in found} == {"realvm"}, [(r.vm, r.direction) for r in found]
            assert [r.message_value()["event"] for r in found if r.direction == "event"] == [
                event]
