"""Which events a subscriber wants: names or classes, data fields, a predicate.

Filters run on the reader's path, once per delivered batch, so the common
cases stay cheap: no filter at all passes the batch through untouched, and a
name test is one dictionary lookup per event (glob results are cached).

``match`` has one syntax, shared with the CLI's ``--match KEY=VALUE``: a key
is a path into the event's ``data`` (``data.action``, ``data.server.host``;
the ``data.`` prefix may be left out), each part a JSON member name
(``node-name``) or its attribute spelling (``node_name``).  A key that no
event the filter can select has is an error (:class:`FilterError`), never a
filter that silently matches nothing.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any, Final, TypeVar, Union, get_args, get_origin

import msgspec

from qmpevents.catalog import EVENT_TYPES, Event, UnknownEvent, plain
from qmpevents.errors import FilterError

QMPEvent = Event | UnknownEvent
"""What subscribers receive: a typed catalog event, or an event the catalog does not know."""

E = TypeVar("E", bound=QMPEvent)
"""The type of event a typed subscription yields (``listen(BlockIoError)``: BlockIoError)."""
E2 = TypeVar("E2", bound=QMPEvent)
"""The second event class of a typed subscription (``listen(Stop, Resume)``)."""

Predicate = Callable[[QMPEvent], bool]
EventSpec = str | type[Event] | type[UnknownEvent]
"""An event name or glob (``"STOP"``, ``"VNC_*"``) or an event class (``Stop``)."""

_NAME_OF_TYPE: Final[dict[type, str]] = {cls: name for name, cls in EVENT_TYPES.items()}
_GLOB_CHARS: Final = frozenset("*?[")
_CACHE_LIMIT: Final = 1024
_MISSING: Final = object()
RECONNECTED: Final = "QMPEVENTS_RECONNECTED"
"""Name of the marker event delivered to subscribers after a reconnect."""


def event_name(event: QMPEvent) -> str:
    """The event's name, without the property call for catalog classes."""
    return _NAME_OF_TYPE.get(type(event)) or event.name


def _spec_name(spec: EventSpec) -> str:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, type):
        name = _NAME_OF_TYPE.get(spec)
        if name is not None:
            return name
        if issubclass(spec, UnknownEvent) and spec is not UnknownEvent:
            return RECONNECTED  # ConnectionResumed: the reconnect marker
    raise TypeError(f"events are named by a string or a catalog event class, not {spec!r}")


def match_path(key: str) -> tuple[str, ...]:
    """``"data.server.host"`` (or ``"server.host"``) -> ``("server", "host")``."""
    if not isinstance(key, str):
        raise FilterError(f"match keys are strings, not {type(key).__name__}")
    path = key.split(".")
    if path[0] == "data":
        path = path[1:]
    if not path or not all(path):
        raise FilterError(f"match key {key!r}: empty path; use data.MEMBER[.MEMBER...]")
    return tuple(path)


class EventFilter:
    """Selects events by name, by data fields and by a predicate; all must hold.

    *names* are exact event names, shell globs (``VNC_*``) or catalog event
    classes; none means every event.  *match* maps data paths (see the module
    docstring) to required values.  A missing field never matches.
    :attr:`classes_only` is true when every name was a class: such a
    subscription is typed and gets the reconnect marker only if it lists
    :class:`~qmpevents.client.ConnectionResumed`.
    """

    def __init__(self, names: Iterable[EventSpec] = (), match: Mapping[str, Any] | None = None,
                 predicate: Predicate | None = None) -> None:
        specs = tuple(names)
        resolved = tuple(_spec_name(spec) for spec in specs)
        self.classes_only = bool(specs) and not any(isinstance(s, str) for s in specs)
        self.wants_marker = not self.classes_only or RECONNECTED in resolved
        self.names = resolved
        self._exact = frozenset(n for n in resolved if not _GLOB_CHARS.intersection(n))
        self._globs = tuple(n for n in resolved if _GLOB_CHARS.intersection(n))
        self._match = [(match_path(key), value) for key, value in (match or {}).items()]
        self._predicate = predicate
        self._cache: dict[str, bool] = {}
        self._check_match_keys()
        self.passes_all = not resolved and not self._match and predicate is None

    def _check_match_keys(self) -> None:
        """Every match key must exist in at least one catalog event this filter selects."""
        if not self._match:
            return
        if any(name not in EVENT_TYPES and name != RECONNECTED for name in self._exact):
            return  # an event the catalog does not know: its data cannot be checked
        candidates = [name for name in EVENT_TYPES if not self.names or self.wants_name(name)]
        if not candidates:
            return  # globs matching no catalog event: nothing to check against
        for path, _value in self._match:
            if not any(_has_path(EVENT_TYPES[name], path) for name in candidates):
                listed = ", ".join(candidates) if self.names else "any catalog event"
                raise FilterError(f"match key data.{'.'.join(path)}: no member of that name "
                                  f"in {listed}")

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
            data = plain(data)  # not to_builtins: it recurses into deep plain members
        return all(_lookup(data, path) == value for path, value in self._match)


def _struct_in(tp: Any) -> type[msgspec.Struct] | None:
    """The Struct type in *tp* (``X | None`` -> X), or None if it holds none."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    if get_origin(tp) in (Union, types.UnionType):
        for arg in get_args(tp):
            found = _struct_in(arg)
            if found is not None:
                return found
    return None


def _has_path(event_class: type[Event], path: tuple[str, ...]) -> bool:
    data_type: Any = next(info.type for info in msgspec.structs.fields(event_class)
                          if info.name == "data")
    for part in path:
        struct = _struct_in(data_type)
        if struct is None:
            return False
        members = {name: info.type for info in msgspec.structs.fields(struct)
                   for name in (info.name, info.encode_name)}
        if part not in members and part.replace("_", "-") not in members:
            return False
        data_type = members.get(part, members.get(part.replace("_", "-")))
    return True


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
