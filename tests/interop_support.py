"""The two servers every interop test runs its client against, side by side.

* ``qemu`` -- real ``qemu-system-x86_64`` 7.2 (``-S``, paused, no devices);
* ``sim`` -- ``qmpevents serve --profile qemu-7.2 -S``, as a separate process,
  exactly as a user would start it.

Both get the same name and are left in the same state, so a client that does
the same thing against each must see the same thing (once :func:`mask` has
hidden what varies run to run: timestamps, thread ids).
:func:`serve` yields the QMP socket path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import Any, Literal

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
    drain: asyncio.Task[None] | None = None
    try:
        drain = await _listening(proc, path)
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
        if drain is not None:
            await drain  # ends at the stderr EOF of the exited server
        shutil.rmtree(tmp, ignore_errors=True)


async def _listening(proc: asyncio.subprocess.Process, path: str) -> asyncio.Task[None]:
    """Until ``serve`` says it listens (its stderr line), or fail with what it said.

    Returns the task that keeps draining its stderr (so it never blocks on a pipe).
    """
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
    return asyncio.get_running_loop().create_task(_drain(proc.stderr))


async def _drain(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        while await stream.read(65536):
            pass


_MASKS: list[tuple[re.Pattern[str], str]] = [
    # timestamps, as JSON ("seconds": 1) or as a Python repr ('seconds': 1)
    (re.compile(r"""(["'])(seconds|microseconds)\1: ?\d+"""), r"\1\2\1: T"),
    # a vCPU's host thread id (query-cpus-fast)
    (re.compile(r'"thread-id": ?\d{2,}'), '"thread-id": TID'),
]


def mask(text: str) -> str:
    """What a client saw, with timestamps and host thread ids hidden.

    Versions are not masked: the simulator reports the QEMU it reproduces.
    """
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text


def without_sim_controls(line: str) -> str:
    """*line* (if JSON) without the simulator's own ``x-sim-*`` commands.

    They are the simulator's fault-injection controls, listed by its
    ``query-commands`` as QEMU lists its own ``x-`` commands: the one
    deliberate difference a client may see (README, "The simulated VM").
    """
    try:
        value = json.loads(line)
    except ValueError:
        return line
    return json.dumps(_drop_sim(value), sort_keys=True)


def _drop_sim(value: Any) -> Any:
    if isinstance(value, list):
        return [_drop_sim(v) for v in value if not _is_sim(v)]
    if isinstance(value, dict):
        return {k: _drop_sim(v) for k, v in value.items()}
    return value


def _is_sim(value: Any) -> bool:
    if isinstance(value, str):
        return value.startswith("x-sim-")
    return isinstance(value, dict) and str(value.get("name", "")).startswith("x-sim-")


def raw_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(DEADLINE)
    sock.connect(path)
    return sock
