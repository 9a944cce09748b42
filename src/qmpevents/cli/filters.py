"""``--event`` and ``--match`` as the client's :class:`~qmpevents.client.EventFilter`.

The command line only parses: names are upper-cased globs, ``--match
KEY=VALUE`` becomes an entry of the filter's *match* mapping (``data.`` prefix
optional, dotted paths into nested members).  VALUE is JSON when it parses
(``offset=78``, ``guest=false``) and a string otherwise (``action=stop``); a
JSON-looking VALUE also matches the same text as a string, so ``device=123``
finds a drive whose id is ``"123"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from qmpevents.catalog import EVENT_TYPES
from qmpevents.client import RECONNECTED, EventFilter
from qmpevents.client.filters import match_path
from qmpevents.errors import FilterError as FilterError  # re-exported for the commands

_GLOB = frozenset("*?[")


def unknown_names(names: Sequence[str | None]) -> list[str]:
    """The names (upper-cased) that are no glob and no event QEMU 7.2 defines: a
    typo waits silently for ever, so the commands say so (a newer QEMU's event
    is still waited for)."""
    return [name.upper() for name in names if name and not _GLOB & set(name)
            and name.upper() not in EVENT_TYPES and name.upper() != RECONNECTED]


def unknown_note(names: Sequence[str | None]) -> str | None:
    """The note for :func:`unknown_names`, or None if every name is known."""
    unknown = unknown_names(names)
    if not unknown:
        return None
    return (f"{', '.join(unknown)}: no event QEMU 7.2 defines (a typo?); "
            "waiting for it anyway")


class Loose:
    """A match value equal to its JSON value and to its text as written.

    The client's filter compares ``field == value``; Python falls back to this
    class's ``__eq__`` for str, int, bool and None fields, which is the whole
    string-comparison fallback.
    """

    __slots__ = ("text", "value")

    def __init__(self, value: Any, text: str) -> None:
        self.value = value
        self.text = text

    def __eq__(self, other: object) -> bool:
        return bool(other == self.value) or (isinstance(other, str) and other == self.text)

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return self.text


def parse_match(spec: str) -> tuple[str, Any]:
    """``action=stop`` -> ("data.action", "stop"); ``data.offset=78`` -> ("data.offset", 78~"78").

    The key is the client's match syntax (:func:`~qmpevents.client.filters.match_path`)."""
    key, sep, raw = spec.partition("=")
    if not sep or not key:
        raise FilterError(f"bad --match {spec!r}: expected KEY=VALUE")
    key = "data." + ".".join(match_path(key))
    try:
        value: Any = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return key, raw
    return key, value if isinstance(value, str) else Loose(value, raw)


def build_filter(names: Sequence[str], matches: Sequence[str]) -> EventFilter:
    """The client's filter for ``--event NAME...`` and ``--match KEY=VALUE...``."""
    match: dict[str, Any] = {}
    for spec in matches:
        key, value = parse_match(spec)
        if key in match:
            raise FilterError(f"--match {key} given twice")
        match[key] = value
    return EventFilter([name.upper() for name in names], match)
