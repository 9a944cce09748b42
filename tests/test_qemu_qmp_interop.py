"""qemu.qmp (the official Python client, PyPI ``qemu.qmp``) as a client of our server.

Connect, negotiate, execute, receive every seed event through an EventListener
(plus RESUME and POWERDOWN in the ``qemu-7.2`` profile), disconnect -- in both
profiles.  Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from qemu.qmp import EventListener, ExecuteError, QMPClient

from qmpevents.catalog import SPEC_EVENTS, Profile
from qmpevents.sim import SimulatedVM
from qmpevents.vnc_client import handshake

DEADLINE = 10.0


async def _next(listener: EventListener) -> dict[str, Any]:
    message = await asyncio.wait_for(listener.get(), DEADLINE)
    return dict(message)


@pytest.mark.parametrize("profile", ["seed", "qemu-7.2"])
async def test_qemu_qmp_client_receives_every_event(profile: Profile) -> None:
    async with SimulatedVM(profile=profile, drives=["disk0,werror=report"], no_shutdown=True,
                           ignore_acpi=True, vnc="127.0.0.1:0", vnc_port=0) as vm:
        client = QMPClient("conformance")
        listener = EventListener()
        client.register_listener(listener)
        try:
            await asyncio.wait_for(client.connect(vm.socket_path), DEADLINE)
            assert client.greeting is not None
            version = client.greeting.QMP.version["qemu"]
            assert isinstance(version, dict) and (version["major"], version["minor"]) == (7, 2)
            status = await client.execute("query-status")
            assert isinstance(status, dict) and status["status"] == "running"
            with pytest.raises(ExecuteError) as caught:
                await client.execute("no-such-command")
            assert caught.value.error_class == "CommandNotFound"

            seen: list[dict[str, Any]] = []

            async def run(command: str, arguments: dict[str, Any] | None = None,
                          count: int = 1) -> None:
                await asyncio.wait_for(client.execute(command, arguments), DEADLINE)
                seen.extend([await _next(listener) for _ in range(count)])

            await run("stop")
            if profile == "qemu-7.2":
                await run("cont")
                await run("system_powerdown")
            else:
                await client.execute("cont")  # no RESUME in the seed profile
            await run("system_reset")
            await run("x-sim-io-error", {"device": "disk0", "operation": "write"})
            await run("x-sim-rtc-change", {"offset": 42})
            port = vm.vnc_port
            assert port is not None
            rfb = await asyncio.wait_for(handshake("127.0.0.1", port), DEADLINE)
            seen += [await _next(listener), await _next(listener)]
            await rfb.close()
            seen.append(await _next(listener))
            await run("x-sim-guest-shutdown", count=2)  # SHUTDOWN, STOP (-no-shutdown)

            names = [event["event"] for event in seen]
            expected = set(SPEC_EVENTS)
            if profile == "qemu-7.2":
                expected |= {"RESUME", "POWERDOWN"}
            assert set(names) == expected, names
            assert names[-2:] == ["SHUTDOWN", "STOP"]
            assert all("seconds" in event["timestamp"] for event in seen)
            io_error = next(e for e in seen if e["event"] == "BLOCK_IO_ERROR")
            assert io_error["data"]["device"] == "disk0"
            assert io_error["data"]["action"] == "report"
            rtc = next(e for e in seen if e["event"] == "RTC_CHANGE")
            assert rtc["data"]["offset"] == 42
            status = await client.execute("query-status")
            assert isinstance(status, dict) and status["status"] == "shutdown"
        finally:
            await asyncio.wait_for(client.disconnect(), DEADLINE)
        assert client.runstate.name == "IDLE"
