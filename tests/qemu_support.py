"""Helpers for tests that talk to a real ``qemu-system-x86_64`` over QMP.

* :func:`qemu_binary` / :data:`requires_qemu` -- locate QEMU, skip when absent.
* :class:`QemuProcess` -- start a paused, device-less QEMU with a QMP unix socket
  (async context manager; kills and reaps QEMU and removes its temp dir on exit).

Talk to it with :class:`qmpevents.testing.RawQMP` (raw bytes, QEMU's exact reply
lines). QEMU serves one client at a time per QMP socket: a second connection is
accepted by the kernel but gets no greeting until the first one is gone. Close with
:meth:`RawQMP.aclose` (half-close, then wait for QEMU's EOF) before reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

__all__ = [
    "QemuProcess",
    "qemu_binary",
    "requires_qemu",
]

QEMU_NAME = "qemu-system-x86_64"

STARTUP_DEADLINE = 15.0
STOP_DEADLINE = 5.0
_POLL_INTERVAL = 0.02


def qemu_binary() -> str | None:
    """Path of ``qemu-system-x86_64`` on ``$PATH``, or ``None``."""
    return shutil.which(QEMU_NAME)


requires_qemu = pytest.mark.skipif(
    qemu_binary() is None, reason=f"{QEMU_NAME} not installed (apt-get install qemu-system-x86)"
)


class QemuProcess:
    """A paused, device-less QEMU with a QMP unix socket, as an async context manager.

    Runs ``qemu-system-x86_64 -S -nodefaults -display none -machine accel=tcg -m 64
    -qmp unix:PATH,server=on,wait=off`` plus *extra_args* (e.g. ``-vnc 127.0.0.1:N``,
    ``-no-shutdown``) in a fresh temp dir. *extra_qmp* adds that many further QMP
    monitors (``-qmp unix:DIR/qmpN.sock``), listed in :attr:`extra_socket_paths`.
    Entering waits (at most 15 s) until QEMU's socket accepts and greets; exiting
    sends SIGTERM, then SIGKILL after a deadline, reaps QEMU and removes the temp dir.
    """

    def __init__(
        self,
        *extra_args: str,
        extra_qmp: int = 0,
        binary: str | None = None,
        startup_deadline: float = STARTUP_DEADLINE,
        pretty: bool = False,
    ) -> None:
        self.extra_args: tuple[str, ...] = extra_args
        self.extra_qmp = extra_qmp
        self.pretty = pretty  # the primary monitor pretty-prints (-mon ...,pretty=on)
        self.binary = binary
        self.startup_deadline = startup_deadline
        self._proc: asyncio.subprocess.Process | None = None
        self._tmpdir: Path | None = None

    @property
    def tmpdir(self) -> Path:
        """The temp dir holding the sockets and ``qemu.log`` (QEMU's stdout+stderr)."""
        if self._tmpdir is None:
            raise RuntimeError("QemuProcess not started")
        return self._tmpdir

    @property
    def socket_path(self) -> str:
        """Path of the primary QMP unix socket."""
        return str(self.tmpdir / "qmp.sock")

    @property
    def extra_socket_paths(self) -> list[str]:
        """Paths of the additional QMP sockets requested with *extra_qmp*."""
        return [str(self.tmpdir / f"qmp{i}.sock") for i in range(1, self.extra_qmp + 1)]

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("QemuProcess not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """QEMU's exit status once it has exited (e.g. after ``quit``), else ``None``."""
        return None if self._proc is None else self._proc.returncode

    def command(self) -> list[str]:
        """The full argv used to start QEMU."""
        binary = self.binary or qemu_binary()
        if binary is None:
            raise RuntimeError(f"{QEMU_NAME} not found on PATH")
        argv = [
            binary,
            "-S",
            "-nodefaults",
            "-display",
            "none",
            "-machine",
            "accel=tcg",
            "-m",
            "64",
        ]
        if self.pretty:
            argv += ["-chardev", f"socket,id=qmp0,path={self.socket_path},server=on,wait=off",
                     "-mon", "chardev=qmp0,mode=control,pretty=on"]
        else:
            argv += ["-qmp", f"unix:{self.socket_path},server=on,wait=off"]
        for path in self.extra_socket_paths:
            argv += ["-qmp", f"unix:{path},server=on,wait=off"]
        argv += list(self.extra_args)
        return argv

    def log_text(self) -> str:
        """QEMU's stdout+stderr so far (while the temp dir still exists)."""
        try:
            return (self.tmpdir / "qemu.log").read_text(errors="replace")
        except OSError:
            return ""

    async def start(self) -> None:
        self._tmpdir = Path(tempfile.mkdtemp(prefix="qmpev-"))
        argv = self.command()
        with open(self.tmpdir / "qemu.log", "wb") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self) -> None:
        # Startup polling of an external process, bounded by a deadline.
        assert self._proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_deadline
        pending = [self.socket_path, *self.extra_socket_paths]
        while pending:
            if self._proc.returncode is not None:
                raise RuntimeError(
                    f"QEMU exited with {self._proc.returncode} during startup:\n{self.log_text()}"
                )
            if loop.time() >= deadline:
                raise TimeoutError(
                    f"QEMU QMP socket not ready after {self.startup_deadline} s:\n{self.log_text()}"
                )
            path = pending[0]
            if os.path.exists(path) and await self._accepts(path):
                pending.pop(0)
                continue
            await asyncio.sleep(_POLL_INTERVAL)

    @staticmethod
    async def _accepts(path: str) -> bool:
        """Whether *path* accepts a connection (closed again without reading)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, path)
        except OSError:
            return False
        finally:
            sock.close()
        return True

    async def stop(self) -> None:
        """Terminate (SIGTERM, then SIGKILL after a deadline), reap, remove the temp dir."""
        proc = self._proc
        try:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), STOP_DEADLINE)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            elif proc is not None:
                await proc.wait()
        finally:
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
