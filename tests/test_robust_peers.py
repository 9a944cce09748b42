"""Slow and dead peers: a monitor that never reads, a server that goes silent.

* 1,000,000 events to three monitors, one of which never reads: the server's
  RSS stays bounded, the two readers get every event in order, and the
  sleeper is disconnected as :mod:`qmpevents.server.monitor` documents
  (unsent output over ``max_outbound``: aborted, one WARNING).
* A server that negotiates and then never answers: ``execute(timeout=...)``
  raises TimeoutError; when the connection drops, pending commands raise
  ConnectionLost and event iterators end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from robust_support import VERSION, rss_kib

import qmpevents
from qmpevents.errors import ConnectionLost
from qmpevents.protocol import Command
from qmpevents.server import QMPServer, UnixAddress

EVENTS = 1_000_000
BATCH = 2_000
_SEQ = re.compile(rb'"n": (\d+)')


class _Nothing:
    def execute(self, command: Command) -> Any:
        return {}


class _Reader(asyncio.Protocol):
    """Negotiates, then checks that event numbers arrive as 0, 1, 2, ..."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lines = 0
        self.next = 0
        self.partial = b""
        self.negotiated = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()
        self.progress = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b'{"execute": "qmp_capabilities"}\n')

    def data_received(self, data: bytes) -> None:
        if not self.negotiated.done():
            data = self.partial + data
            if b'{"return": {}}\r\n' not in data:
                self.partial = data
                return
            data = data.split(b'{"return": {}}\r\n', 1)[1]
            self.partial = b""
            self.negotiated.set_result(None)
        data = self.partial + data
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:]
        numbers = [int(n) for n in _SEQ.findall(data, 0, cut)]
        if numbers:
            assert numbers == list(range(self.next, self.next + len(numbers))), self.next
            self.next += len(numbers)
        self.progress.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


@pytest.mark.slow
async def test_million_events_with_a_monitor_that_never_reads(
        caplog: pytest.LogCaptureFixture, figures: Callable[[str, object], None]) -> None:
    caplog.set_level(logging.WARNING, "qmpevents.server.monitor")
    path = f"/tmp/qmpev-slow-{os.getpid()}.sock"
    server = QMPServer([UnixAddress(path)], _Nothing(), version=VERSION)
    await server.start()
    loop = asyncio.get_running_loop()
    try:
        readers = []
        for _ in range(2):
            _, reader = await loop.create_unix_connection(_Reader, path)
            readers.append(reader)
        # The sleeper negotiates, then never reads again.
        _, sleeper = await loop.create_unix_connection(_Reader, path)
        for reader in [*readers, sleeper]:
            await asyncio.wait_for(reader.negotiated, 5)
        assert sleeper.transport is not None
        sleeper.transport.pause_reading()
        assert len(server.broadcaster) == 3

        template = (b'{"timestamp": {"seconds": 1700000000, "microseconds": 0}, '
                    b'"event": "RTC_CHANGE", "data": {"offset": 0, "n": %d}}\r\n')
        rss_before = rss_kib()
        rss_peak = rss_before
        started = time.perf_counter()
        for first in range(0, EVENTS, BATCH):
            for n in range(first, first + BATCH):
                server.broadcaster.publish_line(template % n)
            # Let the readers keep up (they share this process's loop): wait on
            # their progress, never on a timer.
            for reader in readers:
                while reader.next < first + BATCH - 2 * BATCH:
                    reader.progress.clear()
                    await asyncio.wait_for(reader.progress.wait(), 10)
            if first % (50 * BATCH) == 0:
                rss_peak = max(rss_peak, rss_kib())
        for reader in readers:
            while reader.next < EVENTS:
                reader.progress.clear()
                await asyncio.wait_for(reader.progress.wait(), 10)
        elapsed = time.perf_counter() - started
        rss_peak = max(rss_peak, rss_kib())
        assert all(reader.next == EVENTS for reader in readers)
        assert len(server.broadcaster) == 2 and server.monitors == 2
        # The sleeper wakes up: it finds what the kernel held, then the end.
        sleeper.transport.resume_reading()
        await asyncio.wait_for(sleeper.lost, 5)
        warnings = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
        assert len(warnings) == 1 and "bytes of output unread" in warnings[0], warnings
        assert rss_peak - rss_before < 64 * 1024, (rss_before, rss_peak)
        figures("slow monitor: events published to 3 monitors (1 never reads)",
                f"{EVENTS} in {elapsed:.1f} s; both readers got all {EVENTS} in order; "
                f"the sleeper was disconnected (max_outbound 1 MiB; {sleeper.next} events "
                "were in its socket buffers)")
        figures("slow monitor: server RSS before / peak",
                f"{rss_before / 1024:.1f} / {rss_peak / 1024:.1f} MiB")
    finally:
        await server.close()


# -- a server that goes silent -----------------------------------------------

GREETING = (b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, '
            b'"package": ""}, "capabilities": []}}\r\n')


class _SilentServer:
    """Greets, answers qmp_capabilities, then never says anything again."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.received = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        writer.write(GREETING)
        line = await reader.readline()
        request_id = re.search(rb'"id": "([^"]*)"', line)
        assert request_id is not None
        writer.write(b'{"return": {}, "id": "%s"}\r\n' % request_id.group(1))
        while await reader.readline():
            self.received.set()  # read, never answer


@pytest.fixture
async def silent() -> AsyncIterator[tuple[_SilentServer, str]]:
    """A silent server on a private unix socket: (the fake, ``unix:PATH``)."""
    fake = _SilentServer()
    directory = tempfile.mkdtemp(prefix="qmpev-")
    path = os.path.join(directory, "silent.sock")
    server = await asyncio.start_unix_server(fake.handle, path)
    try:
        yield fake, f"unix:{path}"
    finally:
        server.close()
        await server.wait_closed()
        shutil.rmtree(directory)


async def test_silent_server_execute_times_out_and_iterators_end(
        silent: tuple[_SilentServer, str]) -> None:
    fake, address = silent
    qmp = await qmpevents.connect(address, connect_timeout=5)
    events = qmp.events()
    with pytest.raises(TimeoutError):
        await qmp.execute("query-status", timeout=0.2)
    pending = asyncio.create_task(qmp.execute("query-status"))
    await asyncio.wait_for(fake.received.wait(), 5)
    iteration = asyncio.create_task(_collect(events))
    fake.writers[0].transport.abort()  # the silent server finally drops us
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(pending, 5)
    assert await asyncio.wait_for(iteration, 5) == []
    assert not qmp.connected
    await qmp.close()


async def test_silent_server_iterators_end_on_close(silent: tuple[_SilentServer, str]) -> None:
    fake, address = silent
    qmp = await qmpevents.connect(address, connect_timeout=5)
    events = qmp.events()
    pending = asyncio.create_task(qmp.execute("stop"))
    await asyncio.wait_for(fake.received.wait(), 5)
    iteration = asyncio.create_task(_collect(events))
    await asyncio.wait_for(qmp.close(), 5)
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(pending, 5)
    assert await asyncio.wait_for(iteration, 5) == []


async def test_server_that_never_greets_fails_connect_in_time() -> None:
    accepted = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()

    path = f"/tmp/qmpev-mute-{os.getpid()}.sock"
    server = await asyncio.start_unix_server(mute, path)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await qmpevents.connect(f"unix:{path}", connect_timeout=0.3)
        assert accepted.is_set() and time.monotonic() - started < 3
    finally:
        server.close()
        await server.wait_closed()
        os.unlink(path)


async def _collect(events: Any) -> list[Any]:
    return [event async for event in events]
