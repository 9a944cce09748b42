"""qmpevents.testing: the raw client and the fake server behave as documented."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

import qmpevents.testing
from qmpevents.sim import SimulatedVM
from qmpevents.testing import FakeQMP, ProbeTimeoutError, RawQMP


@pytest.mark.subprocess
def test_names_are_imported_on_first_use() -> None:
    code = ("import sys, qmpevents.testing as t\n"
            "parts = ('qmpevents.testing.raw', 'qmpevents.testing.fake', 'qmpevents.sim.clock')\n"
            "assert not [p for p in parts if p in sys.modules], sys.modules.keys()\n"
            "t.RawQMP\n"
            "assert 'qmpevents.testing.raw' in sys.modules\n"
            "assert 'qmpevents.testing.fake' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    assert {"FakeQMP", "ManualClock", "RawQMP"} <= set(dir(qmpevents.testing))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        qmpevents.testing.Nope  # noqa: B018


async def test_retry_waits_for_a_socket_that_appears(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "late.sock")
    with pytest.raises(FileNotFoundError):
        await RawQMP.unix(path)
    connecting = asyncio.create_task(RawQMP.connect(f"unix:{path}", retry=True))
    with pytest.raises(TimeoutError):  # still trying, where no retry fails at once
        await asyncio.wait_for(asyncio.shield(connecting), 0.1)

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'{"QMP": {"version": {}, "capabilities": []}}\r\n{"ret')
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(greet, path)
    try:
        raw = await connecting
        assert await raw.greeting() == {"QMP": {"version": {}, "capabilities": []}}
        assert await raw.line() == b'{"ret'  # the unterminated tail, then end of input
        with pytest.raises(EOFError):
            await raw.line()
        await raw.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_sync_returns_what_came_before_the_probe() -> None:
    async with (SimulatedVM(profile="qemu-7.2") as vm,
                await RawQMP.connect(vm.socket_path) as raw):
        await raw.negotiate()
        await raw.send(b'{"execute": "stop"}\r\n{"execute": "cont"}\r\n')
        lines = await raw.sync()
        assert [json.loads(line).get("event", "reply") for line in lines] == [
            "STOP", "reply", "RESUME", "reply"]
        await raw.send(b'{"execute": "stop"')  # unfinished: the probe is swallowed
        with pytest.raises(ProbeTimeoutError) as caught:
            await raw.sync(quiet=0.2)
        assert caught.value.lines == []


async def test_fake_server_commands_and_shutdown_with_a_hung_command() -> None:
    async with FakeQMP() as fake:
        raw = await RawQMP.connect(fake.address)
        await raw.negotiate()
        events, reply = await raw.execute("emit", {"events": [{"name": "X-CUSTOM"}]})
        assert b'"event": "X-CUSTOM"' in events[0] and reply == b'{"return": {}}\r\n'
        _, reply = await raw.execute("nope")
        assert b'"CommandNotFound"' in reply
        await raw.send(b'{"execute": "hang"}\r\n')
        await fake.hung.wait()
    assert await raw.eof() == b""  # the fake's exit ended the hung session
    await raw.close()


async def test_fake_server_answers_after_a_burst_of_bad_input() -> None:
    async with FakeQMP() as fake:
        raw = await RawQMP.connect(fake.address)
        await raw.negotiate()
        await raw.send(b'"bad"\n' * 4000 + b'{"execute": "query-status", "id": 1}\n')
        errors = 0
        while b'"id": 1' not in (line := await raw.line()):
            assert b"QMP input must be a JSON object" in line
            errors += 1
        assert errors == 4000
        await raw.aclose()
