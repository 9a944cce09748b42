"""Which events a subscriber wants: names (globs allowed), data fields, a predicate.

Filters run on the reader's path, once per delivered batch, so the common
cases stay cheap: no filter at all passes the batch through untouched, and a
name test is one dictionary lookup per event (glob results are cached).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any, Final

import msgspec

from qmpevents.catalog import EVENT_TYPES, Event, UnknownEvent

QMPEvent = Event | UnknownEvent
"""What subscribers receive: a typed catalog event, or an event the catalog does not know."""

Predicate = Callable[[QMPEvent], bool]

_NAME_OF_TYPE: Final[dict[type, str]] = {cls: name for name, cls in EVENT_TYPES.items()}
_GLOB_CHARS: Final = frozenset("*?[")
_CACHE_LIMIT: Final = 1024
_MISSING: Final = object()


def event_name(event: QMPEvent) -> str:
    """The event's name, without the property call for catalog classes."""
    return _NAME_OF_TYPE.get(type(event)) or event.name


class EventFilter:
    """Selects events by name, by data fields and by a predicate; all must hold.

    *names* are exact event names or shell globs (``VNC_*``); none means every
    event.  *match* maps data fields to required values; a key may be a JSON
    member name (``node-name``), its attribute spelling (``node_name``) or a
    dotted path into nested members (``server.host``).  A missing field never
    matches.
    """

    def __init__(self, names: Iterable[str] = (), match: Mapping[str, Any] | None = None,
                 predicate: Predicate | None = None) -> None:
        names = tuple(names)
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"event names are strings, not {type(name).__name__}")
        self.names = names
        self._exact = frozenset(n for n in names if not _GLOB_CHARS.intersection(n))
        self._globs = tuple(n for n in names if _GLOB_CHARS.intersection(n))
        self._match = [(tuple(key.split(".")), value) for key, value in (match or {}).items()]
        self._predicate = predicate
        self._cache: dict[str, bool] = {}
        self.passes_all = not names and not self._match and predicate is None

    def wants_name(self, name: str) -> bool:
        """Whether *name* passes the name part of the filter."""
        if not self.names or name in self._exact:
            return True
        if not self._globs:
            return False
        known = self._cache.get(name)
        if known is None:
            known = any(fnmatchcase(name, glob) for glob in self._globs)
            if len(self._cache) < _CACHE_LIMIT:
                self._cache[name] = known
        return known

    def __call__(self, event: QMPEvent) -> bool:
        if self.names and not self.wants_name(event_name(event)):
            return False
        if self._match and not self._data_matches(event):
            return False
        return self._predicate is None or bool(self._predicate(event))

    def select(self, events: list[QMPEvent]) -> list[QMPEvent]:
        """The events of a batch that pass, in order (the batch itself if all must)."""
        if self.passes_all:
            return events
        return [event for event in events if self(event)]

    def _data_matches(self, event: QMPEvent) -> bool:
        data = event.data
        if data is None:
            return False
        if isinstance(data, msgspec.Struct):
            data = msgspec.to_builtins(data)
        return all(_lookup(data, path) == value for path, value in self._match)


def _lookup(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(data, Mapping):
            return _MISSING
        value = data.get(part, _MISSING)
        if value is _MISSING and "_" in part:
            value = data.get(part.replace("_", "-"), _MISSING)
        data = value
        if data is _MISSING:
            break
    return data
