"""Work written as steps (a generator that pauses with ``yield``), run in one go.

The codec writes long work -- a huge string's conversion, an error text
that holds a huge token -- as generators, so that a server can spread it
over its loop's iterations; a caller with no loop to yield to runs them
here.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

T = TypeVar("T")


def run_to_end(steps: Generator[None, None, T]) -> T:
    """Every step of *steps*, without pausing; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
