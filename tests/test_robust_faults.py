"""Abrupt faults: processes SIGKILLed mid-message, mid-event and mid-recording.

* A client killed after writing half a command: the server logs one line
  (EOF, the bytes discarded), drops that monitor, and the others carry on.
* ``qmpevents serve`` killed while it emits: the client's iterator ends and
  the commands in flight raise ConnectionLost.
* ``qmpevents record --fsync always`` killed while recording: every record it
  had written is in the file, in order, and a torn tail is skipped on reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator

import pytest
from robust_support import eventually

import qmpevents
from qmpevents.errors import ConnectionLost
from qmpevents.recording import ReadReport, read_recording
from qmpevents.sim.vm import SimulatedVM
from qmpevents.testing import RawQMP

pytestmark = pytest.mark.subprocess

DEADLINE = 10.0
QMPEVENTS = (sys.executable, "-c", "import sys; from qmpevents.cli import main; sys.exit(main())")

HALF_A_COMMAND = r'''
import socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
file = sock.makefile("rb")
file.readline()
sock.sendall(b'{"execute": "qmp_capabilities"}\n')
file.readline()
sock.sendall(b'{"execute": "query-st')
print("ready", flush=True)
sys.stdin.read()
'''


@contextlib.asynccontextmanager
async def process(*args: str, ready: tuple[bytes, ...],
                  stream: str = "stderr") -> AsyncIterator[asyncio.subprocess.Process]:
    """Start a process; ready once a line containing one of *ready* appears on *stream*."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out = proc.stderr if stream == "stderr" else proc.stdout
    assert out is not None
    try:
        async with asyncio.timeout(DEADLINE):
            while True:
                line = await out.readline()
                assert line, f"{args[-1]!r} ended before {ready!r}"
                if any(mark in line for mark in ready):
                    break
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_client_killed_mid_message(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "qmpevents.server.monitor")
    async with SimulatedVM() as vm:
        other = await RawQMP.unix(vm.socket_path)
        await other.negotiate()
        async with process(sys.executable, "-c", HALF_A_COMMAND, vm.socket_path,
                           ready=(b"ready",), stream="stdout") as proc:
            await eventually(lambda: vm.server.monitors == 2, what="both monitors")
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        await eventually(lambda: vm.server.monitors == 1, what="the dead monitor to go")
        gone = [r.getMessage() for r in caplog.records if " gone " in r.getMessage()]
        assert len(gone) == 1, gone
        assert "(EOF); 21 bytes of an unfinished request" in gone[0], gone
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        await other.send(b'{"execute": "query-status", "id": 7}\n')
        assert b'"id": 7' in await other.line()
        assert len(vm.server.broadcaster) == 1


async def _spam(qmp: qmpevents.QMPClient, errors: list[BaseException]) -> None:
    """Commands that each emit an event, 16 in flight, until the connection fails."""
    async def one(n: int) -> None:
        try:
            await qmp.execute("x-sim-rtc-change", {"offset": n})
        except ConnectionLost as exc:
            errors.append(exc)

    n = 0
    while qmp.connected:
        await asyncio.gather(*(one(n + i) for i in range(16)))
        n += 16


async def test_server_killed_mid_event(short_tmp: str) -> None:
    sock = os.path.join(short_tmp, "s.sock")
    async with process(*QMPEVENTS, "serve", "--qmp", f"unix:{sock}",
                       ready=(b"QMP listening on",)) as server:
        qmp = await qmpevents.connect(f"unix:{sock}")
        events = qmp.events("RTC_CHANGE")
        seen = 0
        errors: list[BaseException] = []
        spam = asyncio.create_task(_spam(qmp, errors))

        async def consume() -> None:
            nonlocal seen
            async for _ in events:
                seen += 1
                if seen == 500:
                    server.send_signal(signal.SIGKILL)

        await asyncio.wait_for(consume(), DEADLINE)  # ends: the iterator finishes
        await asyncio.wait_for(spam, DEADLINE)
        assert seen >= 500
        assert errors, "no command was in flight when the server died"
        assert all(isinstance(error, ConnectionLost) for error in errors)
        with pytest.raises(ConnectionLost):
            await qmp.execute("query-status")
        await qmp.close()


async def test_recorder_killed_loses_nothing_it_wrote(short_tmp: str) -> None:
    sock = os.path.join(short_tmp, "r.sock")
    output = os.path.join(short_tmp, "rec.jsonl")
    async with process(*QMPEVENTS, "serve", "--qmp", f"unix:{sock}",
                       ready=(b"QMP listening on",)):
        watcher = await RawQMP.unix(sock)
        await watcher.negotiate()
        async with process(*QMPEVENTS, "record", f"unix:{sock}", "-o", output,
                           "--fsync", "always",
                           ready=(b"attached", b"recording to")) as recorder:
            qmp = await qmpevents.connect(f"unix:{sock}")

            def lines() -> int:
                with open(output, "rb") as file:
                    return file.read().count(b"\n")

            # Emit until the recorder has written 400 records, and while it dies.
            spam = asyncio.create_task(_spam(qmp, []))
            await eventually(lambda: lines() >= 400, what="400 records on disk")
            acknowledged = lines()
            recorder.send_signal(signal.SIGKILL)
            await recorder.wait()
            await qmp.close()
            await spam
        report = ReadReport()
        records = list(read_recording(output, report))
        assert len(records) >= acknowledged
        assert report.bad_lines == 0
        recorded = [record.message_bytes() for record in records]
        emitted: list[bytes] = []
        while recorded[-1] not in emitted:
            emitted.append((await watcher.line()).rstrip(b"\r\n"))
    # What the recorder wrote is a gap-free run of what the VM emitted.
    start = emitted.index(recorded[0])
    assert recorded == emitted[start:start + len(recorded)], "records lost or reordered"
    # A crash mid-write leaves a torn line: it is skipped, the rest kept.
    with open(output, "ab") as file:
        file.write(b'{"vm": "x", "received": 1.0, "direction": "event", "mess')
    report = ReadReport()
    assert len(list(read_recording(output, report))) == len(records)
    assert report.torn_tail


