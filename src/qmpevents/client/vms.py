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
policy), it never grows memory.  A program that would rather be called
passes *on_event*: each VM's follower awaits it (instead of queueing), so a
VM's events and its state changes (*on_state*) reach the program in the order
they happened -- the CLI's ``watch``, ``record``, ``agent`` and ``exporter``
follow VMs this way.

Hooks, all optional: *on_status* ``(vm, status, detail)`` and *on_state*
(a :class:`VMState`, with the target, the error and whether a scan found the
VM) on each change of a VM's state; *on_link* ``(target, client)`` when a
connection comes up (its client, for queries) and ``(target, None)`` when it
goes down; *trace* ``(target) -> observer`` makes each new connection's
traffic observer (:class:`~qmpevents.client.QMPClient`'s ``trace``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl as _ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from types import TracebackType
from typing import Any, Final, NamedTuple, Self

import msgspec

from qmpevents.client.connection import QMPClient
from qmpevents.client.filters import EventSpec, Predicate, QMPEvent
from qmpevents.client.subscriptions import DEFAULT_MAXSIZE, Subscription
from qmpevents.client.targets import Target, display_name, expand, is_pattern, split_name
from qmpevents.clock import REAL_CLOCK, Clock, deadline, sleep
from qmpevents.errors import QMPEventsError

Connected = tuple[QMPClient, Subscription[QMPEvent]]
"""A follower's connection: the client, and its subscription made before connecting."""

logger = logging.getLogger("qmpevents.client.vms")

RETRY_DELAY: Final = 0.5
MAX_RETRY_DELAY: Final = 5.0
CLOSE_GRACE: Final = 1.0
"""On close, how long VMs still being named may take to deliver the events they hold."""

Status = Callable[[str, str, str], None]
"""``on_status(vm, status, detail)``: status is ``attached`` (found by a scan),
``lost``, ``back``, ``unreachable`` (a retry failed; said once until it works,
and not after ``lost``), ``gone`` (a scanned VM's socket was removed)
or ``failed`` (following raised, e.g. the predicate or *on_event*: that VM is
no longer followed).  *on_state* also hears ``waiting``: a directory or glob
that names no VM yet (said once, on entry; *detail* says which)."""

OnEvent = Callable[[str, QMPEvent], Awaitable[None]]
"""``await on_event(vm, event)``, called by the VM's follower instead of queueing."""
OnLink = Callable[[Target, QMPClient | None], None]
"""``on_link(target, client)``: a connection came up; ``(target, None)``: it went down.
*target*'s name is the VM's name as its events carry it (``query-name`` included)."""
Trace = Callable[[str, bytes], None]
"""A connection's traffic observer, ``trace(direction, data)`` (``in`` / ``out``)."""


class VMState(NamedTuple):
    """One change of a VM's state, as *on_state* hears of it."""

    #: The name shown: the connected VM's name (explicit, ``query-name`` or path),
    #: the target's own name before it ever connected, the spec for ``waiting``.
    vm: str
    #: One of the :data:`Status` values, or ``waiting``.
    status: str
    #: What ``on_status`` gets as its detail (an address, a reason).
    detail: str
    #: The VM's target (None for ``waiting``, which is about a spec).
    target: Target | None
    #: True for a VM found by scanning a directory or glob, False for a fixed target.
    scanned: bool
    #: The error behind ``lost``, ``unreachable`` and ``failed``; None when the
    #: connection simply ended (``lost`` with detail ``disconnected``).
    error: BaseException | None = None


class Unreachable(NamedTuple):
    """A fixed target that could not be reached on entry, and why."""

    target: Target
    error: Exception


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
                 on_event: OnEvent | None = None, on_state: Callable[[VMState], None] | None
                 = None, on_link: OnLink | None = None,
                 trace: Callable[[Target], Trace] | None = None,
                 **client_options: Any) -> None:
        self.specs = list(targets)
        if not self.specs:
            raise ValueError("watch_vms() needs at least one target")
        for spec in self.specs:
            expand(spec)  # a target that cannot be understood fails here
        self._events = tuple(events)
        self._filters: dict[str, Any] = {"match": match, "predicate": predicate}
        self._rescan = rescan
        self._backoff = (retry_delay, max_retry_delay)  # first delay, longest delay
        #: tcp: targets also get these (TLS); a unix socket is never TLS.
        self._tls = {"ssl": ssl, "server_hostname": server_hostname} if ssl is not None else {}
        self._client_options = client_options
        #: Called on every change of a VM's state (see :data:`Status`); also logged.
        self.on_status = on_status
        #: Called with a :class:`VMState` on every change of a VM's state.
        self.on_state = on_state
        self.clock: Clock = clock or REAL_CLOCK
        self._on_event = on_event
        self._on_link = on_link
        self._trace = trace
        self._queue: asyncio.Queue[VMEvent] = asyncio.Queue(maxsize)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._lost: set[str] = set()  # addresses said lost (or gone) and not back yet
        self._scanner: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()  # close() has begun: naming stops, held events go
        self._naming: set[asyncio.Task[Any]] = set()  # followers asking their VM's name

    # -- life cycle ---------------------------------------------------------------

    async def __aenter__(self) -> Self:
        unreachable = await self.start()
        if unreachable:
            raise unreachable[0].error
        return self

    async def start(self) -> list[Unreachable]:
        """Connect every fixed target, then follow them and start scanning.

        Returns the fixed targets that could not be reached (a connection
        error: OSError, QMPEventsError, TimeoutError); then nothing is
        followed.  ``async with`` raises the first one's error instead.  The
        first connection is kept and followed: probing then reconnecting
        would lose the events sent in between.
        """
        fixed = [t for spec in self.specs if not is_pattern(spec) for t in expand(spec)]
        results = await asyncio.gather(*(self._connect(t) for t in fixed),
                                       return_exceptions=True)
        opened = [r for r in results if not isinstance(r, BaseException)]
        failures = [(t, r) for t, r in zip(fixed, results, strict=True)
                    if isinstance(r, BaseException)]
        unexpected = next((r for _, r in failures
                           if not isinstance(r, OSError | QMPEventsError | TimeoutError)), None)
        if failures:
            for client, _ in opened:
                await client.close()
            if unexpected is not None:
                raise unexpected
            return [Unreachable(t, r) for t, r in failures if isinstance(r, Exception)]
        for target, first in zip(fixed, opened, strict=True):
            self._attach(target, pattern=False, first=first)
        self._scan()
        for spec in self.specs:
            if is_pattern(spec) and not expand(spec):
                path = split_name(spec)[1]
                what = ("no such directory yet" if path.endswith("/") and not os.path.isdir(path)
                        else "no VM socket matches yet")
                self._status(VMState(spec, "waiting", what, None, scanned=True))
        self._scanner = asyncio.create_task(self._rescan_forever())
        return []

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop following every VM (their connections are closed).

        A VM whose ``query-name`` has not been answered yet first delivers the
        events it received meanwhile, under its target's name, within
        :data:`CLOSE_GRACE` seconds: an event received before the end is not
        lost because the VM was slow to say its name.
        """
        self._closing.set()
        naming = [task for task in self._tasks.values() if task in self._naming]
        if naming:  # real time, whatever the clock: closing never waits on a test's clock
            _, late = await asyncio.wait(naming, timeout=CLOSE_GRACE)
            if late:
                logger.info("%d VMs still naming at close: their held events are dropped",
                            len(late))
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

    async def _connect(self, target: Target) -> Connected:
        """Subscribe, then connect: no event after negotiation can slip by."""
        options = dict(self._client_options)
        # The follower applies backpressure itself (a bounded hand-over): a busy
        # consumer slows the VM's reader down, it is not a stalled subscriber.
        options.setdefault("stall_timeout", None)
        if target.address.startswith("tcp:"):
            options.update(self._tls)
        trace = self._trace(target) if self._trace is not None else None
        client = QMPClient(target.connect_address, clock=self.clock, trace=trace, **options)
        events = client.events(*self._events, **self._filters)
        try:
            await client.connect()
        except BaseException:
            await client.close()
            raise
        return client, events

    async def _name(self, target: Target, client: QMPClient,
                    events: Subscription[QMPEvent]) -> tuple[AsyncIterator[QMPEvent], str]:
        """Ask the VM's name from its follower's task, which close() waits for
        (within :data:`CLOSE_GRACE`): the events taken meanwhile are not lost."""
        follower = asyncio.current_task()
        if follower is not None:
            self._naming.add(follower)
        try:
            name, early = await _name_while_draining(client, target, events, self._closing)
        except BaseException:
            await client.close()
            raise
        finally:
            self._naming.discard(follower)
        return _chain(early, events, self._closing), name

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

    def _attach(self, target: Target, *, pattern: bool, first: Connected | None = None) -> None:
        task = asyncio.create_task(self._follow(target, pattern, first))
        if first is not None:  # connected: it names the VM first (close() waits for that)
            self._naming.add(task)
        self._tasks[target.address] = task
        task.add_done_callback(lambda _: self._tasks.pop(target.address, None))

    def _status(self, state: VMState) -> None:
        logger.info("%s: %s%s", state.vm, state.status,
                    f" ({state.detail})" if state.detail else "")
        if self.on_state is not None:
            self.on_state(state)
        if self.on_status is not None and state.target is not None:
            self.on_status(state.vm, state.status, state.detail)

    async def _deliver(self, vm: str, event: QMPEvent) -> None:
        if self._on_event is not None:
            await self._on_event(vm, event)
        else:
            await self._queue.put(VMEvent(vm, event))

    async def _follow(self, target: Target, pattern: bool, connected: Connected | None) -> None:
        """Stream one VM's events; say losses and returns; retry with back-off."""
        first_delay, max_delay = self._backoff
        delay = first_delay
        failing = False  # a failure has been said and nothing has worked since
        named: str | None = None  # the VM's name once connected and named
        while True:
            try:
                if connected is None:
                    connected = await self._connect(target)
                client = connected[0]
                events, name = await self._name(target, *connected)
                named = name
                try:
                    if target.address in self._lost:
                        self._lost.discard(target.address)
                        self._status(VMState(name, "back", target.address, target, pattern))
                    elif pattern:
                        self._status(VMState(name, "attached", target.address, target, pattern))
                    failing = False
                    delay = first_delay
                    # The hook sees the VM under the name its events carry.
                    shown = target if name == target.name else replace(target, name=name)
                    if self._on_link is not None:
                        self._on_link(shown, client)
                    async for event in events:
                        await self._deliver(name, event)
                finally:
                    if self._on_link is not None:
                        self._on_link(shown, None)
                    await client.close()
                if self._closing.is_set():  # the held events are delivered: the end
                    return
                self._lost.add(target.address)
                self._status(VMState(name, "lost", "disconnected", target, pattern))
            except (OSError, QMPEventsError, TimeoutError) as exc:
                detail = str(exc) or type(exc).__name__
                if named is not None:
                    self._lost.add(target.address)
                    self._status(VMState(named, "lost", detail, target, pattern, exc))
                elif not failing:
                    self._status(VMState(target.name, "unreachable", detail, target, pattern,
                                         exc))
            except Exception as exc:  # e.g. the predicate raised: say so, stop this VM only
                heard = self.on_state is not None or self.on_status is not None
                logger.log(logging.DEBUG if heard else logging.ERROR,  # a hook says it
                           "%s: following stopped", target.name, exc_info=True)
                self._status(VMState(target.name, "failed", f"{type(exc).__name__}: {exc}",
                                     target, pattern, exc))
                return
            failing = True
            connected = named = None
            path = target.path
            if pattern and path is not None and not os.path.exists(path):
                self._status(VMState(target.name, "gone", "socket removed", target, pattern))
                return
            await sleep(self.clock, delay)  # retry back-off
            delay = min(delay * 2, max_delay)


def watch_vms(*targets: str, **options: Any) -> VMs:
    """``async with watch_vms(target, ...) as vms: async for vm, event in vms:``.

    *options* are :class:`VMs`' (``events``, ``match``, ``predicate``,
    ``rescan``, ``on_status``, ``on_state``, ``on_event``, ``on_link``,
    ``trace``, ``ssl``, ``clock``...), and any other keyword
    goes to each VM's :class:`~qmpevents.client.QMPClient`.
    """
    return VMs(targets, **options)


EARLY_LIMIT = 1 << 16
"""Events taken while a VM's name is asked, at most: the burst QEMU may have
queued.  A VM that sends more before it answers is shown under its target's
name (its query-name is not waited for any longer)."""
EARLY_BYTES = 64 << 20
"""Their encoded size, at most: a VM that sends more before it answers is shown
under its target's name (memory stays bounded, whatever it sends)."""


async def _name_while_draining(client: QMPClient, target: Target,
                               events: Subscription[QMPEvent], closing: asyncio.Event
                               ) -> tuple[str, list[QMPEvent]]:
    """The VM's name, taking its events meanwhile (at most :data:`EARLY_LIMIT`
    events and :data:`EARLY_BYTES`).

    A VM with a burst queued answers ``query-name`` after the burst: a
    subscription nobody reads until then would fill, and the client, which
    must read on for the reply, would cut it off and lose the rest.  Past
    either limit, or once *closing* is set or the connection ends, the name
    is the target's, and the events taken so far are returned (to be
    delivered first).
    """
    asking = asyncio.ensure_future(display_name(client, target))
    ending = asyncio.ensure_future(closing.wait())
    early: list[QMPEvent] = []
    size = 0
    taking: asyncio.Future[QMPEvent] | None = None
    try:
        while not asking.done() and not closing.is_set():
            if len(early) >= EARLY_LIMIT or size >= EARLY_BYTES:
                logger.info("%s: %d events (%d bytes) before query-name was answered: "
                            "shown as %s", target.address, len(early), size, target.name)
                break
            taking = asyncio.ensure_future(events.get(timeout=None))
            await asyncio.wait((asking, taking, ending), return_when=asyncio.FIRST_COMPLETED)
            if taking.done():
                if taking.exception() is not None:
                    break  # the connection ended: the follower hears of it from *events*
                taken = [taking.result()]
                while events.qsize() and len(early) + len(taken) < EARLY_LIMIT:  # this read
                    taken.append(events.get_nowait())
                early += taken
                size += len(_ENCODE(taken))
            else:
                taking.cancel()
                await asyncio.gather(taking, return_exceptions=True)
            taking = None
        return (asking.result() if asking.done() else target.name), early
    finally:
        for pending in (asking, ending, taking):
            _discard(pending)


_ENCODE: Final = msgspec.json.Encoder().encode


def _discard(task: asyncio.Future[Any] | None) -> None:
    """Cancel *task* if it is pending, and never leave its exception unretrieved."""
    if task is None:
        return
    task.cancel()
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


async def _chain(early: list[QMPEvent], events: Subscription[QMPEvent],
                 closing: asyncio.Event) -> AsyncIterator[QMPEvent]:
    for event in early:
        yield event
    if closing.is_set():  # closing: what was held and queued is delivered, nothing awaited
        while events.qsize():
            yield events.get_nowait()
        return
    async for event in events:
        yield event

