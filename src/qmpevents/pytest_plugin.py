"""pytest plugin (entry point ``qmpevents``): a running simulated VM as a fixture.

Two fixtures, both configured by the ``simulated_vm`` marker, whose keyword
arguments are passed to :class:`~qmpevents.sim.SimulatedVM`:

* ``simulated_vm`` -- for async tests; needs pytest-asyncio (strict mode:
  mark the test ``@pytest.mark.asyncio``; auto mode: nothing to add);
* ``simulated_vm_thread`` -- for plain (sync) tests: the VM runs on its own
  event loop in a thread, so ``qmpevents.connect_sync`` works from the test.

::

    @pytest.mark.simulated_vm(profile="qemu-7.2", drives=["disk0,werror=stop"])
    def test_disk(simulated_vm_thread):
        with qmpevents.connect_sync(simulated_vm_thread.socket_path) as qmp: ...

The plugin loads without pytest-asyncio; only ``simulated_vm`` needs it.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from qmpevents.sim.vm import SimulatedVM


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "simulated_vm(**options): options of the simulated_vm fixtures' SimulatedVM")


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("simulated_vm")
    return dict(marker.kwargs) if marker is not None else {}


class ThreadedVM:
    """A :class:`SimulatedVM` started on an event loop of its own thread."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="qmpevents-vm",
                                        daemon=True)
        self._thread.start()
        self.vm: SimulatedVM = self._run(self._start(options))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    @staticmethod
    async def _start(options: dict[str, Any]) -> SimulatedVM:
        vm = SimulatedVM(**options)
        await vm.start()
        return vm

    @property
    def socket_path(self) -> str:
        return self.vm.socket_path

    def close(self) -> None:
        try:
            self._run(self.vm.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)
            self.loop.close()


@pytest.fixture
def simulated_vm_thread(request: pytest.FixtureRequest) -> Iterator[SimulatedVM]:
    """A started :class:`SimulatedVM` (``.socket_path``) on its own thread, for sync tests."""
    threaded = ThreadedVM(_options(request))
    try:
        yield threaded.vm
    finally:
        threaded.close()


def _simulated_vm_fixture() -> Any:
    """The async fixture with pytest-asyncio; without it, one that says what it needs."""
    try:
        import pytest_asyncio
    except ImportError:
        def needs_pytest_asyncio() -> None:
            pytest.fail("the simulated_vm fixture is async and needs pytest-asyncio "
                        "(pip install pytest-asyncio); sync tests use simulated_vm_thread")
        return pytest.fixture(name="simulated_vm")(needs_pytest_asyncio)

    async def simulated_vm(request: pytest.FixtureRequest) -> AsyncIterator[SimulatedVM]:
        """A started :class:`SimulatedVM` on a private Unix socket (``.socket_path``)."""
        function = getattr(request.node, "function", None)
        # Hypothesis wraps an async test in a sync one: its inner test says.
        function = getattr(getattr(function, "hypothesis", None), "inner_test", function)
        if function is not None and not inspect.iscoroutinefunction(function):
            # Its loop does not run during a sync test: a client would see a busy monitor.
            pytest.fail(f"{request.node.name} is a sync test: the simulated_vm fixture runs "
                        "on the test's event loop; use simulated_vm_thread", pytrace=False)
        async with SimulatedVM(**_options(request)) as vm:
            yield vm
    return pytest_asyncio.fixture(name="simulated_vm")(simulated_vm)


simulated_vm = _simulated_vm_fixture()
