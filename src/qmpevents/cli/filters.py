"""Which events the user asked to see: names (globs) and data matches."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import msgspec

from qmpevents.catalog import Event, UnknownEvent
from qmpevents.cli.render import data_dict


class FilterError(ValueError):
    """A filter the user wrote wrongly (a usage error)."""


def parse_match(spec: str) -> tuple[list[str], Any]:
    """``data.action=stop`` -> (["action"], "stop"); values are JSON when they parse."""
    key, sep, raw = spec.partition("=")
    if not sep or not key:
        raise FilterError(f"bad --match {spec!r}: expected KEY=VALUE")
    path = key.split(".")
    if path[0] == "data":
        path = path[1:]
    if not path or not all(path):
        raise FilterError(f"bad --match {spec!r}: empty key")
    try:
        value: Any = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        value = raw
    return path, value


class EventFilter:
    """All conditions must hold: name matches one glob, every match holds."""

    def __init__(self, names: Sequence[str], matches: Sequence[str]) -> None:
        self._names = [name.upper() for name in names]
        self._matches = [parse_match(spec) for spec in matches]

    def __call__(self, event: Event | UnknownEvent) -> bool:
        if self._names and not any(fnmatch.fnmatchcase(event.name, pattern)
                                   for pattern in self._names):
            return False
        if not self._matches:
            return True
        data = data_dict(event)
        for path, expected in self._matches:
            value: Any = data
            for part in path:
                value = value.get(part) if isinstance(value, dict) else None
            if value != expected and str(value) != str(expected):
                return False
        return True
