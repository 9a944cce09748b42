"""Churn: 10,000 QMP and 10,000 VNC connect -> negotiate -> disconnect cycles.

Against one SimulatedVM, with many clients at a time on raw sockets.  After
the cycles: no file descriptor or asyncio task left behind, RSS within a
small margin of what it was (measured after a warm-up), and the server still
answers.  A negotiated watcher sees every VNC client's three events.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable

import pytest
from robust_support import eventually, open_fds, rss_kib

from qmpevents.sim.vm import SimulatedVM
from qmpevents.testing import RawQMP

CYCLES = 10_000
WARMUP = 500
CONCURRENCY = 32
RSS_MARGIN_KIB = 8 * 1024


async def _qmp_cycle(loop: asyncio.AbstractEventLoop, path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, path)
        data = b""
        while not data.endswith(b"\n"):
            chunk = await loop.sock_recv(sock, 4096)
            assert chunk, "no greeting"
            data += chunk
        assert data.startswith(b'{"QMP": ')
        await loop.sock_sendall(sock, b'{"execute": "qmp_capabilities", "id": 1}\n')
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = await loop.sock_recv(sock, 4096)
            assert chunk, "no reply"
            reply += chunk
        assert reply == b'{"return": {}, "id": 1}\r\n', reply


async def _vnc_cycle(loop: asyncio.AbstractEventLoop, port: int) -> None:
    async def exactly(sock: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = await loop.sock_recv(sock, size - len(data))
            assert chunk, "VNC server closed early"
            data += chunk
        return data

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        # Reset on close: 10k TIME_WAIT sockets per run would exhaust local ports.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await loop.sock_connect(sock, ("127.0.0.1", port))
        assert await exactly(sock, 12) == b"RFB 003.008\n"
        await loop.sock_sendall(sock, b"RFB 003.008\n")
        assert await exactly(sock, 2) == b"\x01\x01"  # one type: None
        await loop.sock_sendall(sock, b"\x01")
        assert await exactly(sock, 4) == b"\x00\x00\x00\x00"
        await loop.sock_sendall(sock, b"\x01")  # ClientInit, shared
        header = await exactly(sock, 24)
        await exactly(sock, struct.unpack(">I", header[20:24])[0])


async def _run(cycles: int, cycle: Callable[[], object]) -> None:
    remaining = iter(range(cycles))

    async def worker() -> None:
        for _ in remaining:
            await cycle()  # type: ignore[misc]

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


@pytest.mark.slow
async def test_qmp_and_vnc_churn(figures: Callable[[str, object], None]) -> None:
    loop = asyncio.get_running_loop()
    async with SimulatedVM(vnc="127.0.0.1:0", vnc_port=0, profile="qemu-7.2") as vm:
        port = vm.vnc_port
        assert port is not None
        path = vm.socket_path
        events: list[str] = []
        vm.machine.subscribe(lambda message: events.append(message["event"]))

        def qmp() -> object:
            return _qmp_cycle(loop, path)

        def vnc() -> object:
            return _vnc_cycle(loop, port)

        def settled() -> bool:
            return vm.server.monitors == 0 and not vm.machine.vnc._clients  # type: ignore[union-attr]

        await _run(WARMUP, qmp)
        await _run(WARMUP, vnc)
        await eventually(settled, what="warm-up connections to close")
        fds, tasks, rss = open_fds(), len(asyncio.all_tasks()), rss_kib()

        started = time.perf_counter()
        await _run(CYCLES, qmp)
        qmp_seconds = time.perf_counter() - started
        started = time.perf_counter()
        await _run(CYCLES, vnc)
        vnc_seconds = time.perf_counter() - started
        await eventually(settled, what="all connections to close")
        await eventually(lambda: events.count("VNC_DISCONNECTED") == WARMUP + CYCLES,
                         what="every VNC_DISCONNECTED")

        fds_after, tasks_after, rss_after = open_fds(), len(asyncio.all_tasks()), rss_kib()
        for name in ("VNC_CONNECTED", "VNC_INITIALIZED", "VNC_DISCONNECTED"):
            assert events.count(name) == WARMUP + CYCLES, name
        assert fds_after == fds
        assert tasks_after == tasks
        assert rss_after - rss < RSS_MARGIN_KIB, (rss, rss_after)
        client = await RawQMP.unix(path)
        await client.negotiate()
        await client.send(b'{"execute": "query-status", "id": "still"}\n')
        assert b'"id": "still"' in await client.line()
        await client.close()

        figures("churn: QMP connect/negotiate/disconnect cycles",
                f"{CYCLES} in {qmp_seconds:.1f} s ({CONCURRENCY} at a time)")
        figures("churn: VNC connect/handshake/disconnect cycles",
                f"{CYCLES} in {vnc_seconds:.1f} s ({CONCURRENCY} at a time), "
                f"{3 * CYCLES} VNC events emitted")
        figures("churn: open fds / asyncio tasks before -> after",
                f"{fds} -> {fds_after} / {tasks} -> {tasks_after}")
        figures("churn: RSS before -> after",
                f"{rss / 1024:.1f} -> {rss_after / 1024:.1f} MiB "
                f"(margin {RSS_MARGIN_KIB // 1024} MiB)")
