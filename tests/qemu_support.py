"""Helpers for tests that talk to a real ``qemu-system-x86_64`` over QMP.

* :func:`qemu_binary` / :data:`requires_qemu` -- locate QEMU, skip when absent.
* :class:`QemuProcess` -- start a paused, device-less QEMU with a QMP unix socket
  (async context manager; kills and reaps QEMU and removes its temp dir on exit).
* :class:`RawQMP` -- a minimal raw-bytes QMP client: no JSON framing of our own,
  so tests can send arbitrary (even malformed) bytes and see QEMU's exact reply lines.

QEMU serves one client at a time per QMP socket: a second connection is accepted
by the kernel but gets no greeting until the first one is gone. Use
:meth:`RawQMP.aclose` (half-close, then wait for QEMU's EOF) before reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
    "PROBE",
    "PROBE_ID",
    "ProbeTimeoutError",
    "QemuProcess",
    "RawQMP",
    "qemu_binary",
    "requires_qemu",
]

QEMU_NAME = "qemu-system-x86_64"

#: ``id`` of the liveness probe sent by :meth:`RawQMP.read_lines_until_quiet`.
PROBE_ID = "__probe__"
#: The probe command itself (one CRLF-terminated line).
PROBE = b'{"execute": "query-status", "id": "__probe__"}\r\n'

STARTUP_DEADLINE = 15.0
STOP_DEADLINE = 5.0
_POLL_INTERVAL = 0.02
_STREAM_LIMIT = 64 * 1024 * 1024


def qemu_binary() -> str | None:
    """Path of ``qemu-system-x86_64`` on ``$PATH``, or ``None``."""
    return shutil.which(QEMU_NAME)


requires_qemu = pytest.mark.skipif(
    qemu_binary() is None, reason=f"{QEMU_NAME} not installed (apt-get install qemu-system-x86)"
)


class ProbeTimeoutError(TimeoutError):
    """The probe reply did not arrive in time; ``lines`` holds what did arrive."""

    def __init__(self, lines: list[bytes]) -> None:
        super().__init__(f"no reply to the QMP probe ({len(lines)} other lines received)")
        self.lines = lines


def _is_probe_reply(line: bytes) -> bool:
    if PROBE_ID.encode() not in line:
        return False
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return (
        isinstance(obj, dict) and obj.get("id") == PROBE_ID and ("return" in obj or "error" in obj)
    )


class RawQMP:
    """Raw-bytes QMP client over a unix socket.

    Nothing is parsed or framed except the CRLF line ending QEMU puts after every
    message. Open with ``await RawQMP.open(path)``; the greeting line is in
    :attr:`greeting`.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, greeting: bytes
    ) -> None:
        self._reader = reader
        self._writer = writer
        #: The greeting line exactly as received, including its CRLF.
        self.greeting = greeting

    @classmethod
    async def open(cls, path: str | os.PathLike[str], timeout: float = 10.0) -> Self:
        """Connect to *path* and wait (up to *timeout* s) for QEMU's greeting line.

        Retries a refused/missing socket until the deadline: QEMU may still be
        tearing down the previous client's connection.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(
                    os.fspath(path), limit=_STREAM_LIMIT
                )
                break
            except (ConnectionRefusedError, FileNotFoundError):
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(_POLL_INTERVAL)
        try:
            remaining = max(deadline - loop.time(), 0.1)
            greeting = await asyncio.wait_for(reader.readuntil(b"\r\n"), remaining)
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer, greeting)

    async def send(self, data: bytes) -> None:
        """Write *data* verbatim (no framing added) and drain."""
        self._writer.write(data)
        await self._writer.drain()

    async def negotiate(self, timeout: float = 10.0) -> bytes:
        """Send ``qmp_capabilities`` and return its reply line (including CRLF)."""
        await self.send(b'{"execute": "qmp_capabilities"}\r\n')
        return await self.read_line(timeout)

    async def read_line(self, timeout: float | None = 10.0) -> bytes:
        """Next line, including its CRLF.

        Returns ``b""`` at EOF (or the unterminated tail, if the peer closed
        mid-line). Raises :class:`TimeoutError` if nothing complete arrives within
        *timeout* seconds (``None``: wait forever).
        """
        try:
            return await asyncio.wait_for(self._reader.readuntil(b"\r\n"), timeout)
        except asyncio.IncompleteReadError as exc:
            return exc.partial

    async def read_lines_until_quiet(
        self, probe: bool = True, quiet: float = 2.0, timeout: float = 60.0
    ) -> list[bytes]:
        """Collect every line QEMU sends before it has caught up with our input.

        With *probe* (the default) send :data:`PROBE` and return all lines received
        before the probe's reply (``return`` or ``error`` with ``id`` ``"__probe__"``),
        which is consumed. QEMU handles a monitor's input in order, so this proves
        everything sent earlier was processed -- no sleeping involved. Raises
        :class:`ProbeTimeoutError` (carrying the lines so far) if no line arrives for
        *quiet* seconds, or the probe reply is not there after *timeout* seconds, or
        the connection closes first. That happens when earlier input left QEMU's JSON
        parser mid-message (e.g. an unterminated ``{`` or string), which swallows
        the probe.

        Without *probe*, read until no line arrives for *quiet* seconds (or EOF, or
        *timeout* seconds in total) and return everything.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        lines: list[bytes] = []
        if probe:
            await self.send(PROBE)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                if probe:
                    raise ProbeTimeoutError(lines)
                return lines
            try:
                line = await self.read_line(min(quiet, remaining))
            except TimeoutError:
                if probe:
                    raise ProbeTimeoutError(lines) from None
                return lines
            if not line.endswith(b"\r\n"):
                if line:
                    lines.append(line)
                if probe:
                    raise ProbeTimeoutError(lines)
                return lines
            if probe and _is_probe_reply(line):
                return lines
            lines.append(line)

    async def aclose(self, timeout: float = 5.0) -> list[bytes]:
        """Half-close, wait for QEMU to close its side (EOF), then close.

        Returns any lines that arrived meanwhile. Once this returns QEMU has
        dropped the connection, so the socket is free for the next client.
        """
        lines: list[bytes] = []
        try:
            if self._writer.can_write_eof():
                self._writer.write_eof()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while (remaining := deadline - loop.time()) > 0:
                try:
                    line = await self.read_line(remaining)
                except TimeoutError:
                    break
                if not line:
                    break
                lines.append(line)
        except (ConnectionError, OSError):
            pass
        finally:
            self.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
        return lines

    def close(self) -> None:
        """Close the connection immediately (no waiting for QEMU)."""
        self._writer.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


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
    ) -> None:
        self.extra_args: tuple[str, ...] = extra_args
        self.extra_qmp = extra_qmp
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
            "-qmp",
            f"unix:{self.socket_path},server=on,wait=off",
        ]
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
