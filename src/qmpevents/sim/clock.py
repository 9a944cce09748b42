"""Time for the simulator: wall-clock stamps and timers, injectable.

Event timestamps need the host's wall clock; throttling and the simulated
guest's delays need timers.  Both go through a :class:`Clock` so tests can use
a :class:`ManualClock` and advance time instead of sleeping.  The classes live
in :mod:`qmpevents.clock`, shared with the client.
"""

from qmpevents.clock import Clock, LoopClock, ManualClock, Timer

__all__ = ["Clock", "LoopClock", "ManualClock", "Timer"]
