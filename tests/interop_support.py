"""The two servers every interop test runs its client against, side by side.

* ``qemu`` -- real ``qemu-system-x86_64`` 7.2 (``-S``, paused, no devices);
* ``sim`` -- ``qmpevents serve --profile qemu-7.2 -S``, as a separate process,
  exactly as a user would start it.

Both get the same name and are left in the same state, so a client that does
the same thing against each must see the same thing (once :func:`mask` has
hidden what varies run to run: timestamps, the build's version and package).
:func:`serve` yields the QMP socket path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import Literal

import pytest
from qemu_support import QemuProcess, qemu_binary

Target = Literal["qemu", "sim"]
NAME = "interop-vm"
DEADLINE = 15.0

#: Parametrize a test over both servers; the QEMU one is marked ``qemu``.
TARGETS = [
    pytest.param("qemu", marks=[pytest.mark.qemu, pytest.mark.skipif(
        qemu_binary() is None, reason="qemu-system-x86_64 not installed")], id="qemu"),
    pytest.param("sim", id="sim"),
]

QMPEVENTS = (sys.executable, "-c", "import sys; from qmpevents.cli import main; sys.exit(main())")


@contextlib.asynccontextmanager
async def serve(target: Target, *, pretty: bool = False) -> AsyncIterator[str]:
    """A paused VM named :data:`NAME` on a fresh unix socket; yields its path."""
    if target == "qemu":
        async with QemuProcess("-name", NAME, pretty=pretty, startup_deadline=30.0) as qemu:
            yield qemu.socket_path
        return
    tmp = tempfile.mkdtemp(prefix="qmpev-io-")
    path = os.path.join(tmp, "qmp.sock")
    proc = await asyncio.create_subprocess_exec(
        *QMPEVENTS, "serve", "--profile", "qemu-7.2", "-S", "--name", NAME,
        "--ignore-acpi", "--qmp", f"unix:{path}" + (",pretty=on" if pretty else ""),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        await _listening(proc, path)
        yield path
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


async def _listening(proc: asyncio.subprocess.Process, path: str) -> None:
    """Until ``serve`` says it listens (its stderr line), or fail with what it said."""
    assert proc.stderr is not None
    said: list[bytes] = []
    async with asyncio.timeout(DEADLINE):
        while True:
            line = await proc.stderr.readline()
            if not line:
                await proc.wait()
                raise RuntimeError(f"serve exited {proc.returncode}: {b''.join(said)!r}")
            said.append(line)
            if b"QMP listening on" in line and os.path.exists(path):
                break
    # keep draining stderr so the server never blocks on a full pipe
    asyncio.get_running_loop().create_task(_drain(proc.stderr))


async def _drain(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        while await stream.read(65536):
            pass


_MASKS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r'"seconds": ?\d+'), '"seconds": S'),
    (re.compile(r'"microseconds": ?\d+'), '"microseconds": U'),
    (re.compile(r'"package": ?"[^"]*"'), '"package": "P"'),
    (re.compile(r'"(micro|minor|major)": ?\d+'), r'"\1": N'),
    (re.compile(r"/tmp/qmpev-[\w./-]+"), "SOCKET"),
]


def mask(text: str) -> str:
    """What a client saw, with timestamps, version numbers and socket paths hidden."""
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text


def raw_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(DEADLINE)
    sock.connect(path)
    return sock
