"""A small but real VNC (RFB, RFC 6143) server for the simulated virtual machine.

QEMU reports the life of each VNC client through three QMP events: VNC_CONNECTED when
the TCP connection is accepted, VNC_INITIALIZED once the client's ClientInit has been
processed, and VNC_DISCONNECTED when the connection goes away.  To emit those events
for the right reasons (a viewer that fails authentication is connected but never
initialised, for instance) the simulator runs an actual RFB server and calls
``on_event`` at exactly the points where QEMU's ``ui/vnc.c`` does.

What the server does, and why it does no more:

* Versions: it offers 3.8 and accepts client replies 3.3, 3.7 and 3.8.  Any other
  ``RFB 003.xxx`` reply is handled as 3.3, as RFC 6143 §7.1.1 asks ("other version
  numbers ... should be interpreted as 3.3").  A reply that is not ``RFB 003.xxx``
  gets a u32 0 (connection failed, without reason string) and the connection is
  closed, as QEMU does.
* Security: like QEMU it offers exactly one type, None (1) without a password and
  VNC Authentication (2) with one.  The type is chosen when a client's handshake
  reaches the security step; ``set_password`` never disturbs sessions already past
  it.  SecurityResult is sent for 3.8 always and for 3.3/3.7 only after VNC
  Authentication; a failure in 3.8 carries QEMU's reason "Authentication failed"
  including its trailing NUL.  An empty password makes every attempt fail, which is
  what QEMU does when VNC authentication is on but no password was set.
* Framebuffer: the text lines returned by ``screen()`` drawn with a built-in 5x7
  font (scaled 2x) on a dark background, sent as raw rectangles in the pixel format
  the client asked for (8, 16 or 32 bits per pixel true colour).  Colour-map
  formats are rejected by closing, because no viewer still needs them.  Other
  encodings a client announces are accepted and ignored: raw is always allowed.
* Robustness: each connection is served by its own task; the whole handshake has a
  deadline (``handshake_timeout``); ClientCutText is capped (``max_cut_text``);
  writes apply back-pressure so a client that stops reading only stalls itself.
  QEMU's ``connections`` bound holds (see :class:`VncListener`), password guesses
  are spaced out, and a reserve of file descriptors is never taken, so that a VNC
  flood leaves QMP reachable.
* Exposure: the listener binds what it is given; the loopback-only policy is
  :class:`~qmpevents.sim.vm.SimulatedVM`'s (``allow_remote``), as QMP's is the
  server's.  The password is never logged, nor is anything derived from it.

Everything runs on the event loop that called ``start()``; the methods are not
thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from qmpevents.rfb import (
    SEC_NONE,
    SEC_VNC,
    VERSION_3_8,
    PixelFormat,
    Rect,
    parse_version,
    vnc_auth_response,
)
from qmpevents.sim.vnc_guard import AuthBackoff, RateLimitedLog, fds_left

__all__ = ["VncEndpoint", "VncListener"]

_log = logging.getLogger(__name__)

_AUTH_FAILED = b"Authentication failed\x00"  # QEMU sends sizeof(), NUL included
_BASE_PORT = 5900
#: QEMU's default for ``-vnc ...,connections=N`` (ui/vnc.c), confirmed against QEMU 7.2.
DEFAULT_CONNECTIONS = 32
#: File descriptors left free for QMP: no VNC connection is accepted below this.
DEFAULT_FD_RESERVE = 32
# Connections the kernel queues for accept(): as many as the connection bound, so that
# a burst of viewers is not delayed by SYN retries, yet a flood queues no more (QEMU's
# is 1; asyncio's default 100, and a deep one was what let a flood exhaust the fds).
_BACKLOG = DEFAULT_CONNECTIONS
_ACCEPT_RETRY = 0.2  # seconds before accept() is retried when descriptors ran short
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# Palette of the rendered screen: background, text, first line (a header).
_PALETTE = ((0x18, 0x1C, 0x24), (0xE0, 0xE0, 0xE0), (0x7C, 0xC8, 0xFF))
_SCALE = 2  # font pixels are drawn as _SCALE x _SCALE squares
_CELL_W = 6 * _SCALE  # 5 columns of glyph + 1 of spacing
_CELL_H = 9 * _SCALE  # 7 rows of glyph + 2 of line spacing
_MARGIN = 8
_MAX_FORMATS = 4  # rendered frames cached per pixel format; bounded against format churn

# Classic 5x7 LCD font for ASCII 0x20..0x7E: five column bytes per glyph, bit 0 is
# the top row.  Kept as data in the module so the simulator needs no font files.
_FONT_5X7 = bytes.fromhex(
    # space ! " # $ % & '
    "0000000000 00005f0000 0007000700 147f147f14 242a7f2a12 2313086462 3649552250 0005030000"
    # ( ) * + , - . /
    "001c224100 0041221c00 082a1c2a08 08083e0808 0050300000 0808080808 0060600000 2010080402"
    # 0 1 2 3 4 5 6 7
    "3e5149453e 00427f4000 4261514946 2141454b31 1814127f10 2745454539 3c4a494930 0171090503"
    # 8 9 : ; < = > ?
    "3649494936 064949291e 0036360000 0056360000 0008142241 1414141414 4122140800 0201510906"
    # @ A B C D E F G
    "324979413e 7e1111117e 7f49494936 3e41414122 7f4141221c 7f49494941 7f09090101 3e41415132"
    # H I J K L M N O
    "7f0808087f 00417f4100 2040413f01 7f08142241 7f40404040 7f0204027f 7f0408107f 3e4141413e"
    # P Q R S T U V W
    "7f09090906 3e4151215e 7f09192946 4649494931 01017f0101 3f4040403f 1f2040201f 7f2018207f"
    # X Y Z [ \ ] ^ _
    "6314081463 0304780403 6151494543 007f414100 0204081020 0041417f00 0402010204 4040404040"
    # ` a b c d e f g
    "0001020400 2054545478 7f48444438 3844444420 384444487f 3854545418 087e090102 0c5252523e"
    # h i j k l m n o
    "7f08040478 00447d4000 2040443d00 007f102844 00417f4000 7c04180478 7c08040478 3844444438"
    # p q r s t u v w
    "7c14141408 081414187c 7c08040408 4854545420 043f444020 3c4040207c 1c2040201c 3c4030403c"
    # x y z { | } ~
    "4428102844 0c5050503c 4464544c44 0008364100 00007f0000 0041360800 0804081008"
)


def free_display(host: str = "127.0.0.1", first: int = 50, last: int = 400) -> int:
    """A display number N whose port 5900+N is free on *host* right now.

    For demos and tests that want QEMU's ``HOST:DISPLAY`` spelling without a
    fixed port; the port may still be taken before it is bound, as with any probe.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for display in range(first, last):
        with socket.socket(family) as probe:
            try:
                probe.bind((host, 5900 + display))
            except OSError:
                continue
            return display
    raise RuntimeError(f"no free VNC display between :{first} and :{last - 1} on {host}")


@dataclass(frozen=True)
class VncEndpoint:
    """One end of a VNC connection, shaped like QEMU's VncServerInfo/VncClientInfo."""

    host: str  # IP address as text, e.g. "127.0.0.1" or "::1"
    service: str  # port number as a string, as QMP reports it
    family: str  # "ipv4" or "ipv6"
    auth: str | None = None  # server side only: "none" or "vnc"


# QEMU's default: 32 bpp, depth 24, little-endian, 0x00RRGGBB.
_DEFAULT_FORMAT = PixelFormat()


class _ProtocolError(Exception):
    """The client broke the protocol or failed authentication: close the connection."""


class _Client:
    """Per-connection state; owned by the connection's task."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, endpoint: VncEndpoint
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.endpoint = endpoint
        self.task: asyncio.Task[None] | None = None
        self.connecting = True  # QEMU's share mode CONNECTING: no ClientInit yet
        self.initialized = False
        self.pixel_format = _DEFAULT_FORMAT
        self.pending: Rect | None = None  # held incremental request, waiting for redraw()
        self.dirty = True  # screen changed since the last full frame sent to this client
        self.finished = False


def _family(sock_family: int) -> str:
    return "ipv6" if sock_family == socket.AF_INET6 else "ipv4"


def _glyph_rows(char: str) -> list[bytes]:
    """The 7 rows of a character cell as palette-index-1 masks, scaled horizontally."""
    code = ord(char) if " " <= char <= "~" else ord("?")
    columns = _FONT_5X7[(code - 0x20) * 5 : (code - 0x20) * 5 + 5]
    rows = []
    for y in range(7):
        bits = [(col >> y) & 1 for col in columns] + [0]
        rows.append(bytes(bit for bit in bits for _ in range(_SCALE)))
    return rows


_GLYPHS = {chr(code): _glyph_rows(chr(code)) for code in range(0x20, 0x7F)}


def _render(lines: list[str], width: int, height: int) -> bytes:
    """Draw text lines into a width*height mask of palette indices (one byte a pixel).

    A mask rather than pixels, so each client's pixel format costs only a few
    ``bytes.translate`` calls instead of a Python loop over 300k pixels.
    """
    mask = bytearray(width * height)
    columns = max(0, (width - 2 * _MARGIN) // _CELL_W)
    for index, text in enumerate(lines[: max(0, (height - 2 * _MARGIN) // _CELL_H)]):
        ink = 2 if index == 0 else 1
        glyphs = [_GLYPHS.get(ch, _GLYPHS["?"]) for ch in text.expandtabs(4)[:columns]]
        if not glyphs:
            continue
        top = _MARGIN + index * _CELL_H
        for gy in range(7):
            row = b"".join(glyph[gy] for glyph in glyphs)
            if ink != 1:
                row = row.replace(b"\x01", bytes([ink]))
            for sy in range(_SCALE):
                start = (top + gy * _SCALE + sy) * width + _MARGIN
                mask[start : start + len(row)] = row
    return bytes(mask)


def _colourise(mask: bytes, fmt: PixelFormat) -> bytes:
    """Turn a palette-index mask into pixel bytes in ``fmt``, one byte plane at a time."""
    size = fmt.bytes_per_pixel
    colours = [fmt.encode(rgb) for rgb in _PALETTE]
    out = bytearray(len(mask) * size)
    for k in range(size):
        table = bytes(colour[k] for colour in colours).ljust(256, b"\x00")
        out[k::size] = mask.translate(table)
    return bytes(out)


class VncListener:
    """An RFB server on ``host:5900+display`` that reports clients like QEMU's VNC.

    ``port`` overrides ``5900 + display`` (0 picks a free ephemeral port, which is what
    tests use; the ``port`` property then tells the real one).  ``host`` must be an IP
    literal; ``""`` means ``"0.0.0.0"``.  ``on_event(name, server, client)`` receives
    "VNC_CONNECTED", "VNC_INITIALIZED" and "VNC_DISCONNECTED"; an exception it raises is
    logged and does not affect the connection.

    Bounds against hostile peers (SECURITY.md states them):

    * ``connections`` is QEMU's ``-vnc ...,connections=N`` (default 32), with QEMU
      7.2's behaviour, checked against it in the tests: when a new connection makes
      more than N clients that have not sent ClientInit yet, the oldest of those is
      dropped; a client whose ClientInit would make more than N initialised clients is
      dropped without ServerInit (VNC_CONNECTED then VNC_DISCONNECTED, no
      VNC_INITIALIZED).  So at most 2N+1 connections are open at once.
    * ``handshake_timeout``: a client that has not finished ClientInit by then is dropped.
    * ``backoff``: VNC Authentication checks are spaced globally and per peer address
      (:class:`~qmpevents.sim.vnc_guard.AuthBackoff`).
    * ``fd_reserve``: no connection is accepted while fewer file descriptors than this
      are free, so QMP can still accept; the listen backlog is small (``_BACKLOG``) and
      accept errors are logged once a second at most, with a count.
    """

    def __init__(
        self,
        host: str,
        display: int,
        *,
        on_event: Callable[[str, VncEndpoint, VncEndpoint], None],
        screen: Callable[[], list[str]],
        password: str | None = None,
        width: int = 640,
        height: int = 480,
        name: str = "qmpevents",
        port: int | None = None,
        handshake_timeout: float = 10.0,
        max_cut_text: int = 1 << 20,
        connections: int = DEFAULT_CONNECTIONS,
        fd_reserve: int = DEFAULT_FD_RESERVE,
        backoff: AuthBackoff | None = None,
    ) -> None:
        host = host or "0.0.0.0"
        ipaddress.ip_address(host)  # ValueError early rather than binding something odd
        if port is None:
            port = _BASE_PORT + display
        if not 0 <= port <= 65535:
            raise ValueError(f"VNC port {port} out of range")
        if not (0 < width <= 65535 and 0 < height <= 65535):
            raise ValueError("framebuffer size must fit in 16 bits")
        if connections < 1:
            raise ValueError(f"VNC connections must be at least 1, not {connections}")
        self._host = host
        self._port = port
        self._on_event = on_event
        self._screen = screen
        self._password = password
        self._width = width
        self._height = height
        self._name = name.encode("utf-8")
        self._handshake_timeout = handshake_timeout
        self._max_cut_text = max_cut_text
        self._connections = connections
        self._fd_reserve = fd_reserve
        self._backoff = backoff if backoff is not None else AuthBackoff()
        self._accept_errors = RateLimitedLog(_log)
        self._room = asyncio.Event()  # set when a client leaves: the accept loop may retry
        self._listening: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # clients' and reapers', while running
        self._sock_host = host
        self._family = "ipv6" if ":" in host else "ipv4"
        self._closing = False
        self._clients: dict[int, _Client] = {}
        self._mask: bytes | None = None
        self._pixels: dict[PixelFormat, bytes] = {}

    # ----------------------------------------------------------------- public API

    @property
    def port(self) -> int:
        """The bound port once started, else the port that will be bound."""
        return self._port

    async def start(self) -> None:
        """Bind and start accepting; raises OSError if the address is unavailable."""
        if self._listening is not None or self._closing:
            raise RuntimeError("VncListener can be started only once")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server((self._host, self._port), family=family,
                                    backlog=_BACKLOG)
        sock.setblocking(False)
        self._listening = sock
        self._sock_host, self._port = sock.getsockname()[:2]
        self._family = _family(sock.family)
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop(sock))

    async def close(self) -> None:
        """Stop listening and drop every client, each with its VNC_DISCONNECTED."""
        if self._closing:
            return
        self._closing = True
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
        if self._listening is not None:
            self._listening.close()
        for client in list(self._clients.values()):
            if client.task is not None and not client.finished:
                client.task.cancel()
        # Every task, including those already finishing: their DISCONNECTED comes first.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # A task cancelled before its first step never runs its finally: finish here.
        for client in list(self._clients.values()):
            await self._finish(client)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def set_password(self, password: str | None) -> None:
        """Change the password (QMP change-vnc-password); None turns authentication off.

        Applies to clients that reach the security step from now on.
        """
        self._password = password

    def redraw(self) -> None:
        """The screen text changed: re-render lazily and answer held incremental requests."""
        self._mask = None
        self._pixels.clear()
        for client in list(self._clients.values()):
            if not client.initialized:
                continue
            client.dirty = True
            if client.pending is not None and not client.writer.is_closing():
                rect, client.pending = client.pending, None
                self._send_update(client, rect)

    def framebuffer_rgb(self) -> tuple[int, int, bytes]:
        """(width, height, RGB888 pixels row by row): what QMP ``screendump`` saves."""
        mask = _render(self._screen(), self._width, self._height)
        out = bytearray(len(mask) * 3)
        for k in range(3):
            out[k::3] = mask.translate(bytes(rgb[k] for rgb in _PALETTE).ljust(256, b"\x00"))
        return self._width, self._height, bytes(out)

    def query(self) -> dict[str, Any]:
        """The listener in the shape of QEMU's query-vnc reply."""
        if self._listening is None or self._closing:
            return {"enabled": False}
        server = self._server_endpoint()
        return {
            "enabled": True,
            "host": server.host,
            "service": server.service,
            "family": server.family,
            "auth": server.auth,
            "clients": [
                {"host": c.endpoint.host, "service": c.endpoint.service,
                 "family": c.endpoint.family, "websocket": False}
                for c in self._clients.values()
            ],
        }  # fmt: skip

    # ------------------------------------------------------------- connections

    def _server_endpoint(self) -> VncEndpoint:
        auth = "none" if self._password is None else "vnc"
        return VncEndpoint(self._sock_host, str(self._port), self._family, auth)

    def _emit(self, name: str, client: _Client) -> None:
        try:
            self._on_event(name, self._server_endpoint(), client.endpoint)
        except Exception:
            _log.exception("VNC event callback failed for %s", name)

    async def _accept_loop(self, sock: socket.socket) -> None:
        """Accept connections within the descriptor reserve, all that wait at each wake-up.

        Draining the kernel's queue at once keeps it from overflowing under a burst
        (a full queue costs new peers a SYN retry, a second or more).  An accept()
        that fails for want of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) is logged
        at most once a second and retried when a client leaves or after
        ``_ACCEPT_RETRY``; while too few descriptors are free, nothing is accepted
        and peers wait in the backlog.
        """
        loop = asyncio.get_running_loop()
        while True:
            if not self._fds_to_spare():
                await self._wait_for_room()
                continue
            try:
                conn, _ = await loop.sock_accept(sock)
                while True:
                    self._spawn(self._admit(conn))
                    if not self._fds_to_spare():
                        break
                    conn, _ = sock.accept()
            except BlockingIOError:
                continue  # the queue is empty: wait for the next peer
            except OSError as exc:
                self._accept_errors.warning(f"VNC: accept() failed: {exc}")
                if exc.errno in _RESOURCE_ERRNOS:
                    await self._wait_for_room()

    def _fds_to_spare(self) -> bool:
        """Whether more than the reserve of descriptors is free (else say so, rate-limited)."""
        left = fds_left()
        if left is None or left > self._fd_reserve:
            return True
        self._accept_errors.warning(
            f"VNC: not accepting, {left} file descriptors left (reserve {self._fd_reserve})")
        return False

    async def _admit(self, conn: socket.socket) -> None:
        """Give an accepted socket its streams, then make it a client."""
        try:
            conn.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=conn)
        except OSError as exc:  # the peer is gone already
            _log.debug("VNC connection lost at accept: %r", exc)
            conn.close()
            return
        except BaseException:  # close() cancelled us: the socket is ours to close
            conn.close()
            raise
        if self._closing:
            writer.transport.abort()
            return
        self._accept(reader, writer)

    async def _wait_for_room(self) -> None:
        """Until a client leaves, or a short while (descriptors may be freed elsewhere)."""
        self._room.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_ACCEPT_RETRY):
                await self._room.wait()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Register a new client, so CONNECTED precedes any byte of handshake.

        Synchronous so that the client is registered before its task exists: close()
        then always finds it, even if its task never ran.  Then QEMU's bound on
        clients that have not sent ClientInit: the oldest of them goes.
        """
        sock = writer.get_extra_info("socket")
        peer = writer.get_extra_info("peername")
        family = _family(sock.family) if sock is not None else self._family
        if peer:
            endpoint = VncEndpoint(str(peer[0]), str(peer[1]), family)
        else:  # the peer vanished between accept() and getpeername()
            endpoint = VncEndpoint("", "", family)
        client = _Client(reader, writer, endpoint)
        self._clients[id(client)] = client
        self._emit("VNC_CONNECTED", client)
        client.task = self._spawn(self._run(client))
        client.task.add_done_callback(lambda _task: self._reap(client))
        connecting = [c for c in self._clients.values() if c.connecting and not c.finished]
        if len(connecting) > self._connections:
            _log.debug("VNC: more than %d connecting clients, dropping %s",
                       self._connections, connecting[0].endpoint)
            connecting[0].connecting = False  # counted once, even if its task is slow to end
            assert connecting[0].task is not None
            connecting[0].task.cancel()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _reap(self, client: _Client) -> None:
        """A task cancelled before its first step never runs its finally: finish it."""
        if not client.finished:
            self._spawn(self._finish(client))

    async def _run(self, client: _Client) -> None:
        try:
            async with asyncio.timeout(self._handshake_timeout):
                await self._handshake(client)
            await self._serve(client)
        except (_ProtocolError, asyncio.IncompleteReadError, TimeoutError, OSError) as exc:
            _log.debug("VNC client %s dropped: %r", client.endpoint, exc)
        except Exception:
            _log.exception("VNC client %s failed", client.endpoint)
        finally:
            await self._finish(client)

    async def _finish(self, client: _Client) -> None:
        """Close the socket, then report VNC_DISCONNECTED exactly once."""
        if client.finished:
            return
        client.finished = True
        self._clients.pop(id(client), None)
        self._room.set()
        transport = client.writer.transport
        if transport.get_write_buffer_size():
            transport.abort()  # never wait for a peer that does not read
        else:
            client.writer.close()
        with contextlib.suppress(Exception):
            await client.writer.wait_closed()
        self._emit("VNC_DISCONNECTED", client)

    async def _handshake(self, client: _Client) -> None:
        """Version, security and init phases (RFC 6143 §7.1 and §7.3)."""
        reader, writer = client.reader, client.writer
        writer.write(VERSION_3_8)
        minor = parse_version(await reader.readexactly(12))
        if minor is None:
            writer.write(struct.pack(">I", 0))
            await writer.drain()
            raise _ProtocolError("unsupported protocol version")

        password = self._password
        sec_type = SEC_NONE if password is None else SEC_VNC
        if minor == 3:
            writer.write(struct.pack(">I", sec_type))
        else:
            writer.write(bytes([1, sec_type]))
            await writer.drain()
            if (await reader.readexactly(1))[0] != sec_type:
                await self._reject(client, minor)

        if password is not None:
            challenge = os.urandom(16)
            writer.write(challenge)
            await writer.drain()
            response = await reader.readexactly(16)
            host = client.endpoint.host
            if not await self._backoff.admit(host, client.reader.at_eof):
                raise _ProtocolError("the client left while its guess waited")
            # Empty password: authentication always fails, as in QEMU.
            if not password or not hmac.compare_digest(
                response, vnc_auth_response(password, challenge)
            ):
                self._backoff.failed(host)
                await self._reject(client, minor)
            self._backoff.succeeded(host)
            writer.write(struct.pack(">I", 0))
        elif minor == 8:
            writer.write(struct.pack(">I", 0))
        await writer.drain()

        await reader.readexactly(1)  # ClientInit: shared flag, every client may share
        client.connecting = False
        if sum(c.initialized for c in self._clients.values()) >= self._connections:
            raise _ProtocolError(f"more than {self._connections} initialised clients")
        writer.write(
            struct.pack(">HH", self._width, self._height)
            + _DEFAULT_FORMAT.pack()
            + struct.pack(">I", len(self._name))
            + self._name
        )
        client.initialized = True
        self._emit("VNC_INITIALIZED", client)
        await writer.drain()

    async def _reject(self, client: _Client, minor: int) -> None:
        """Send a failed SecurityResult (with QEMU's reason in 3.8) and give up."""
        message = struct.pack(">I", 1)
        if minor >= 8:
            message += struct.pack(">I", len(_AUTH_FAILED)) + _AUTH_FAILED
        client.writer.write(message)
        await client.writer.drain()
        raise _ProtocolError("authentication failed")

    async def _serve(self, client: _Client) -> None:
        """Client-to-server messages (RFC 6143 §7.5) until EOF or a protocol error."""
        reader = client.reader
        while True:
            kind = (await reader.readexactly(1))[0]
            if kind == 0:  # SetPixelFormat
                client.pixel_format = self._pixel_format(await reader.readexactly(19))
            elif kind == 2:  # SetEncodings: raw is always allowed, so the list is ignored
                (count,) = struct.unpack(">xH", await reader.readexactly(3))
                await reader.readexactly(4 * count)
            elif kind == 3:  # FramebufferUpdateRequest
                incremental, x, y, w, h = struct.unpack(">BHHHH", await reader.readexactly(9))
                self._request(client, bool(incremental), Rect(x, y, w, h))
            elif kind == 4:  # KeyEvent
                await reader.readexactly(7)
            elif kind == 5:  # PointerEvent
                await reader.readexactly(5)
            elif kind == 6:  # ClientCutText
                (length,) = struct.unpack(">3xI", await reader.readexactly(7))
                if length > self._max_cut_text:
                    raise _ProtocolError(f"ClientCutText of {length} bytes")
                await reader.readexactly(length)
            else:
                raise _ProtocolError(f"unknown message type {kind}")
            # Back-pressure: a client that does not read its updates stops being read.
            await client.writer.drain()

    @staticmethod
    def _pixel_format(data: bytes) -> PixelFormat:
        """SetPixelFormat's body (3 bytes of padding, then PIXEL_FORMAT), true colour only."""
        fmt = PixelFormat.unpack(data[3:])
        if fmt.bits_per_pixel not in (8, 16, 32) or not fmt.true_colour:
            raise _ProtocolError(f"unsupported pixel format: {fmt.bits_per_pixel} bpp, "
                                 f"true colour {fmt.true_colour}")
        return fmt

    # ------------------------------------------------------------- framebuffer

    def _request(self, client: _Client, incremental: bool, rect: Rect) -> None:
        """Answer now, or hold an incremental request until the screen changes."""
        if incremental and not client.dirty:
            client.pending = rect if client.pending is None else client.pending.union(rect)
        else:
            self._send_update(client, rect)

    def _send_update(self, client: _Client, rect: Rect) -> None:
        """Write one FramebufferUpdate with the requested area as a raw rectangle."""
        x, y = min(rect.x, self._width), min(rect.y, self._height)
        w, h = min(rect.w, self._width - x), min(rect.h, self._height - y)
        if w == 0 or h == 0:
            client.writer.write(struct.pack(">BxH", 0, 0))
            return
        fmt = client.pixel_format
        pixels = self._pixels.get(fmt)
        if pixels is None:
            if self._mask is None:
                self._mask = _render(self._screen(), self._width, self._height)
            if len(self._pixels) >= _MAX_FORMATS:
                del self._pixels[next(iter(self._pixels))]
            pixels = self._pixels[fmt] = _colourise(self._mask, fmt)
        size = fmt.bytes_per_pixel
        stride = self._width * size
        if x == 0 and w == self._width:
            body = pixels[y * stride : (y + h) * stride]
        else:
            body = b"".join(
                pixels[row * stride + x * size : row * stride + (x + w) * size]
                for row in range(y, y + h)
            )
        client.writer.write(struct.pack(">BxHHHHHi", 0, 1, x, y, w, h, 0) + body)
        if w == self._width and h == self._height:
            client.dirty = False
