"""One memory budget for the unfinished input of many framers (a server's monitors).

QEMU's size limit (64 MiB per message) bounds one monitor; it does not stop
many monitors from each holding a nearly complete message.  Framers that
share a :class:`HeldInputBudget` charge it with what they hold for unfinished
messages; a framer whose growth takes the total over the limit refuses its
own message with QEMU's size-limit error, and the others are unaffected.
"""

from __future__ import annotations

DEFAULT_MAX_HELD_INPUT = 256 * 1024 * 1024
"""Bytes of unfinished input a server holds in all, by default."""


class HeldInputBudget:
    """Bytes of unfinished messages that every framer sharing it may hold together."""

    __slots__ = ("held", "limit", "peak", "refused")

    def __init__(self, limit: int = DEFAULT_MAX_HELD_INPUT) -> None:
        if limit <= 0:
            raise ValueError("the held-input budget must be positive")
        self.limit = limit
        self.held = 0
        self.peak = 0
        self.refused = 0  # messages refused because the total was over the limit

    def charge(self, delta: int) -> bool:
        """Add *delta* bytes (negative: released); False if growth went over the limit."""
        self.held += delta
        if self.held > self.peak:
            self.peak = self.held
        return delta <= 0 or self.held <= self.limit
