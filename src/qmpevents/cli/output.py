"""stdout written without blocking the event loop: a reader that stops reading cannot stop time.

A ``watch`` whose stdout is a pipe nobody reads (``| sleep 60``) would block
in ``write()`` with the pipe full, and with it the event loop: no
``--timeout``, no signal handling, no reconnects.  :class:`Output` hands the
bytes to a writer thread instead.  While more than *limit* bytes wait, the
caller's ``await write()`` waits too (the VMs' readers slow down, as a full
queue makes them), but the loop runs on, so ``--timeout`` still ends the
command on time.  Lines that were not written by then are dropped with the
process.  Memory is bounded by *limit* plus one line per concurrent writer (one
per VM followed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, Final

LIMIT: Final = 1 << 20
"""Bytes waiting to be written beyond which ``write()`` waits (1 MiB)."""
FINAL_GRACE: Final = 0.2
"""After ``--timeout``, how long the lines already printed may take to reach a reader."""


class Output:
    """Lines to a file descriptor, written by a thread; use inside a running loop."""

    def __init__(self, fd: int = 1, limit: int = LIMIT,
                 on_error: Callable[[OSError], None] | None = None, *,
                 ends: asyncio.Future[Any] | None = None) -> None:
        """*on_error* hears of a write error (a closed pipe) at once, in the loop; the
        error also ends the session's future *ends* (a closed pipe, ``| head``, ends it)."""
        self._fd = fd
        self._on_error = on_error
        self._ends = ends
        self._limit = limit
        self._loop = asyncio.get_running_loop()
        self._chunks: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._pending = 0  # bytes handed to the thread and not written yet (loop side only)
        self._waiters: list[asyncio.Future[None]] = []
        #: The write error (BrokenPipeError for a closed pipe), once there is one.
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="qmpevents-stdout", daemon=True)
        self._thread.start()

    async def write(self, text: str, *, block: bool = True) -> bool:
        """Queue *text*; waits while more than *limit* bytes wait, or with *block* false
        drops it then (False).  Raises the write error."""
        if self.error is not None:
            raise self.error
        if not block and self.full:
            return False
        data = text.encode("utf-8", "backslashreplace")  # lines are escaped already
        self._pending += len(data)
        self._chunks.put(data)
        if block and self._pending > self._limit:
            await self._wait(lambda: self._pending <= self._limit // 2)
        return True

    @property
    def full(self) -> bool:
        """More than *limit* bytes wait: ``write(block=False)`` would drop."""
        return self._pending > self._limit

    async def drain(self) -> None:
        """Wait until everything queued is written (raises the write error)."""
        await self._wait(lambda: self._pending == 0)

    async def drained_by(self, deadline: float | None, *, timed_out: bool = False) -> bool:
        """Drain by *deadline* (loop time; None: none) or, once the session has timed out,
        within FINAL_GRACE; False if the reader did not take the lines by then (they are
        dropped with the process).  Raises the write error."""
        if timed_out:
            deadline = self._loop.time() + FINAL_GRACE
        try:
            async with asyncio.timeout_at(deadline):
                await self.drain()
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """End the thread once it has written what it holds (it never delays the exit)."""
        self._chunks.put(None)

    async def _wait(self, ready: Callable[[], bool]) -> None:
        while self.error is None and not ready():
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            await waiter
        if self.error is not None:
            raise self.error

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _written(self, count: int) -> None:
        self._pending -= count
        self._wake()

    def _failed(self, error: OSError) -> None:
        self.error = error
        self._wake()
        if self._ends is not None and not self._ends.done():
            self._ends.set_exception(error)
        if self._on_error is not None:
            self._on_error(error)

    def _run(self) -> None:
        """The writer thread: everything queued, in order, in as few writes as it can."""
        while True:
            first = self._chunks.get()
            if first is None:
                return
            parts, stop = [first], False
            while not self._chunks.empty():
                more = self._chunks.get_nowait()
                if more is None:
                    stop = True
                    break
                parts.append(more)
            joined = b"".join(parts)
            data = memoryview(joined)
            try:
                while data:
                    data = data[os.write(self._fd, data):]
            except OSError as exc:
                self._tell(self._failed, exc)
                return
            self._tell(self._written, len(joined))
            if stop:
                return

    def _tell(self, callback: Callable[[Any], None], argument: object) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self._loop.call_soon_threadsafe(callback, argument)
