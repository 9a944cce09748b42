"""Many VMs at once: what ``qmpevents watch`` does, as a library.

::

    async with qmpevents.watch_vms("/run/qemu-server/", "web1=/srv/web1.sock",
                                   events=["SHUTDOWN", "BLOCK_IO_ERROR"]) as vms:
        async for vm, event in vms:
            print(vm, event.name)

Targets are those of :mod:`qmpevents.client.targets` (addresses, paths,
directories and globs, ``NAME=ADDRESS``).  Fixed targets are connected on
entry (an unreachable one raises there); directories and globs are re-scanned
every *rescan* seconds and a VM that appears is followed.  A VM whose
connection drops is retried with back-off until it is back (a VM found by a
scan is given up once its socket file is removed).  Each connection
subscribes before it negotiates, so no event after negotiation is missed; a
VM that was away may have missed events -- :attr:`VMs.on_status` hears of it.

Every VM feeds one bounded queue of ``(vm, event)`` pairs: a consumer that
does not keep up slows the VMs' readers down (each subscription's ``block``
policy), it never grows memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl as _ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, NamedTuple, Self

from qmpevents.client.connection import QMPClient
from qmpevents.client.filters import EventSpec, Predicate, QMPEvent
from qmpevents.client.subscriptions import DEFAULT_MAXSIZE, Subscription
from qmpevents.client.targets import Target, display_name, expand, is_pattern
from qmpevents.clock import REAL_CLOCK, Clock, deadline, sleep
from qmpevents.errors import QMPEventsError

logger = logging.getLogger("qmpevents.client.vms")

RETRY_DELAY: Final = 0.5
MAX_RETRY_DELAY: Final = 5.0

Status = Callable[[str, str, str], None]
"""``on_status(vm, status, detail)``: status is ``attached``, ``lost``, ``back``,
``unreachable`` (a retry failed; said once until it works), ``gone`` or
``failed`` (following raised, e.g. the predicate: that VM is no longer followed)."""


class VMEvent(NamedTuple):
    """One event and the name of the VM that sent it."""

    vm: str
    event: QMPEvent


class VMs:
    """Follow the events of many VMs; use :func:`watch_vms`.  See the module docstring."""

    def __init__(self, targets: Iterable[str], *, events: Iterable[EventSpec] = (),
                 match: Mapping[str, Any] | None = None, predicate: Predicate | None = None,
                 rescan: float = 1.0, retry_delay: float = RETRY_DELAY,
                 max_retry_delay: float = MAX_RETRY_DELAY, maxsize: int = DEFAULT_MAXSIZE,
                 ssl: _ssl.SSLContext | None = None, server_hostname: str | None = None,
                 on_status: Status | None = None, clock: Clock | None = None,
                 **client_options: Any) -> None:
        self.specs = list(targets)
        if not self.specs:
            raise ValueError("watch_vms() needs at least one target")
        for spec in self.specs:
            expand(spec)  # a target that cannot be understood fails here
        self._events = tuple(events)
        self._match = match
        self._predicate = predicate
        self._rescan = rescan
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._ssl = ssl
        self._server_hostname = server_hostname
        self._client_options = client_options
        #: Called on every change of a VM's state (see :data:`Status`); also logged.
        self.on_status = on_status
        self.clock: Clock = clock or REAL_CLOCK
        self._queue: asyncio.Queue[VMEvent] = asyncio.Queue(maxsize)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._scanner: asyncio.Task[None] | None = None

    # -- life cycle ---------------------------------------------------------------

    async def __aenter__(self) -> Self:
        fixed = [t for spec in self.specs if not is_pattern(spec) for t in expand(spec)]
        opened = await asyncio.gather(*(self._open(t) for t in fixed), return_exceptions=True)
        failure = next((r for r in opened if isinstance(r, BaseException)), None)
        if failure is not None:
            for result in opened:
                if not isinstance(result, BaseException):
                    await result[0].close()
            raise failure
        for target, first in zip(fixed, opened, strict=True):
            assert not isinstance(first, BaseException)
            self._attach(target, pattern=False, first=first)
        self._scan()
        self._scanner = asyncio.create_task(self._rescan_forever())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop following every VM (their connections are closed)."""
        tasks = list(self._tasks.values())
        if self._scanner is not None:
            tasks.append(self._scanner)
            self._scanner = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def followed(self) -> list[str]:
        """The addresses of the VMs followed right now."""
        return list(self._tasks)

    # -- the stream -----------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[VMEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[VMEvent]:
        while True:
            yield await self._queue.get()

    async def get(self, timeout: float | None = None) -> VMEvent:
        """The next ``(vm, event)``; TimeoutError after *timeout* seconds."""
        async with deadline(self.clock, timeout, "no event from any VM"):
            return await self._queue.get()

    # -- following ----------------------------------------------------------------

    async def _open(self, target: Target) -> tuple[QMPClient, Subscription[QMPEvent], str]:
        """Subscribe, then connect: no event after negotiation can slip by."""
        options = dict(self._client_options)
        if self._ssl is not None and target.address.startswith("tcp:"):
            options.update(ssl=self._ssl, server_hostname=self._server_hostname)
        client = QMPClient(target.address, clock=self.clock, **options)
        events = client.events(*self._events, match=self._match, predicate=self._predicate)
        try:
            await client.connect()
            name = await display_name(client, target)
        except BaseException:
            await client.close()
            raise
        return client, events, name

    def _scan(self) -> None:
        for spec in self.specs:
            if is_pattern(spec):
                for target in expand(spec):
                    if target.address not in self._tasks:
                        self._attach(target, pattern=True)

    async def _rescan_forever(self) -> None:
        while True:
            await sleep(self.clock, self._rescan)  # polling the file system
            self._scan()

    def _attach(self, target: Target, *, pattern: bool,
                first: tuple[QMPClient, Subscription[QMPEvent], str] | None = None) -> None:
        task = asyncio.create_task(self._follow(target, pattern, first))
        self._tasks[target.address] = task
        task.add_done_callback(lambda _: self._tasks.pop(target.address, None))

    def _status(self, vm: str, status: str, detail: str = "") -> None:
        logger.info("%s: %s%s", vm, status, f" ({detail})" if detail else "")
        if self.on_status is not None:
            self.on_status(vm, status, detail)

    async def _follow(self, target: Target, pattern: bool,
                      opened: tuple[QMPClient, Subscription[QMPEvent], str] | None) -> None:
        delay = self._retry_delay
        lost = failing = False
        while True:
            try:
                if opened is None:
                    opened = await self._open(target)
                client, events, name = opened
                try:
                    if lost:
                        self._status(name, "back", target.address)
                    elif pattern:
                        self._status(name, "attached", target.address)
                    lost = failing = False
                    delay = self._retry_delay
                    async for event in events:
                        await self._queue.put(VMEvent(name, event))
                finally:
                    await client.close()
                lost = True
                self._status(name, "lost", "disconnected")
            except (OSError, QMPEventsError, TimeoutError) as exc:
                if opened is not None:
                    lost = True
                    self._status(opened[2], "lost", str(exc) or type(exc).__name__)
                elif not failing:
                    self._status(target.name, "unreachable", str(exc) or type(exc).__name__)
                failing = True
            except Exception as exc:  # e.g. the predicate raised: say so, stop this VM only
                logger.exception("%s: following stopped", target.name)
                self._status(target.name, "failed", f"{type(exc).__name__}: {exc}")
                return
            opened = None
            path = target.address[5:] if target.address.startswith("unix:") else None
            if pattern and path is not None and not os.path.exists(path):
                self._status(target.name, "gone", "socket removed")
                return
            await sleep(self.clock, delay)  # retry back-off
            delay = min(delay * 2, self._max_retry_delay)


def watch_vms(*targets: str, **options: Any) -> VMs:
    """``async with watch_vms(target, ...) as vms: async for vm, event in vms:``.

    *options* are :class:`VMs`' (``events``, ``match``, ``predicate``,
    ``rescan``, ``on_status``, ``ssl``, ``clock``...), and any other keyword
    goes to each VM's :class:`~qmpevents.client.QMPClient`.
    """
    return VMs(targets, **options)
