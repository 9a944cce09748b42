"""pytest plugin (entry point ``qmpevents``): a running simulated VM as a fixture.

::

    async def test_stop(simulated_vm):
        async with qmpevents.connect(simulated_vm.socket_path) as qmp:
            async with qmp.expect("STOP"):
                await qmp.execute("stop")

    @pytest.mark.simulated_vm(profile="qemu-7.2", drives=["disk0,werror=stop"])
    async def test_disk(simulated_vm): ...

The marker's keyword arguments are passed to :class:`~qmpevents.sim.SimulatedVM`.
The fixture is async, so tests using it need pytest-asyncio (``asyncio_mode =
auto`` or ``@pytest.mark.asyncio``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from qmpevents.sim.vm import SimulatedVM


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "simulated_vm(**options): options of the simulated_vm fixture's SimulatedVM")


@pytest_asyncio.fixture
async def simulated_vm(request: pytest.FixtureRequest) -> AsyncIterator[SimulatedVM]:
    """A started :class:`SimulatedVM` on a private Unix socket (``.socket_path``)."""
    marker = request.node.get_closest_marker("simulated_vm")
    options = dict(marker.kwargs) if marker is not None else {}
    async with SimulatedVM(**options) as vm:
        yield vm
