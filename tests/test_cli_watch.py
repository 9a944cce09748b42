"""``qmpevents watch`` as a process against simulated VMs: output, filters, exit statuses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator

import pytest
from cli_process import QMPEVENTS, joined, one_line_error, plain, run, running, short_dir

from qmpevents.sim import SimulatedVM

pytestmark = pytest.mark.subprocess


@pytest.fixture
async def vm() -> AsyncIterator[SimulatedVM]:
    async with SimulatedVM(drives=["disk0,werror=stop", "disk1,werror=report"],
                           name="w") as machine:
        yield machine


async def test_text_output_and_count(vm: SimulatedVM) -> None:
    async with running("watch", vm.socket_path, "--count", "3") as cli:
        await joined(vm)
        vm.machine.rtc_change(78)
        vm.machine.io_error("disk0", "write")  # BLOCK_IO_ERROR, then STOP
        assert await cli.wait() == 0
    lines = [plain(line).split() for line in cli.out]
    assert [line[1:3] for line in lines] == [["w", "RTC_CHANGE"], ["w", "BLOCK_IO_ERROR"],
                                            ["w", "STOP"]]  # its query-name
    assert lines[0][3:] == ["offset=78"]
    assert "device=disk0" in lines[1] and "action=stop" in lines[1]
    assert "\x1b[" not in "".join(cli.out)  # piped: no colour
    assert cli.err == []


async def test_json_lines_name_the_vm(vm: SimulatedVM) -> None:
    async with running("watch", f"unix:{vm.socket_path}", "--json", "--count", "2") as cli:
        await joined(vm)
        vm.machine.rtc_change(-5)
        vm.machine.stop()
        assert await cli.wait() == 0
    events = [json.loads(line) for line in cli.out]
    assert [(e["vm"], e["event"]) for e in events] == [("w", "RTC_CHANGE"), ("w", "STOP")]
    assert events[0]["data"] == {"offset": -5}
    assert set(events[1]["timestamp"]) == {"seconds", "microseconds"}


async def test_event_globs_repeatable_and_match(vm: SimulatedVM) -> None:
    async with running("watch", vm.socket_path, "--json", "--event", "BLOCK_*",
                       "--event", "rtc_change", "--match", "data.action=stop",
                       "--count", "1") as cli:
        await joined(vm)
        vm.machine.rtc_change(1)               # name passes, no action field: no
        vm.machine.io_error("disk1", "write")  # action=report: no
        vm.machine.stop()                      # name filtered out
        vm.machine.cont()
        vm.machine.io_error("disk0", "write")  # action=stop: yes
        assert await cli.wait() == 0
    [event] = [json.loads(line) for line in cli.out]
    assert event["event"] == "BLOCK_IO_ERROR" and event["data"]["device"] == "disk0"


async def test_match_json_values_and_until(vm: SimulatedVM) -> None:
    async with running("watch", vm.socket_path, "--json", "--match", "offset=78",
                       "--until", "STOP") as cli:
        await joined(vm)
        vm.machine.rtc_change(77)
        vm.machine.rtc_change(78)
        vm.machine.stop()  # --until ends the watch whatever the filters say
        assert await cli.wait() == 0
    assert [json.loads(line)["event"] for line in cli.out] == ["RTC_CHANGE", "STOP"]
    assert json.loads(cli.out[0])["data"] == {"offset": 78}


async def test_timeout_exits_1(vm: SimulatedVM) -> None:
    status, out, err = await run("watch", vm.socket_path, "--until", "SHUTDOWN",
                                 "--timeout", "0.3")
    assert (status, out) == (1, "")
    one_line_error(err)
    assert "timed out" in err


async def test_a_misspelt_event_name_is_said_and_still_waited_for(vm: SimulatedVM) -> None:
    """``--event STPO`` waited silently for ever (the new user's finding)."""
    status, out, err = await run("watch", vm.socket_path, "--event", "stpo", "--event",
                                 "VNC_*", "--until", "RTC_CHANGE", "--timeout", "0.3")
    assert (status, out) == (1, "")
    note, timed_out = err.splitlines()
    assert note == ("qmpevents watch: STPO: no event QEMU 7.2 defines (a typo?); "
                    "waiting for it anyway")  # VNC_* is a glob, RTC_CHANGE known
    assert "timed out" in timed_out


async def test_timeout_counts_in_the_singular_too(vm: SimulatedVM) -> None:
    async with running("watch", vm.socket_path, "--count", "2", "--timeout", "1") as cli:
        await joined(vm)
        vm.machine.stop()
        assert await cli.wait() == 1
    assert cli.err[-1].endswith("timed out after 1 s (1 event)\n"), cli.err


@pytest.mark.parametrize("args", [
    ("watch",),
    ("watch", "x.sock", "--count", "0"),
    ("watch", "x.sock", "--count", "many"),
    ("watch", "x.sock", "--timeout", "-1"),
    ("watch", "x.sock", "--match", "nokey"),
    ("watch", "x.sock", "--match", "data.=1"),
    ("watch", "x.sock", "--color", "pink"),
    ("watch", "tcp:host-without-port"),
    ("watch", "x.sock", "--frobnicate"),
])
async def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    status, out, err = await run(*args)
    assert (status, out) == (2, "")
    one_line_error(err)


async def test_unreachable_target_exits_3(vm: SimulatedVM) -> None:
    status, out, err = await run("watch", vm.socket_path, "/tmp/qmpev-nothing-here.sock")
    assert (status, out) == (3, "")
    one_line_error(err)
    assert "qmpev-nothing-here" in err and "No such file" in err


async def test_sigterm_and_sigint_end_cleanly(vm: SimulatedVM) -> None:
    for signum, expected in ((signal.SIGTERM, 0), (signal.SIGINT, 0)):
        async with running("watch", vm.socket_path) as cli:
            await joined(vm)
            vm.machine.rtc_change(3)
            await cli.wait_line("RTC_CHANGE")
            cli.proc.send_signal(signum)
            assert await cli.wait() == expected
            assert cli.err == []
    async with running("watch", vm.socket_path, "--count", "5") as cli:  # a condition unmet
        await joined(vm)
        cli.proc.send_signal(signal.SIGTERM)
        assert await cli.wait() == 128 + signal.SIGTERM


async def test_directory_target_attaches_vms_that_appear_and_reports_loss() -> None:
    with short_dir("watch") as directory:
        first = SimulatedVM(qmp=[f"unix:{directory}/a.qmp"], name="a")
        async with first, running("watch", directory, "--json", "--rescan", "0.1") as cli:
            await cli.wait_line("a: attached", "err")
            async with SimulatedVM(qmp=[f"unix:{directory}/b.qmp"], name="b") as second:
                await cli.wait_line("b: attached", "err")
                second.machine.rtc_change(2)
                first.machine.rtc_change(1)
                got = {json.loads(await cli.line())["vm"] for _ in range(2)}
                assert got == {"a", "b"}
            await cli.wait_line("b: lost", "err")
            await cli.wait_line("b: gone", "err")  # its socket file was removed
            async with SimulatedVM(qmp=[f"unix:{directory}/b.qmp"], name="b") as again:
                await cli.wait_line("b: back", "err")
                again.machine.stop()
                assert json.loads(await cli.line()) | {"timestamp": 0} == {
                    "vm": "b", "event": "STOP", "timestamp": 0}
        assert "Traceback" not in "".join(cli.err)


async def test_fixed_target_killed_and_restarted_is_lost_and_back() -> None:
    with short_dir("watch") as directory:
        path = os.path.join(directory, "vm1.sock")
        vm = SimulatedVM(qmp=[f"unix:{path}"])
        await vm.start()
        async with running("watch", path, "--json") as cli:
            await joined(vm)
            await vm.close()
            await cli.wait_line("vm1: lost", "err")
            async with SimulatedVM(qmp=[f"unix:{path}"]) as vm:
                await cli.wait_line("vm1: back", "err")
                await joined(vm)
                vm.machine.rtc_change(9)
                assert json.loads(await cli.line())["data"] == {"offset": 9}


async def test_stdout_closed_early_ends_quietly(vm: SimulatedVM) -> None:
    reader, writer = os.pipe()
    os.close(reader)  # like `| head` having exited: every write gets EPIPE
    proc = await asyncio.create_subprocess_exec(
        *QMPEVENTS, "watch", vm.socket_path, stdout=writer, stderr=asyncio.subprocess.PIPE)
    os.close(writer)
    try:
        await joined(vm)
        vm.machine.rtc_change(1)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 141
    assert err == b""
