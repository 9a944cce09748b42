"""THE list of deliberate differences between the simulator and QEMU 7.2.

Each entry names a scenario (or ``"*"``), says what differs and why, and gives
regular expressions for the (masked) lines it allows: ``qemu`` for lines QEMU
sends that the simulator does not (or sends differently), ``sim`` for the
simulator's side.  The comparison (:mod:`.compare`) accepts a differing line only
if an entry of its scenario matches it; anything else is a mismatch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Difference:
    scenario: str  # a scenario name, or "*" for all
    what: str
    reason: str
    qemu: str | None = None  # regex for QEMU lines allowed to differ / be missing in the sim
    sim: str | None = None  # regex for simulator lines allowed to differ / be missing in QEMU

    def allows(self, scenario: str, who: str, line: bytes) -> bool:
        if self.scenario not in ("*", scenario):
            return False
        pattern = self.qemu if who == "qemu" else self.sim
        return pattern is not None and re.search(pattern.encode(), line) is not None


DIFFERENCES: tuple[Difference, ...] = ()
