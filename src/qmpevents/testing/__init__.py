"""Test doubles for software that speaks QMP, the ones qmpevents' own tests use.

* :class:`RawQMP` -- a raw-bytes QMP client, for testing a QMP server (real
  QEMU included): bytes out as given, lines in as received, every read with a
  deadline;
* :class:`FakeQMP` -- a small QMP server with QEMU's protocol and commands
  that drive a client into events, hangs, hang-ups and oversized replies;
* :class:`MemoryQMP` -- the sans-IO client and server joined in memory: QMP
  with no socket and no event loop, any split of the bytes;
* :class:`ManualClock` -- a clock that moves only when told, for the
  simulator's timers (``SimulatedVM(clock=...)``) instead of sleeping.

Each name is imported on first use, so importing this package loads only
what a test takes from it (the sans-IO parts need no asyncio).  Nothing in
qmpevents outside this package imports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qmpevents.sim.clock import ManualClock
    from qmpevents.testing.fake import FakeQMP
    from qmpevents.testing.memory import MemoryQMP
    from qmpevents.testing.raw import ProbeTimeoutError, RawQMP

_WHERE = {
    "FakeQMP": "qmpevents.testing.fake",
    "ManualClock": "qmpevents.sim.clock",
    "MemoryQMP": "qmpevents.testing.memory",
    "ProbeTimeoutError": "qmpevents.testing.raw",
    "RawQMP": "qmpevents.testing.raw",
}

__all__ = ["FakeQMP", "ManualClock", "MemoryQMP", "ProbeTimeoutError", "RawQMP"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
