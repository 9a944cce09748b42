"""The blocking facade: the same client for scripts and non-async code.

An event loop runs in a daemon thread owned by the facade; every call is
submitted to it and waited for.  Timeouts are enforced inside the loop, so a
blocking call raises the same TimeoutError, ConnectionLost or QMPError as its
async twin and never hangs on a dead connection.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, overload

from qmpevents.addresses import AddressLike
from qmpevents.client.connection import QMPClient
from qmpevents.client.expect import Expectation
from qmpevents.client.filters import E2, E, EventSpec, Predicate, QMPEvent
from qmpevents.client.subscriptions import DEFAULT_MAXSIZE, Overflow, Subscription
from qmpevents.protocol import Greeting

T = TypeVar("T")


class _LoopThread:
    """An event loop in a daemon thread, for running coroutines from blocking code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="qmpevents-sync",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


class SyncSubscription(Generic[E]):
    """Blocking view of a :class:`~qmpevents.client.subscriptions.Subscription`.

    ``for ev in sub`` ends when the connection ends; ``get(timeout)`` raises
    TimeoutError or ConnectionLost, exactly as the async methods do.
    """

    def __init__(self, runner: _LoopThread, subscription: Subscription[E]) -> None:
        self._runner = runner
        self.subscription = subscription

    @property
    def dropped(self) -> int:
        return self.subscription.dropped

    def get(self, timeout: float | None = None) -> E:
        return self._runner.run(self.subscription.get(timeout))

    def __iter__(self) -> Iterator[E]:
        return self

    def __next__(self) -> E:
        try:
            return self._runner.run(_await(self.subscription.__anext__()))
        except StopAsyncIteration:
            raise StopIteration from None

    def batches(self) -> Iterator[list[E]]:
        """``for events in sub.batches():`` -- see the async ``batches()``."""
        batches = self.subscription.batches()
        while True:
            try:
                yield self._runner.run(_await(batches.__anext__()))
            except StopAsyncIteration:
                return

    def close(self) -> None:
        if self._runner.loop.is_closed():
            return  # the client closed first: the subscription has ended with it
        self._runner.loop.call_soon_threadsafe(self.subscription.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class SyncWaiter(Generic[E]):
    """``w = qmp.wait_for("SHUTDOWN", timeout=5)``, act, then ``ev = w.wait()``.

    Listening starts when :meth:`SyncQMPClient.wait_for` is called, so the
    event caused by a command run in between cannot be missed -- the async
    idiom, with ``w.wait()`` for ``await w``.  :meth:`wait` raises
    TimeoutError (after the *timeout* given to ``wait_for``) or
    ConnectionLost; :meth:`close` (or leaving ``with``) stops listening.
    """

    def __init__(self, runner: _LoopThread, pending: Coroutine[Any, Any, E]) -> None:
        self._runner = runner
        self._pending: Coroutine[Any, Any, E] | None = pending

    def wait(self) -> E:
        pending, self._pending = self._pending, None
        if pending is None:
            raise RuntimeError("wait() was already called")
        return self._runner.run(pending)

    def close(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not self._runner.loop.is_closed():
            # closing the unstarted coroutine unsubscribes through its finally
            self._runner.loop.call_soon_threadsafe(pending.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class SyncExpectation:
    """Blocking ``with qmp.expect("A", "B", timeout=5):`` -- see :class:`Expectation`."""

    def __init__(self, runner: _LoopThread, expectation: Expectation,
                 subscribe: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self._runner = runner
        self.expectation = expectation
        self._subscribe = subscribe

    @property
    def events(self) -> list[QMPEvent]:
        return self.expectation.events

    def __enter__(self) -> Self:
        self._subscribe(self.expectation.__aenter__())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._runner.run(self.expectation.__aexit__(exc_type, exc, tb))


class SyncQMPClient:
    """Blocking twin of :class:`~qmpevents.client.connection.QMPClient`.

    ``with connect_sync(address) as qmp:`` connects on entry and closes (and
    stops its loop thread) on exit.
    """

    def __init__(self, address: AddressLike, **options: Any) -> None:
        self._options = options
        self._address = address
        self._runner: _LoopThread | None = None
        self._client: QMPClient | None = None
        self._holding = False  # events after negotiation wait for the first call

    @property
    def client(self) -> QMPClient:
        """The async client underneath (use only from its loop)."""
        if self._client is None:
            raise RuntimeError("not connected; use `with connect_sync(...)` or .connect()")
        return self._client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._runner is None:
            coro.close()
            raise RuntimeError("not connected; use `with connect_sync(...)` or .connect()")
        return self._runner.run(self._releasing(coro))

    def _releasing(self, coro: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
        """*coro*, then, if it is the first call since connect(), the hand-over of
        the events held since: after a subscription is made (``execute()`` hands
        them over itself, before its command, whose reply must be read)."""
        if not self._holding:
            return coro
        self._holding = False
        client = self.client

        async def released() -> T:
            try:
                return await coro
            finally:
                client.release_events()
        return released()

    def connect(self) -> Self:
        """Connect and negotiate.  The events that come during and right after negotiation
        wait for the first call (``listen()`` subscribes first), as the async
        client's wait for its caller's next step: none is lost between."""
        if self._runner is not None:
            raise RuntimeError("already connected")
        runner = self._runner = _LoopThread()
        try:
            self._client = runner.run(self._make_client())
            runner.run(self._client.connect(hold_events=True))
        except BaseException:
            runner.stop()
            self._runner = None
            raise
        self._holding = True
        return self

    async def _make_client(self) -> QMPClient:
        return QMPClient(self._address, **self._options)

    def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        try:
            runner.run(self.client.close())
        finally:
            runner.stop()

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def greeting(self) -> Greeting | None:
        return self.client.greeting

    @property
    def last_status(self) -> Any:
        return self.client.last_status

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None, *,
                timeout: float | None = None) -> Any:
        return self._run(self.client.execute(command, arguments, timeout=timeout))

    @overload
    def listen(self, event: type[E], /, *, match: Mapping[str, Any] | None = None,
               predicate: Predicate | None = None, maxsize: int = DEFAULT_MAXSIZE,
               overflow: Overflow = "block") -> SyncSubscription[E]: ...
    @overload
    def listen(self, event: type[E], other: type[E2], /, *,
               match: Mapping[str, Any] | None = None, predicate: Predicate | None = None,
               maxsize: int = DEFAULT_MAXSIZE,
               overflow: Overflow = "block") -> SyncSubscription[E | E2]: ...
    @overload
    def listen(self, *names: EventSpec, match: Mapping[str, Any] | None = None,
               predicate: Predicate | None = None, maxsize: int = DEFAULT_MAXSIZE,
               overflow: Overflow = "block") -> SyncSubscription[QMPEvent]: ...

    def listen(self, *names: Any, match: Mapping[str, Any] | None = None,
               predicate: Predicate | None = None, maxsize: int = DEFAULT_MAXSIZE,
               overflow: Overflow = "block") -> SyncSubscription[Any]:
        async def subscribe() -> Subscription[Any]:
            return self.client.listen(*names, match=match, predicate=predicate,
                                      maxsize=maxsize, overflow=overflow)
        subscription = self._run(subscribe())
        assert self._runner is not None
        return SyncSubscription(self._runner, subscription)

    @overload
    def events(self, event: type[E], /, *, match: Mapping[str, Any] | None = None,
               predicate: Predicate | None = None, maxsize: int = DEFAULT_MAXSIZE,
               overflow: Overflow = "block") -> SyncSubscription[E]: ...
    @overload
    def events(self, event: type[E], other: type[E2], /, *,
               match: Mapping[str, Any] | None = None, predicate: Predicate | None = None,
               maxsize: int = DEFAULT_MAXSIZE,
               overflow: Overflow = "block") -> SyncSubscription[E | E2]: ...
    @overload
    def events(self, *names: EventSpec, match: Mapping[str, Any] | None = None,
               predicate: Predicate | None = None, maxsize: int = DEFAULT_MAXSIZE,
               overflow: Overflow = "block") -> SyncSubscription[QMPEvent]: ...

    def events(self, *names: Any, match: Mapping[str, Any] | None = None,
               predicate: Predicate | None = None, maxsize: int = DEFAULT_MAXSIZE,
               overflow: Overflow = "block") -> SyncSubscription[Any]:
        return self.listen(*names, match=match, predicate=predicate, maxsize=maxsize,
                           overflow=overflow)

    @overload
    def wait_for(self, event: type[E], /, *, timeout: float | None = None,
                 match: Mapping[str, Any] | None = None,
                 predicate: Predicate | None = None) -> SyncWaiter[E]: ...
    @overload
    def wait_for(self, event: type[E], other: type[E2], /, *, timeout: float | None = None,
                 match: Mapping[str, Any] | None = None,
                 predicate: Predicate | None = None) -> SyncWaiter[E | E2]: ...
    @overload
    def wait_for(self, *names: EventSpec, timeout: float | None = None,
                 match: Mapping[str, Any] | None = None,
                 predicate: Predicate | None = None) -> SyncWaiter[QMPEvent]: ...

    def wait_for(self, *names: Any, timeout: float | None = None,
                 match: Mapping[str, Any] | None = None,
                 predicate: Predicate | None = None) -> SyncWaiter[Any]:
        """Start listening now; ``.wait()`` later returns the event (see :class:`SyncWaiter`)."""
        async def subscribe() -> Coroutine[Any, Any, Any]:
            return self.client.wait_for(*names, timeout=timeout, match=match,
                                        predicate=predicate)
        pending = self._run(subscribe())
        assert self._runner is not None
        return SyncWaiter(self._runner, pending)

    def expect(self, *names: EventSpec, timeout: float | None = 10.0,
               match: Mapping[str, Any] | None = None) -> SyncExpectation:
        if self._runner is None:
            raise RuntimeError("not connected; use `with connect_sync(...)` or .connect()")
        return SyncExpectation(self._runner,
                               self.client.expect(*names, timeout=timeout, match=match),
                               self._run)


def connect_sync(address: AddressLike, **options: Any) -> SyncQMPClient:
    """A blocking client for *address*; use ``with connect_sync(...) as qmp:``."""
    return SyncQMPClient(address, **options)
