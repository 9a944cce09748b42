"""Every event and chain of the simulated VM, over a real socket, in both profiles.

Timers (RTC throttling, the guest's reaction to ACPI power-down) run on a
:class:`ManualClock` that the test advances: nothing here sleeps.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conformance.masking import mask
from qmp_raw import names, reply

from qmpevents import validate
from qmpevents.catalog import Profile
from qmpevents.sim import ManualClock, SimulatedVM
from qmpevents.testing import RawQMP
from qmpevents.vnc_client import handshake

PROFILES: list[Profile] = ["seed", "qemu-7.2"]

# The event lines of ../shared/spec/qemu-7.2-wire.md (real QEMU 7.2.22), masked.  The
# two stop/enospc lines there come from -blockdev (device "", node named by the user);
# the simulator's drives are -drive style, so in the file those two are given the
# -drive form (device = drive id, auto node name), the only difference.
WIRE_DOC = [mask(line) for line in
            (Path(__file__).parent / "data" / "qemu72_wire_events.txt").read_bytes()
            .replace(b"\n", b"\r\n").splitlines(keepends=True)]

DRIVES = ["d_stop,werror=stop,rerror=stop", "d_report,werror=report,rerror=report",
          "d_ignore,werror=ignore,rerror=ignore", "d_enospc"]


async def _client(vm: SimulatedVM) -> RawQMP:
    client = await RawQMP.unix(vm.socket_path)
    await client.negotiate()
    return client


def _check_profile(lines: list[bytes], profile: Profile) -> None:
    for line in lines:
        validate(line.rstrip(b"\r\n"), profile)


async def test_qemu72_profile_reproduces_the_wire_doc_lines() -> None:
    clock = ManualClock()
    async with SimulatedVM(profile="qemu-7.2", drives=DRIVES, start_paused=True,
                           vnc="127.0.0.1:0", vnc_port=0, powerdown_delay=5,
                           clock=clock) as vm:
        qmp = await _client(vm)
        seen = await qmp.ok("cont") + await qmp.ok("stop") + await qmp.ok("cont")
        seen += await qmp.ok("system_reset") + await qmp.ok("x-sim-guest-reset")
        seen += await qmp.ok("x-sim-rtc-change", {"offset": 97754175})
        seen += await qmp.ok("x-sim-io-error", {"device": "d_stop", "operation": "write"})
        seen += await qmp.ok("cont")
        seen += await qmp.ok("x-sim-io-error", {"device": "d_report", "operation": "write"})
        seen += await qmp.ok("x-sim-io-error", {"device": "d_ignore", "operation": "read"})
        seen += await qmp.ok("x-sim-io-error", {"device": "d_enospc", "operation": "write",
                                                "errno": "ENOSPC"})
        seen += await qmp.ok("cont")
        assert vm.vnc_port is not None
        viewer = await handshake("127.0.0.1", vm.vnc_port)
        await viewer.close()
        seen += [await qmp.line() for _ in range(3)]
        seen += await qmp.ok("system_powerdown")
        clock.advance(5)  # the guest honours ACPI: SHUTDOWN(guest-shutdown), VM exits
        seen.append(await qmp.line())
        assert await qmp.eof() == b""
        assert await vm.wait_closed() == 0
    masked = [re.sub(rb"#block\w+", b"#blockN", mask(line)) for line in seen]
    expected = {re.sub(rb"#block\w+", b"#blockN", line) for line in WIRE_DOC}
    assert set(masked) - expected == set()
    quit_line = [line for line in WIRE_DOC if b"host-qmp-quit" in line]
    assert expected - set(masked) == set(quit_line)  # quit is covered by its own test
    _check_profile(seen, "qemu-7.2")


@pytest.mark.parametrize("profile", PROFILES)
async def test_runstate_chain(profile: Profile) -> None:
    async with SimulatedVM(profile=profile, start_paused=True) as vm:
        qmp = await _client(vm)

        async def status() -> str:
            _, line = await qmp.execute("query-status")
            value: str = reply(line)["return"]["status"]
            return value

        resume = ["RESUME"] if profile == "qemu-7.2" else []
        assert await status() == "prelaunch"
        assert names(await qmp.ok("stop")) == []          # stop while paused: nothing
        assert names(await qmp.ok("cont")) == resume
        assert names(await qmp.ok("cont")) == []          # cont while running: nothing
        assert await status() == "running"
        assert names(await qmp.ok("system_reset")) == ["RESET"]
        assert await status() == "running"                # running stays running
        assert names(await qmp.ok("stop")) == ["STOP"]
        assert await status() == "paused"
        assert names(await qmp.ok("system_reset")) == ["RESET"]
        assert await status() == "prelaunch"              # reset while paused
        events = await qmp.ok("cont") + await qmp.ok("x-sim-guest-reset")
        assert names(events) == [*resume, "RESET"]
        _check_profile(events, profile)
        if profile == "seed":
            assert events[-1].endswith(b'"event": "RESET"}\r\n')  # no data in the spec


@pytest.mark.parametrize("profile", PROFILES)
async def test_guest_shutdown_with_no_shutdown(profile: Profile) -> None:
    async with SimulatedVM(profile=profile, no_shutdown=True) as vm:
        qmp = await _client(vm)
        events = await qmp.ok("x-sim-guest-shutdown")
        assert names(events) == ["SHUTDOWN", "STOP"]
        _check_profile(events, profile)
        _, line = await qmp.execute("query-status")
        assert reply(line)["return"] == {"running": False, "singlestep": False,
                                         "status": "shutdown"}
        _, line = await qmp.execute("cont")
        assert reply(line) == {"error": {"class": "GenericError",
                                         "desc": "Resetting the Virtual Machine is required"}}
        assert names(await qmp.ok("system_reset")) == ["RESET"]
        _, line = await qmp.execute("query-status")
        assert reply(line)["return"]["status"] == "prelaunch"
        assert vm.machine.exit_status is None


@pytest.mark.parametrize("profile", PROFILES)
async def test_guest_shutdown_exits(profile: Profile) -> None:
    async with SimulatedVM(profile=profile, multi_client=True) as vm:
        a, b = await _client(vm), await _client(vm)
        events = await a.ok("x-sim-guest-shutdown")
        assert names(events) == ["SHUTDOWN"]
        assert await a.eof() == b""
        assert await b.line() == events[0]
        assert await b.eof() == b""
        assert await vm.wait_closed() == 0


@pytest.mark.parametrize("profile", PROFILES)
async def test_quit(profile: Profile) -> None:
    async with SimulatedVM(profile=profile, no_shutdown=True) as vm:
        qmp = await _client(vm)
        await qmp.send(b'{"execute": "quit"}\r\n')
        shutdown = await qmp.line()
        assert await qmp.line() == b'{"return": {}}\r\n'
        assert await qmp.eof() == b""  # no STOP, even with -no-shutdown
        assert await vm.wait_closed() == 0
        path = vm.socket_path
    if profile == "qemu-7.2":
        assert mask(shutdown) in WIRE_DOC
    else:
        assert names([shutdown]) == ["SHUTDOWN"] and b"data" not in shutdown
    assert not os.path.exists(path)


@pytest.mark.parametrize("profile", PROFILES)
async def test_block_policies(profile: Profile) -> None:
    drives = ["r,werror=report,rerror=report", "i,werror=ignore,rerror=ignore",
              "s,werror=stop,rerror=stop", "e"]
    async with SimulatedVM(profile=profile, drives=drives) as vm:
        qmp = await _client(vm)

        async def inject(device: str, operation: str, errno: str = "EIO") -> list[bytes]:
            return await qmp.ok("x-sim-io-error", {"device": device, "operation": operation,
                                                   "errno": errno})

        def data(line: bytes) -> dict[str, object]:
            value: dict[str, object] = json.loads(line)["data"]
            return value

        for device, action in (("r", "report"), ("i", "ignore")):
            for operation in ("read", "write"):
                events = await inject(device, operation)
                assert names(events) == ["BLOCK_IO_ERROR"]
                assert data(events[0])["action"] == action
                assert "nospace" not in data(events[0])
        # werror=enospc (default): EIO is reported, ENOSPC stops; rerror=report (default).
        assert data((await inject("e", "write"))[0])["action"] == "report"
        assert data((await inject("e", "read", "ENOSPC"))[0])["action"] == "report"
        events = await inject("e", "write", "ENOSPC")
        assert names(events) == ["BLOCK_IO_ERROR", "STOP"]
        assert data(events[0])["action"] == "stop"
        _, line = await qmp.execute("query-block")
        status = {d["device"]: d.get("io-status") for d in reply(line)["return"]}
        assert status == {"r": None, "i": None, "s": "ok", "e": "nospace"}
        _, line = await qmp.execute("query-status")
        assert reply(line)["return"]["status"] == "io-error"
        await qmp.ok("cont")
        events = await inject("s", "read")
        assert names(events) == ["BLOCK_IO_ERROR", "STOP"]
        _check_profile(events, profile)
        if profile == "qemu-7.2":
            assert data(events[0])["nospace"] is False
            assert data(events[0])["reason"] == "Input/output error"
        else:
            assert data(events[0]) == {"device": "s", "operation": "read", "action": "stop"}
        _, line = await qmp.execute("query-block")
        assert [d.get("io-status") for d in reply(line)["return"]] == [None, None, "failed", "ok"]
        await qmp.ok("cont")
        _, line = await qmp.execute("query-block")
        assert [d.get("io-status") for d in reply(line)["return"]] == [None, None, "ok", "ok"]


async def test_rtc_change_throttled_in_qemu72_profile() -> None:
    clock = ManualClock(start=1000.0)
    async with SimulatedVM(profile="qemu-7.2", clock=clock) as vm:
        qmp = await _client(vm)
        first = await qmp.ok("x-sim-rtc-change", {"offset": 1})
        assert [json.loads(line)["data"]["offset"] for line in first] == [1]
        clock.advance(0.05)
        for offset in (2, 3, 4):  # inside the window: held, the last wins
            assert await qmp.ok("x-sim-rtc-change", {"offset": offset}) == []
            clock.advance(0.01)
        clock.advance(0.92)  # t = 1000.999: window still open
        _, line = await qmp.execute("query-status")
        assert "return" in reply(line)
        clock.advance(0.001)  # the window closes: the held event goes out
        delayed = await qmp.event()
        assert delayed["data"] == {"offset": 4, "qom-path": "/machine/unattached/device[9]"}
        # ...stamped when it was generated (t=1000.07), not when sent (t=1001).
        assert delayed["timestamp"] == {"seconds": 1000, "microseconds": 70000}
        clock.advance(1.0)  # a window with nothing held ends the throttling
        assert names(await qmp.ok("x-sim-rtc-change", {"offset": 5})) == ["RTC_CHANGE"]


async def test_rtc_change_not_throttled_in_seed_profile() -> None:
    async with SimulatedVM(clock=ManualClock()) as vm:
        qmp = await _client(vm)
        events = []
        for offset in (1, 2, 3):
            events += await qmp.ok("x-sim-rtc-change", {"offset": offset})
        assert [json.loads(line)["data"] for line in events] == [{"offset": 1}, {"offset": 2},
                                                                   {"offset": 3}]


@pytest.mark.parametrize("profile", PROFILES)
async def test_powerdown_honoured_after_delay(profile: Profile) -> None:
    clock = ManualClock()
    async with SimulatedVM(profile=profile, no_shutdown=True, powerdown_delay=2,
                           clock=clock) as vm:
        qmp = await _client(vm)
        expected = ["POWERDOWN"] if profile == "qemu-7.2" else []
        assert names(await qmp.ok("system_powerdown")) == expected
        clock.advance(1.9)
        _, line = await qmp.execute("query-status")
        assert reply(line)["return"]["status"] == "running"
        clock.advance(0.1)
        assert [(await qmp.event())["event"] for _ in range(2)] == ["SHUTDOWN", "STOP"]


async def test_powerdown_while_paused_waits_for_cont_and_reset_cancels_it() -> None:
    clock = ManualClock()
    async with SimulatedVM(profile="qemu-7.2", no_shutdown=True, powerdown_delay=1,
                           start_paused=True, clock=clock) as vm:
        qmp = await _client(vm)
        assert names(await qmp.ok("system_powerdown")) == ["POWERDOWN"]
        assert names(await qmp.ok("cont")) == ["RESUME"]
        clock.advance(1)
        assert [(await qmp.event())["event"] for _ in range(2)] == ["SHUTDOWN", "STOP"]
        await qmp.ok("system_reset")
        await qmp.ok("cont")
        await qmp.ok("system_powerdown")
        assert names(await qmp.ok("x-sim-guest-reset")) == ["RESET"]
        clock.advance(5)
        _, line = await qmp.execute("query-status")
        assert reply(line)["return"]["status"] == "running"  # the reboot dropped the request


async def test_ignore_acpi() -> None:
    clock = ManualClock()
    async with SimulatedVM(profile="qemu-7.2", ignore_acpi=True, clock=clock) as vm:
        qmp = await _client(vm)
        assert names(await qmp.ok("system_powerdown")) == ["POWERDOWN"]
        clock.advance(60)
        _, line = await qmp.execute("query-status")
        assert reply(line)["return"]["status"] == "running"


async def test_guest_actions_need_a_running_guest() -> None:
    async with SimulatedVM(start_paused=True, drives=["d"]) as vm:
        qmp = await _client(vm)
        for command, arguments in (("x-sim-guest-reset", None), ("x-sim-guest-shutdown", None),
                                   ("x-sim-rtc-change", {"offset": 1}),
                                   ("x-sim-io-error", {"device": "d", "operation": "read"})):
            events, line = await qmp.execute(command, arguments)
            assert events == []
            assert reply(line) == {"error": {
                "class": "GenericError", "desc": "The guest is not running (status: prelaunch)"}}


@pytest.mark.parametrize("profile", PROFILES)
async def test_vnc_events_and_query(profile: Profile) -> None:
    async with SimulatedVM(profile=profile, vnc="127.0.0.1:0", vnc_port=0,
                           vnc_password="secret") as vm:
        qmp = await _client(vm)
        assert vm.vnc_port is not None
        viewer = await handshake("127.0.0.1", vm.vnc_port, password="secret")
        events = [await qmp.line() for _ in range(2)]
        _, line = await qmp.execute("query-vnc")
        info = reply(line)["return"]
        assert info["auth"] == "vnc" and info["service"] == str(vm.vnc_port)
        assert [c["service"] for c in info["clients"]] == [viewer.local_port]
        await viewer.close()
        events.append(await qmp.line())
        assert names(events) == ["VNC_CONNECTED", "VNC_INITIALIZED", "VNC_DISCONNECTED"]
        _check_profile(events, profile)
        data = json.loads(events[0])["data"]
        assert data["server"]["auth"] == "vnc"
        assert data["client"]["service"] == viewer.local_port
        assert ("websocket" in data["client"]) == (profile == "qemu-7.2")
        assert await qmp.ok("change-vnc-password", {"password": "other"}) == []
