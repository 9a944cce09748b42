"""Real QMP clients run the same script against real QEMU 7.2 and the simulator.

For each client of :mod:`interop_clients` (go-qemu, Ganeti's QmpConnection,
PyPI qmp, npm qemu-qmp, qmp-shell and qmp-shell -H): start a fresh paused
QEMU, run the script, start a fresh ``qmpevents serve --profile qemu-7.2``,
run it again, and require the two transcripts to be equal once timestamps
and thread ids are masked and the simulator's ``x-sim-*`` controls are left
out.  The figure "real clients identical on both servers" is reported.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from interop_clients import CLIENTS, run_client
from interop_support import Target, mask, serve, without_sim_controls
from qemu_support import requires_qemu

pytestmark = [pytest.mark.qemu, requires_qemu]


def _normalised(lines: list[str]) -> list[str]:
    return [without_sim_controls(mask(line)) for line in lines]


@pytest.mark.parametrize("client", list(CLIENTS))
async def test_client_sees_the_same_on_both_servers(
        client: str, figures: Callable[[str, object], None]) -> None:
    argv, env, stdin = CLIENTS[client]()
    seen: dict[Target, list[str]] = {}
    for target in ("qemu", "sim"):
        async with serve(target) as path:
            seen[target] = _normalised(await run_client(argv, env, stdin, path))
    assert seen["qemu"], "the client printed nothing against QEMU"
    same = seen["sim"] == seen["qemu"]
    figures(f"interop: {client} transcript identical on QEMU 7.2 and the simulator",
            "yes" if same else "NO")
    assert seen["sim"] == seen["qemu"]
