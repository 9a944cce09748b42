"""Tests of the simulator's VNC server against the RFB client in ``qmpevents.vnc_client``.

Synchronisation is by awaiting the recorded ``on_event`` calls (an asyncio queue) or
protocol replies, never by sleeping; every wait has a deadline so a bug fails fast.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from qmpevents.sim.vnc import VncEndpoint, VncListener
from qmpevents.vnc_client import (
    BGR233,
    BGRX_BE,
    RGB565,
    RGB565_BE,
    AuthFailed,
    PixelFormat,
    Rect,
    RfbClient,
    handshake,
)

pytestmark = pytest.mark.asyncio

HOST = "127.0.0.1"
DEADLINE = 5.0
CONNECTED, INITIALIZED, DISCONNECTED = "VNC_CONNECTED", "VNC_INITIALIZED", "VNC_DISCONNECTED"
Event = tuple[str, VncEndpoint, VncEndpoint]


@dataclass
class Recorder:
    """Records on_event calls and lets tests await them."""

    events: list[Event] = field(default_factory=list)
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)

    def __call__(self, name: str, server: VncEndpoint, client: VncEndpoint) -> None:
        self.events.append((name, server, client))
        self.queue.put_nowait((name, server, client))

    async def next(self) -> Event:
        return await asyncio.wait_for(self.queue.get(), DEADLINE)

    async def until(self, name: str, service: str) -> Event:
        """Wait for event ``name`` of the client whose port is ``service``."""
        while True:
            event = await self.next()
            if event[0] == name and event[2].service == service:
                return event

    async def count(self, name: str, n: int) -> None:
        """Wait until ``n`` events called ``name`` have been recorded in total."""
        while sum(1 for e in self.events if e[0] == name) < n:
            await self.next()

    def names(self, service: str) -> list[str]:
        return [e[0] for e in self.events if e[2].service == service]


@dataclass
class Harness:
    listener: VncListener
    events: Recorder
    lines: list[str]


@asynccontextmanager
async def running(host: str = HOST, **kwargs: Any) -> AsyncIterator[Harness]:
    events = Recorder()
    lines = ["vm: demo", "status: running"]
    kwargs.setdefault("port", 0)
    listener = VncListener(host, 0, on_event=events, screen=lambda: lines, **kwargs)
    await listener.start()
    try:
        yield Harness(listener, events, lines)
    finally:
        await listener.close()


# ---------------------------------------------------------------- handshakes


@pytest.mark.parametrize("minor", [3, 7, 8])
async def test_no_auth_handshake_and_events(minor: int) -> None:
    async with running() as h:
        client = await RfbClient.connect(HOST, h.listener.port)
        assert await client.read_version() == b"RFB 003.008\n"
        await client.send_version(minor)
        await client.security(None)
        assert client.security_types == [1]
        # SecurityResult for None only exists in 3.8.
        assert client.security_result == (0 if minor == 8 else None)
        init = await client.client_init()
        assert (init.width, init.height, init.name) == (640, 480, "qmpevents")
        assert init.pixel_format == PixelFormat()  # 32 bpp little-endian 0x00RRGGBB
        await h.events.until(INITIALIZED, client.local_port)
        await client.close()
        _, server, peer = await h.events.until(DISCONNECTED, client.local_port)
        assert h.events.names(client.local_port) == [CONNECTED, INITIALIZED, DISCONNECTED]
        assert server == VncEndpoint(HOST, str(h.listener.port), "ipv4", "none")
        assert peer == VncEndpoint(HOST, client.local_port, "ipv4", None)


@pytest.mark.parametrize("minor", [3, 7, 8])
async def test_vnc_auth_good_password(minor: int) -> None:
    async with running(password="s3cret") as h:
        client = await handshake(HOST, h.listener.port, minor, password="s3cret")
        assert client.security_types == [2]
        assert client.security_result == 0
        frame = await client.full_frame()
        assert frame.width == 640
        _, server, _ = await h.events.until(INITIALIZED, client.local_port)
        assert server.auth == "vnc"
        await client.close()
        await h.events.until(DISCONNECTED, client.local_port)
        assert h.events.names(client.local_port) == [CONNECTED, INITIALIZED, DISCONNECTED]


@pytest.mark.parametrize("minor", [3, 7, 8])
async def test_vnc_auth_bad_password(minor: int) -> None:
    async with running(password="s3cret") as h:
        client = await RfbClient.connect(HOST, h.listener.port)
        await client.read_version()
        await client.send_version(minor)
        with pytest.raises(AuthFailed) as failure:
            await client.security("wrong")
        assert failure.value.result == 1
        # QEMU's reason keeps the C string's NUL, and exists only in 3.8.
        assert failure.value.reason == (b"Authentication failed\x00" if minor == 8 else None)
        assert await client.closed_by_server()
        await h.events.until(DISCONNECTED, client.local_port)
        assert h.events.names(client.local_port) == [CONNECTED, DISCONNECTED]


async def test_password_only_first_eight_bytes_count() -> None:
    async with running(password="12345678-ignored") as h:
        client = await handshake(HOST, h.listener.port, password="12345678")
        assert client.security_result == 0
        await client.close()


async def test_empty_password_always_fails() -> None:
    async with running(password="") as h:
        client = await RfbClient.connect(HOST, h.listener.port)
        await client.read_version()
        await client.send_version(8)
        with pytest.raises(AuthFailed):
            await client.security("")
        assert await client.closed_by_server()
        await h.events.until(DISCONNECTED, client.local_port)


@pytest.mark.parametrize("password", [None, "pw"])
async def test_choosing_a_type_not_offered_fails(password: str | None) -> None:
    async with running(password=password) as h:
        client = await RfbClient.connect(HOST, h.listener.port)
        await client.read_version()
        await client.send_version(8)
        with pytest.raises(AuthFailed) as failure:
            await client.security(password, choose=16)
        assert failure.value.reason == b"Authentication failed\x00"
        assert await client.closed_by_server()
        await h.events.until(DISCONNECTED, client.local_port)
        assert h.events.names(client.local_port) == [CONNECTED, DISCONNECTED]


@pytest.mark.parametrize("reply", [b"RFB 003.005\n", b"RFB 003.889\n"])
async def test_other_3x_versions_are_treated_as_3_3(reply: bytes) -> None:
    async with running() as h:
        client = await RfbClient.connect(HOST, h.listener.port)
        await client.read_version()
        await client.send_version(reply)
        assert await client.reader.readexactly(4) == struct.pack(">I", 1)  # 3.3: server picks
        await client.client_init()
        await h.events.until(INITIALIZED, client.local_port)
        await client.close()


@pytest.mark.parametrize("reply", [b"RFB 004.000\n", b"GET / HTTP/1.\n", b"\xff" * 12])
async def test_bad_version_gets_failure_and_close(reply: bytes) -> None:
    async with running() as h:
        client = await RfbClient.connect(HOST, h.listener.port)
        await client.read_version()
        await client.send_version(reply)
        assert await client.reader.read(100) == struct.pack(">I", 0)
        assert await client.closed_by_server()
        await h.events.until(DISCONNECTED, client.local_port)
        assert h.events.names(client.local_port) == [CONNECTED, DISCONNECTED]


@pytest.mark.parametrize("stop_after", ["connect", "server_version", "version", "security"])
async def test_early_close_gives_connected_then_disconnected(stop_after: str) -> None:
    async with running(password="pw") as h:
        client = await RfbClient.connect(HOST, h.listener.port)
        await h.events.until(CONNECTED, client.local_port)
        if stop_after != "connect":
            await client.read_version()
        if stop_after in ("version", "security"):
            await client.send_version(8)
        if stop_after == "security":
            await client.security("pw")
        await client.close()
        await h.events.until(DISCONNECTED, client.local_port)
        assert h.events.names(client.local_port) == [CONNECTED, DISCONNECTED]
        assert h.listener.query()["clients"] == []


async def test_handshake_timeout_and_slow_client_does_not_block_others() -> None:
    async with running(handshake_timeout=1.0) as h:
        slow = await RfbClient.connect(HOST, h.listener.port)
        await slow.read_version()
        await slow.send_raw(b"RFB 003")  # ...and never the rest
        fast = await handshake(HOST, h.listener.port)
        frame = await fast.full_frame()
        assert frame.height == 480
        assert slow.local_port not in {e[2].service for e in h.events.events if e[0] != CONNECTED}
        await h.events.until(DISCONNECTED, slow.local_port)
        assert await slow.closed_by_server()
        assert h.events.names(slow.local_port) == [CONNECTED, DISCONNECTED]
        assert h.events.names(fast.local_port) == [CONNECTED, INITIALIZED]
        await fast.close()


# ---------------------------------------------------------------- framebuffer


async def test_frame_shows_text_on_dark_background() -> None:
    async with running() as h:
        client = await handshake(HOST, h.listener.port)
        frame = await client.full_frame()
        bg = frame.rgb(0, 0)
        assert max(bg) < 64, "background should be dark"
        ink = {
            frame.rgb(x, y)
            for y in range(frame.height)
            for x in range(frame.width)
            if frame.rgb(x, y) != bg
        }
        assert ink and all(max(c) > 150 for c in ink), "text should be bright"
        lit = [y for y in range(frame.height) if any(frame.rgb(x, y) != bg for x in range(640))]
        assert lit and max(lit) < 60, "two lines of text near the top"
        assert all(frame.rgb(x, y) == bg for y in range(100, 480) for x in range(0, 640, 7))
        await client.close()


async def test_empty_screen_is_all_background() -> None:
    async with running() as h:
        h.lines.clear()
        client = await handshake(HOST, h.listener.port)
        frame = await client.full_frame()
        assert len(set(frame.pixels)) == 1
        await client.close()


async def test_custom_size_and_name_and_partial_rect() -> None:
    async with running(width=320, height=200, name="guest-1") as h:
        client = await handshake(HOST, h.listener.port)
        assert client.server_init is not None
        assert (client.server_init.width, client.server_init.height) == (320, 200)
        assert client.server_init.name == "guest-1"
        full = list((await client.full_frame()).pixels)
        await client.request(False, Rect(10, 5, 50, 30))
        assert await client.read_update() == [Rect(10, 5, 50, 30)]
        # A request reaching past the edge is clipped to the framebuffer.
        await client.request(False, Rect(300, 190, 100, 100))
        assert await client.read_update() == [Rect(300, 190, 20, 10)]
        assert client.frame is not None and list(client.frame.pixels) == full
        await client.close()


@pytest.mark.parametrize("fmt", [RGB565, RGB565_BE, BGR233, BGRX_BE], ids=str)
async def test_set_pixel_format(fmt: PixelFormat) -> None:
    async with running() as h:
        client = await handshake(HOST, h.listener.port)
        reference = await client.full_frame()
        ref_rgb = [reference.rgb(x, y) for y in range(60) for x in range(640)]
        await client.set_pixel_format(fmt)
        frame = await client.full_frame()
        tolerance = 255 // min(fmt.red_max, fmt.green_max, fmt.blue_max) + 1
        got = [frame.rgb(x, y) for y in range(60) for x in range(640)]
        for a, b in zip(ref_rgb, got, strict=True):
            assert all(abs(p - q) <= tolerance for p, q in zip(a, b, strict=True)), (a, b)
        assert len(set(frame.pixels)) >= 2
        await client.close()


async def test_colour_map_pixel_format_is_rejected() -> None:
    async with running() as h:
        client = await handshake(HOST, h.listener.port)
        await client.send_raw(b"\x00\x00\x00\x00" + PixelFormat(8, 8, False, False).pack())
        assert await client.closed_by_server()
        await h.events.until(DISCONNECTED, client.local_port)


async def test_incremental_request_waits_for_redraw() -> None:
    async with running() as h:
        client = await handshake(HOST, h.listener.port)
        await client.full_frame()
        before = list(client.frame.pixels) if client.frame else []
        await client.request(True)
        # Messages are handled in order: had the incremental request been answered,
        # its update would arrive before the reply to this small non-incremental one.
        await client.request(False, Rect(0, 0, 4, 4))
        assert await client.read_update() == [Rect(0, 0, 4, 4)]
        h.lines[:] = ["vm: demo", "status: paused"]
        h.listener.redraw()
        assert await client.read_update() == [Rect(0, 0, 640, 480)]
        assert client.frame is not None and list(client.frame.pixels) != before
        await client.close()


async def test_incremental_request_answered_when_screen_changed_meanwhile() -> None:
    async with running() as h:
        client = await handshake(HOST, h.listener.port)
        # Nothing sent yet: the first incremental request is answered at once.
        await client.request(True)
        await client.read_update()
        h.listener.redraw()
        await client.request(True)
        assert await client.read_update() == [Rect(0, 0, 640, 480)]
        await client.close()


async def test_input_messages_are_accepted_and_ignored() -> None:
    async with running() as h:
        client = await handshake(HOST, h.listener.port)
        await client.set_encodings([5, 16, 0, -223, -239])
        await client.key_event(0x61)
        await client.key_event(0x61, down=False)
        await client.pointer_event(10, 20, 1)
        await client.cut_text(b"hello from the clipboard")
        await client.cut_text(b"")
        frame = await client.full_frame()
        assert frame.width == 640
        assert h.events.names(client.local_port) == [CONNECTED, INITIALIZED]
        await client.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x07",  # unknown message type
        b"\xff\x00\x00\x00",  # QEMU extension we do not announce
        struct.pack(">B3xI", 6, (1 << 20) + 1),  # ClientCutText over the cap
        struct.pack(">B3xI", 6, 0xFFFFFFF0),  # extended clipboard (negative length)
    ],
)
async def test_protocol_violation_closes_connection(garbage: bytes) -> None:
    async with running() as h:
        client = await handshake(HOST, h.listener.port)
        await client.send_raw(garbage)
        assert await client.closed_by_server()
        await h.events.until(DISCONNECTED, client.local_port)
        assert h.events.names(client.local_port) == [CONNECTED, INITIALIZED, DISCONNECTED]


async def test_client_that_does_not_read_only_stalls_itself() -> None:
    async with running() as h:
        hog = await handshake(HOST, h.listener.port)
        # 40 full frames (~48 MiB) requested and never read.
        await hog.send_raw(struct.pack(">BBHHHH", 3, 0, 0, 0, 640, 480) * 40)
        other = await handshake(HOST, h.listener.port)
        assert (await other.full_frame()).width == 640
        await other.close()
        await hog.close()
        await h.events.until(DISCONNECTED, hog.local_port)


# ---------------------------------------------------------------- management


async def test_set_password_at_run_time() -> None:
    async with running() as h:
        before = await handshake(HOST, h.listener.port)
        assert h.listener.query()["auth"] == "none"
        h.listener.set_password("later")
        assert h.listener.query()["auth"] == "vnc"
        after = await handshake(HOST, h.listener.port, password="later")
        assert after.security_types == [2]
        # The session established without a password is unaffected.
        assert (await before.full_frame()).width == 640
        refused = await RfbClient.connect(HOST, h.listener.port)
        await refused.read_version()
        await refused.send_version(8)
        with pytest.raises(AuthFailed):
            await refused.security(None, choose=1)
        assert await refused.closed_by_server()
        h.listener.set_password(None)
        again = await handshake(HOST, h.listener.port)
        assert again.security_types == [1]
        _, server, _ = await h.events.until(INITIALIZED, again.local_port)
        assert server.auth == "none"
        for c in (before, after, again):
            await c.close()


async def test_query() -> None:
    listener = VncListener(HOST, 0, port=0, on_event=Recorder(), screen=list)
    assert listener.query() == {"enabled": False}
    async with running() as h:
        port = str(h.listener.port)
        assert h.listener.query() == {
            "enabled": True,
            "host": HOST,
            "service": port,
            "family": "ipv4",
            "auth": "none",
            "clients": [],
        }
        a = await handshake(HOST, h.listener.port)
        b = await RfbClient.connect(HOST, h.listener.port)  # still in its handshake
        await h.events.until(CONNECTED, b.local_port)
        clients: list[dict[str, Any]] = h.listener.query()["clients"]
        expected = [
            {"host": HOST, "service": c.local_port, "family": "ipv4", "websocket": False}
            for c in (a, b)
        ]
        assert sorted(clients, key=str) == sorted(expected, key=str)
        await a.close()
        await h.events.until(DISCONNECTED, a.local_port)
        assert [c["service"] for c in h.listener.query()["clients"]] == [b.local_port]
        await b.close()
    assert h.listener.query() == {"enabled": False}


async def test_close_disconnects_every_client() -> None:
    async with running() as h:
        ready = await handshake(HOST, h.listener.port)
        await ready.request(True)
        await ready.read_update()
        await ready.request(True)  # held, waiting for a redraw that never comes
        midway = await RfbClient.connect(HOST, h.listener.port)
        await midway.read_version()
        fresh = await RfbClient.connect(HOST, h.listener.port)
        await h.events.until(CONNECTED, fresh.local_port)
        await h.listener.close()
        for c in (ready, midway, fresh):
            assert h.events.names(c.local_port)[-1] == DISCONNECTED
            assert h.events.names(c.local_port).count(DISCONNECTED) == 1
            assert await c.closed_by_server()
            await c.close()
        assert h.listener.query() == {"enabled": False}
        with pytest.raises(OSError):
            await asyncio.open_connection(HOST, h.listener.port)
        await h.listener.close()  # idempotent
        assert len(h.events.events) == 3 + 2 + 2


async def test_event_callback_errors_do_not_break_the_server() -> None:
    seen: list[str] = []

    def explode(name: str, server: VncEndpoint, client: VncEndpoint) -> None:
        seen.append(name)
        raise RuntimeError("callback bug")

    listener = VncListener(HOST, 0, port=0, on_event=explode, screen=lambda: ["x"])
    await listener.start()
    try:
        client = await handshake(HOST, listener.port)
        assert (await client.full_frame()).width == 640
        await client.close()
    finally:
        await listener.close()
    assert seen == [CONNECTED, INITIALIZED, DISCONNECTED]


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_many_dropped_connections_leak_nothing() -> None:
    async with running() as h:
        baseline = fd_count()

        async def drop(i: int) -> None:
            _, writer = await asyncio.open_connection(HOST, h.listener.port)
            if i % 3 == 1:
                writer.write(b"garbage\r\n" * 10)
            elif i % 3 == 2:
                writer.write(b"RFB 003.008\n\x01")
            writer.close()
            await writer.wait_closed()

        # Bursts within the listen backlog (32): a larger one waits for SYN retries.
        for start in range(0, 500, 25):
            await asyncio.gather(*(drop(i) for i in range(start, start + 25)))
        await h.events.count(DISCONNECTED, 500)
        assert sum(1 for e in h.events.events if e[0] == CONNECTED) == 500
        assert fd_count() == baseline
        assert h.listener.query()["clients"] == []
        client = await handshake(HOST, h.listener.port)
        assert (await client.full_frame()).width == 640
        await client.close()


# ---------------------------------------------------------------- addresses


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback here")
async def test_ipv6_listener() -> None:
    async with running("::1") as h:
        query = h.listener.query()
        assert (query["host"], query["family"]) == ("::1", "ipv6")
        client = await handshake("::1", h.listener.port, password=None)
        assert (await client.full_frame()).width == 640
        _, server, peer = await h.events.until(INITIALIZED, client.local_port)
        assert server == VncEndpoint("::1", str(h.listener.port), "ipv6", "none")
        assert (peer.host, peer.family) == ("::1", "ipv6")
        await client.close()


async def test_display_number_selects_port_5900_plus_display() -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        free = probe.getsockname()[1]
    assert free >= 5900
    listener = VncListener(HOST, free - 5900, on_event=Recorder(), screen=list)
    assert listener.port == free
    await listener.start()
    try:
        assert listener.port == free
        assert listener.query()["service"] == str(free)
    finally:
        await listener.close()


async def test_any_address() -> None:
    async with running("") as h:
        assert h.listener.query()["host"] == "0.0.0.0"
        client = await handshake(HOST, h.listener.port)
        await client.close()


async def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        VncListener("localhost", 1, on_event=Recorder(), screen=list)
    with pytest.raises(ValueError):
        VncListener(HOST, 60000, on_event=Recorder(), screen=list)
    with pytest.raises(ValueError):
        VncListener(HOST, 1, on_event=Recorder(), screen=list, width=0)
