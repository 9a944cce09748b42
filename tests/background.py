"""Long waits on an outside program, started when the session starts.

Real QEMU reads its monitor a byte at a time: a 64 MiB message is minutes of
QEMU's CPU, on the other core, while pytest would sit idle waiting for it.  A
test marked ``@pytest.mark.background.with_args(make)`` has ``make()`` (a coroutine
function) run on a thread of its own as soon as collection is done; the test
awaits what it returned through the ``background`` fixture.  A run that is
still going when the session ends is cancelled, so its programs are stopped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any

Make = Callable[[], Coroutine[Any, Any, Any]]


class BackgroundRun:
    """``make()`` on its own thread and event loop; :attr:`result` gets what it returns."""

    def __init__(self, make: Make) -> None:
        self.result: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._make = make
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="background-witness",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._task = self._loop.create_task(self._make())
            self.result.set_result(self._loop.run_until_complete(self._task))
        except BaseException as exc:  # the test that awaits it reports it
            self.result.set_exception(exc)
        finally:
            self._loop.close()

    def cancel(self) -> None:
        """Stop the run (its context managers end its programs) and wait for that."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._cancel_task)
            self._thread.join(timeout=60)

    def _cancel_task(self) -> None:
        if self._task is not None:
            self._task.cancel()
