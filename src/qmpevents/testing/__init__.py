"""A testing kit for code that speaks QMP, and for ours.

* :class:`MemoryQMP` -- the sans-IO client and server joined in memory (no sockets).
"""

from qmpevents.testing.memory import MemoryQMP, unknown_command

__all__ = ["MemoryQMP", "unknown_command"]
