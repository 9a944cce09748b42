"""The simulated virtual machine: QEMU's run states, drives, RTC, guest and VNC.

* :class:`SimulatedVM` -- the machine served over QMP (and VNC), in-process;
* :class:`Machine` -- the model itself, usable without any socket;
* :class:`ManualClock` -- a clock tests advance instead of sleeping.

The VNC listener (``qmpevents.sim.vnc``) needs the optional ``pycryptodome`` (the
``vnc`` extra) for VNC Authentication only, when a password is set.
"""

from qmpevents.sim.block import DriveConfig, ErrorPolicy, parse_drive
from qmpevents.sim.clock import Clock, LoopClock, ManualClock
from qmpevents.sim.machine import Machine
from qmpevents.sim.runstate import RunState
from qmpevents.sim.vm import SimulatedVM, parse_vnc

__all__ = [
    "Clock",
    "DriveConfig",
    "ErrorPolicy",
    "LoopClock",
    "Machine",
    "ManualClock",
    "RunState",
    "SimulatedVM",
    "parse_drive",
    "parse_vnc",
]
