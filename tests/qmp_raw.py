"""Reading the lines of :class:`qmpevents.testing.RawQMP` in the server tests."""

from __future__ import annotations

import json
from typing import Any


def names(lines: list[bytes]) -> list[str]:
    """The event names of event lines, in order."""
    return [json.loads(line)["event"] for line in lines]


def reply(line: bytes) -> Any:
    """One line's value."""
    return json.loads(line)
