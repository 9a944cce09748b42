"""What keeps a hostile VNC peer from hurting the simulated VM: guess back-off, fds, logs.

QEMU bounds VNC clients with ``-vnc ...,connections=N`` only; the simulator adds
three bounds of its own, each small enough to state in SECURITY.md:

* :class:`AuthBackoff`: password guesses are checked at most every
  ``global_interval`` seconds whoever sends them, and a peer address whose last
  guesses failed waits longer and longer (doubling up to ``max_delay``) before its
  next one is checked.  Checks, not failures, are spaced, so the answer's timing
  tells an attacker nothing before the check.
* :func:`fds_left`: the listener stops accepting while fewer than a reserve of file
  descriptors is free, so that QMP (the management channel) can still accept.
* :class:`RateLimitedLog`: an error that repeats (accept() failing for want of
  descriptors) is logged at most once per interval, with the count of the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["AuthBackoff", "RateLimitedLog", "fds_left"]

Clock = Callable[[], float]


@dataclass
class _Address:
    failures: int = 0
    next_check: float = 0.0  # monotonic time before which no guess of this address is checked


class AuthBackoff:
    """Spaces out VNC Authentication checks, globally and per peer address.

    ``await admit(host)`` before checking a response, then ``failed(host)`` or
    ``succeeded(host)``.  At most ``max_addresses`` addresses are remembered (the
    longest quiet are forgotten first), and an address is forgotten ``forget_after``
    seconds after its wait has passed: memory stays bounded whoever connects.
    """

    def __init__(self, *, global_interval: float = 0.25, first_delay: float = 0.5,
                 max_delay: float = 8.0, max_addresses: int = 1024,
                 forget_after: float = 60.0, clock: Clock = time.monotonic) -> None:
        self.global_interval = global_interval
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._max_addresses = max_addresses
        self._forget_after = forget_after
        self._clock = clock
        self._next_global = 0.0
        self._addresses: OrderedDict[str, _Address] = OrderedDict()

    def wait_for(self, host: str) -> float:
        """Seconds before a guess from *host* may be checked (0 if it may now)."""
        address = self._addresses.get(host)
        ready = max(self._next_global, address.next_check if address else 0.0)
        return max(0.0, ready - self._clock())

    async def admit(self, host: str, gone: Callable[[], bool] = lambda: False) -> bool:
        """Wait until a guess from *host* may be checked, and take the global slot.

        False, without taking the slot, if *gone()* tells that the peer left while it
        waited: a closed connection's guess must not delay the live ones.
        """
        while (delay := self.wait_for(host)) > 0:
            await asyncio.sleep(delay)  # the back-off itself, re-checked after waking
        if gone():
            return False
        self._next_global = self._clock() + self.global_interval
        return True

    def failed(self, host: str) -> None:
        """A guess from *host* was wrong: its next one waits twice as long as this one."""
        now = self._clock()
        self._forget_quiet(now)
        address = self._addresses.pop(host, None) or _Address()
        address.failures += 1
        delay = min(self.first_delay * 2 ** (address.failures - 1), self.max_delay)
        address.next_check = now + delay
        self._addresses[host] = address  # most recent last
        while len(self._addresses) > self._max_addresses:
            self._addresses.popitem(last=False)

    def succeeded(self, host: str) -> None:
        """The right password: *host* starts afresh."""
        self._addresses.pop(host, None)

    def _forget_quiet(self, now: float) -> None:
        while self._addresses:
            host, oldest = next(iter(self._addresses.items()))
            if now - oldest.next_check < self._forget_after:
                break
            del self._addresses[host]


def fds_left() -> int | None:
    """File descriptors this process may still open (None when it cannot be told).

    Counted from ``/proc/self/fd`` against the soft RLIMIT_NOFILE: exact whoever
    opened them (QMP monitors, log files), at a cost of microseconds per call.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        used = len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor
    except OSError:
        return None
    return soft - used


class RateLimitedLog:
    """One WARNING per ``interval`` seconds at most for a repeating error, with a count."""

    def __init__(self, logger: logging.Logger, interval: float = 1.0,
                 clock: Clock = time.monotonic) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def warning(self, message: str) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" (and {self._suppressed} more since the last report)"
        self._logger.warning("%s", message)
        self._last = now
        self._suppressed = 0
