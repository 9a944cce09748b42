"""Run ``qmpevents`` commands as subprocesses and read their output with deadlines.

:class:`Cli` pumps stdout and stderr line by line into queues, so a test waits
for *the line it needs* (never a sleep) and still sees everything at the end.
:func:`joined` waits on the simulator's side until a watcher has negotiated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Self

from qmpevents.sim import SimulatedVM

QMPEVENTS = (sys.executable, "-c", "import sys; from qmpevents.cli import main; sys.exit(main())")
DEADLINE = 10.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain(text: str) -> str:
    """*text* without ANSI colour codes."""
    return _ANSI.sub("", text)


class Cli:
    """A running ``qmpevents`` command."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self._queues = {"out": asyncio.Queue[str | None](), "err": asyncio.Queue[str | None]()}
        assert proc.stdout is not None and proc.stderr is not None
        self._pumps = [asyncio.create_task(self._pump(proc.stdout, "out", self.out)),
                       asyncio.create_task(self._pump(proc.stderr, "err", self.err))]

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> Self:
        proc = await asyncio.create_subprocess_exec(
            *QMPEVENTS, *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})}, limit=1 << 22)
        return cls(proc)

    async def _pump(self, stream: asyncio.StreamReader, name: str, into: list[str]) -> None:
        queue = self._queues[name]
        while line := await stream.readline():
            text = line.decode()
            into.append(text)
            queue.put_nowait(text)
        queue.put_nowait(None)

    async def line(self, stream: str = "out", timeout: float = DEADLINE) -> str:
        """The next line of *stream* ("out" or "err"); EOFError at its end."""
        text = await asyncio.wait_for(self._queues[stream].get(), timeout)
        if text is None:
            self._queues[stream].put_nowait(None)
            raise EOFError(f"std{stream} ended; stderr so far: {''.join(self.err)}")
        return text

    async def wait_line(self, predicate: Callable[[str], bool] | str, stream: str = "out",
                        timeout: float = DEADLINE) -> str:
        """Read *stream* until a line passes *predicate* (or contains the string)."""
        test = (lambda text: predicate in text) if isinstance(predicate, str) else predicate
        async with asyncio.timeout(timeout):
            while True:
                text = await self.line(stream, timeout=timeout)
                if test(text):
                    return text

    async def wait(self, timeout: float = DEADLINE) -> int:
        """Exit status, once both streams are drained."""
        status = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(asyncio.gather(*self._pumps), timeout)
        return status

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)


@asynccontextmanager
async def running(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Cli]:
    """``async with running("watch", ...) as cli:`` -- killed on the way out if still alive."""
    cli = await Cli.start(*args, env=env)
    try:
        yield cli
    finally:
        await cli.kill()


async def run(*args: str, timeout: float = DEADLINE) -> tuple[int, str, str]:
    """Run a command to its end: (exit status, stdout, stderr)."""
    async with running(*args) as cli:
        status = await cli.wait(timeout)
        return status, "".join(cli.out), "".join(cli.err)


def run_on_pty(*args: str, env: dict[str, str] | None = None,
               timeout: float = 30.0) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal: (exit status, what it showed).

    Blocking: call it with ``asyncio.to_thread``.
    """
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([*QMPEVENTS, *args], stdin=subprocess.DEVNULL, stdout=follower,
                                stderr=follower, env=env)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child has closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        return proc.wait(timeout=timeout), b"".join(chunks).decode().replace("\r\n", "\n")
    finally:
        os.close(leader)


def one_line_error(stderr: str) -> None:
    """The error contract: exactly one line on stderr, no traceback."""
    assert "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


async def joined(vm: SimulatedVM, count: int = 1, timeout: float = DEADLINE) -> None:
    """Wait until *count* monitors of *vm* have negotiated (a watcher is attached)."""
    broadcaster = vm.server.broadcaster
    ready = asyncio.Event()

    def check() -> None:
        if len(broadcaster) >= count:
            ready.set()

    broadcaster.on_join(check)
    check()
    await asyncio.wait_for(ready.wait(), timeout)


@contextlib.contextmanager
def short_dir(tag: str) -> Iterator[str]:
    """A fresh directory under /tmp whose socket paths fit in sun_path."""
    path = tempfile.mkdtemp(prefix=f"qmpev-{tag}-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
