"""QEMU's run states, the subset a simulated guest reaches, and what each allows.

The names are QEMU's ``RunState`` values as ``query-status`` reports them.
Only the table lives here; the :class:`~qmpevents.sim.machine.Machine` applies
it and emits the events.
"""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    """``query-status``'s ``status``."""

    RUNNING = "running"
    PAUSED = "paused"        # stop
    PRELAUNCH = "prelaunch"  # -S, and system_reset of a VM that was not running
    IO_ERROR = "io-error"    # a disk error with action stop
    SHUTDOWN = "shutdown"    # guest shut down under -no-shutdown

    @property
    def running(self) -> bool:
        return self is RunState.RUNNING

    @property
    def needs_reset(self) -> bool:
        """QEMU's ``runstate_needs_reset``: ``cont`` is refused until a system_reset."""
        return self is RunState.SHUTDOWN
