"""A minimal asyncio RFB (RFC 6143) client: a VNC session from Python.

The demo uses it for its VNC session, the tests to drive every handshake path,
and users to exercise a VM's VNC events from their own tests.  Every handshake
step is its own method so a caller can stop after any of them, and each step
records what the server sent so tests can assert on the exact bytes.
The wire structures and the VNC Authentication response come from
:mod:`qmpevents.rfb`, shared with the simulator's server; a misreading there would
be mirrored on both ends, so the tests check this client against real QEMU and
the server against a real viewer.  Importing it needs no pycryptodome: only
VNC Authentication does (the ``vnc`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
from array import array
from dataclasses import dataclass, field

from qmpevents.rfb import SEC_NONE, SEC_VNC, PixelFormat, Rect, vnc_auth_response

__all__ = [
    "BGR233", "BGRX_BE", "RGB565", "RGB565_BE", "AuthFailed", "Frame", "PixelFormat", "Rect",
    "RfbClient", "ServerInit", "handshake", "vnc_auth_response",
]


class AuthFailed(Exception):
    """The server refused the security handshake; ``reason`` as sent, if any."""

    def __init__(self, result: int, reason: bytes | None) -> None:
        super().__init__(f"security result {result}, reason {reason!r}")
        self.result = result
        self.reason = reason


RGB565 = PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0)
RGB565_BE = PixelFormat(16, 16, True, True, 31, 63, 31, 11, 5, 0)
BGR233 = PixelFormat(8, 8, False, True, 7, 7, 3, 0, 3, 6)
BGRX_BE = PixelFormat(32, 24, True, True, 255, 255, 255, 8, 16, 24)


@dataclass
class ServerInit:
    width: int
    height: int
    pixel_format: PixelFormat
    name: str


@dataclass
class Frame:
    """The client's copy of the framebuffer, as pixel values in ``pixel_format``."""

    width: int
    height: int
    pixel_format: PixelFormat
    pixels: array[int]

    def value(self, x: int, y: int) -> int:
        return self.pixels[y * self.width + x]

    def rgb(self, x: int, y: int) -> tuple[int, int, int]:
        return self.pixel_format.rgb(self.value(x, y))


_TYPECODES = {1: "B", 2: "H", 4: "I"}


def _blank(width: int, height: int, pf: PixelFormat) -> Frame:
    pixels = array(_TYPECODES[pf.bytes_per_pixel])
    pixels.frombytes(bytes(width * height * pf.bytes_per_pixel))
    return Frame(width, height, pf, pixels)


@dataclass
class RfbClient:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server_version: bytes = b""
    minor: int = 8
    security_types: list[int] = field(default_factory=list)
    security_result: int | None = None
    server_init: ServerInit | None = None
    frame: Frame | None = None

    @classmethod
    async def connect(cls, host: str, port: int) -> RfbClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    @property
    def local_port(self) -> str:
        """Our port as text: how the server's events name this client."""
        return str(self.writer.get_extra_info("sockname")[1])

    async def read_version(self) -> bytes:
        self.server_version = await self.reader.readexactly(12)
        return self.server_version

    async def send_version(self, minor: int | bytes) -> None:
        """Reply with 3.``minor``, or with raw bytes to test the server's parsing."""
        if isinstance(minor, bytes):
            self.writer.write(minor)
        else:
            self.minor = minor
            self.writer.write(b"RFB 003.%03d\n" % minor)
        await self.writer.drain()

    async def _reason(self) -> bytes:
        (length,) = struct.unpack(">I", await self.reader.readexactly(4))
        return await self.reader.readexactly(length)

    async def security(self, password: str | None = None, choose: int | None = None) -> None:
        """Do the security phase; raise AuthFailed if the server refuses."""
        r = self.reader
        if self.minor == 3:
            (chosen,) = struct.unpack(">I", await r.readexactly(4))
            if chosen == 0:
                raise AuthFailed(0, None)
            self.security_types = [chosen]
        else:
            count = (await r.readexactly(1))[0]
            if count == 0:
                raise AuthFailed(0, await self._reason())
            self.security_types = list(await r.readexactly(count))
            if choose is None:
                choose = SEC_NONE if password is None else SEC_VNC
            chosen = choose
            self.writer.write(bytes([chosen]))
        if chosen == SEC_VNC:
            challenge = await r.readexactly(16)
            self.writer.write(vnc_auth_response(password or "", challenge))
        await self.writer.drain()
        if self.minor == 8 or chosen != SEC_NONE:
            (self.security_result,) = struct.unpack(">I", await r.readexactly(4))
            if self.security_result != 0:
                reason = await self._reason() if self.minor == 8 else None
                raise AuthFailed(self.security_result, reason)

    async def client_init(self, shared: bool = True) -> ServerInit:
        self.writer.write(bytes([shared]))
        await self.writer.drain()
        head = await self.reader.readexactly(24)
        width, height = struct.unpack(">HH", head[:4])
        pf = PixelFormat.unpack(head[4:20])
        (name_length,) = struct.unpack(">I", head[20:])
        name = (await self.reader.readexactly(name_length)).decode()
        self.server_init = ServerInit(width, height, pf, name)
        self.frame = _blank(width, height, pf)
        return self.server_init

    async def set_pixel_format(self, pf: PixelFormat) -> None:
        assert self.frame is not None
        self.writer.write(b"\x00\x00\x00\x00" + pf.pack())
        await self.writer.drain()
        self.frame = _blank(self.frame.width, self.frame.height, pf)

    async def set_encodings(self, encodings: list[int]) -> None:
        self.writer.write(struct.pack(f">BxH{len(encodings)}i", 2, len(encodings), *encodings))
        await self.writer.drain()

    async def request(self, incremental: bool, rect: Rect | None = None) -> None:
        assert self.frame is not None
        rect = rect or Rect(0, 0, self.frame.width, self.frame.height)
        self.writer.write(struct.pack(">BBHHHH", 3, incremental, rect.x, rect.y, rect.w, rect.h))
        await self.writer.drain()

    async def read_update(self) -> list[Rect]:
        """Read one FramebufferUpdate (skipping Bell/ServerCutText) into ``frame``."""
        assert self.frame is not None
        r, frame = self.reader, self.frame
        while True:
            kind = (await r.readexactly(1))[0]
            if kind == 0:
                break
            if kind == 2:  # Bell
                continue
            if kind == 3:  # ServerCutText
                (length,) = struct.unpack(">3xI", await r.readexactly(7))
                await r.readexactly(length)
                continue
            raise AssertionError(f"unexpected server message {kind}")
        (count,) = struct.unpack(">xH", await r.readexactly(3))
        size = frame.pixel_format.bytes_per_pixel
        rects = []
        for _ in range(count):
            x, y, w, h, encoding = struct.unpack(">HHHHi", await r.readexactly(12))
            assert encoding == 0, f"expected raw encoding, got {encoding}"
            data = array(_TYPECODES[size])
            data.frombytes(await r.readexactly(w * h * size))
            if size > 1 and frame.pixel_format.big_endian != (sys.byteorder == "big"):
                data.byteswap()
            for row in range(h):
                start = (y + row) * frame.width + x
                frame.pixels[start : start + w] = data[row * w : (row + 1) * w]
            rects.append(Rect(x, y, w, h))
        return rects

    async def full_frame(self) -> Frame:
        """Request the whole screen non-incrementally and read it."""
        await self.request(False)
        await self.read_update()
        assert self.frame is not None
        return self.frame

    async def key_event(self, key: int, down: bool = True) -> None:
        self.writer.write(struct.pack(">BBxxI", 4, down, key))
        await self.writer.drain()

    async def pointer_event(self, x: int, y: int, mask: int = 0) -> None:
        self.writer.write(struct.pack(">BBHH", 5, mask, x, y))
        await self.writer.drain()

    async def cut_text(self, text: bytes, length: int | None = None) -> None:
        length = len(text) if length is None else length
        self.writer.write(struct.pack(">B3xI", 6, length) + text)
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def closed_by_server(self) -> bool:
        """True once the server has closed (EOF or reset after any pending bytes).

        Closes our end too, as a viewer would.
        """
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        await self.close()
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def handshake(host: str, port: int, minor: int = 8, password: str | None = None) -> RfbClient:
    """Connect and run every step up to and including ServerInit."""
    client = await RfbClient.connect(host, port)
    await client.read_version()
    await client.send_version(minor)
    await client.security(password)
    await client.client_init()
    return client
