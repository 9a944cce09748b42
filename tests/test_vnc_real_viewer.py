"""The simulator's VNC server against a real viewer: Debian's ``vncsnapshot``.

``vncsnapshot`` (TightVNC 1.2.8 / RealVNC 3.3.7 code) connects, speaks RFB 3.3,
authenticates with the real d3des code, asks for its own pixel format, saves one
JPEG and leaves: a client written by other people, which our own test client is not.
Install it with ``apt-get install -y --no-install-recommends vncsnapshot``; without it
these tests skip.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
from pathlib import Path

import pytest
from Crypto.Cipher import DES

from qmpevents.sim.vnc import VncEndpoint, VncListener

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.subprocess,
    pytest.mark.skipif(
        shutil.which("vncsnapshot") is None,
        reason="vncsnapshot not installed: apt-get install -y --no-install-recommends vncsnapshot",
    ),
]

DEADLINE = 20.0
Event = tuple[str, VncEndpoint, VncEndpoint]

# The fixed key with which vncpasswd obfuscates password files (vncauth.c).
_VNCPASSWD_KEY = bytes([23, 82, 107, 6, 35, 78, 88, 7])


def write_vncpasswd(path: Path, password: str) -> None:
    """Write ``password`` in vncpasswd's file format, as ``vncsnapshot -passwd`` reads it."""
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in _VNCPASSWD_KEY)  # d3des bit order
    path.write_bytes(DES.new(key, DES.MODE_ECB).encrypt(password.encode()[:8].ljust(8, b"\0")))


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's start-of-frame segment."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    pos = 2
    while pos + 4 <= len(data):
        assert data[pos] == 0xFF, f"bad JPEG marker at {pos}"
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    raise AssertionError("no SOF segment in JPEG")


async def snapshot(port: int, out: Path, passwd_file: Path | None = None) -> tuple[int, str]:
    """Run vncsnapshot against 127.0.0.1:``port``; return (exit code, output)."""
    if port < 5900:
        pytest.skip(f"ephemeral port {port} is below 5900, vncsnapshot wants a display")
    args = ["vncsnapshot", "-allowblank"]
    if passwd_file is not None:
        args += ["-passwd", str(passwd_file)]
    args += [f"127.0.0.1:{port - 5900}", str(out)]
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), DEADLINE)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, output.decode(errors="replace")


async def run_viewer(
    tmp_path: Path, password: str | None, viewer_password: str | None
) -> tuple[int, str, list[str], Path]:
    """Snapshot a listener once; return exit code, output, event names and the image path."""
    events: asyncio.Queue[Event] = asyncio.Queue()
    listener = VncListener(
        "127.0.0.1",
        0,
        port=0,
        password=password,
        on_event=lambda *event: events.put_nowait(event),
        screen=lambda: ["vm: demo", "status: running"],
    )
    await listener.start()
    try:
        passwd_file = None
        if viewer_password is not None:
            passwd_file = tmp_path / "passwd"
            write_vncpasswd(passwd_file, viewer_password)
        out = tmp_path / "snap.jpg"
        code, output = await snapshot(listener.port, out, passwd_file)
        names: list[str] = []
        while not names or names[-1] != "VNC_DISCONNECTED":
            name, server, _client = await asyncio.wait_for(events.get(), DEADLINE)
            assert server.auth == ("none" if password is None else "vnc")
            names.append(name)
        return code, output, names, out
    finally:
        await listener.close()


async def test_vncsnapshot_without_password(tmp_path: Path) -> None:
    code, output, names, image = await run_viewer(tmp_path, None, None)
    assert code == 0, output
    assert jpeg_size(image.read_bytes()) == (640, 480)
    assert names == ["VNC_CONNECTED", "VNC_INITIALIZED", "VNC_DISCONNECTED"]


async def test_vncsnapshot_with_password(tmp_path: Path) -> None:
    code, output, names, image = await run_viewer(tmp_path, "hunter22", "hunter22")
    assert code == 0, output
    assert jpeg_size(image.read_bytes()) == (640, 480)
    assert names == ["VNC_CONNECTED", "VNC_INITIALIZED", "VNC_DISCONNECTED"]


async def test_vncsnapshot_with_wrong_password(tmp_path: Path) -> None:
    code, output, names, image = await run_viewer(tmp_path, "hunter22", "hunter2")
    assert code != 0, output
    assert not image.exists()
    assert names == ["VNC_CONNECTED", "VNC_DISCONNECTED"]


@pytest.mark.skipif(
    shutil.which("djpeg") is None,
    reason="djpeg not installed: apt-get install -y --no-install-recommends libjpeg-turbo-progs",
)
async def test_vncsnapshot_image_shows_the_text(tmp_path: Path) -> None:
    code, output, _names, image = await run_viewer(tmp_path, None, None)
    assert code == 0, output
    proc = await asyncio.create_subprocess_exec(
        "djpeg", "-pnm", str(image), stdout=asyncio.subprocess.PIPE
    )
    ppm, _ = await asyncio.wait_for(proc.communicate(), DEADLINE)
    magic, size, _maxval, pixels = ppm.split(b"\n", 3)
    assert magic == b"P6" and size == b"640 480"

    def rgb(x: int, y: int) -> tuple[int, int, int]:
        r, g, b = pixels[(y * 640 + x) * 3 : (y * 640 + x) * 3 + 3]
        return r, g, b

    assert max(rgb(600, 400)) < 64, "dark background"
    header = [rgb(x, y) for y in range(8, 22) for x in range(8, 110)]
    bright = [p for p in header if max(p) > 150]
    assert bright, "the first line of text is visible"
    # The header is drawn light blue: a viewer that swapped red and blue would not be.
    assert sum(b for _r, _g, b in bright) > sum(r for r, _g, _b in bright)
