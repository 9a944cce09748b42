"""QEMU 7.2's QAPI schema as ``query-qmp-schema`` introspects it, and the shipped capture.

``src/qmpevents/data/qemu-7.2.json.gz`` is written by
``tools/capture_qemu_schema.py`` from the installed QEMU (a test checks it is
still what that QEMU answers).  It holds ``query-qmp-schema`` and
``query-commands`` verbatim, ``query-version``, and the replies of QEMU's
argument-less ``query-*`` commands on the machine the simulator models.

:class:`QapiSchema` indexes the introspection entries (``SchemaInfo``): type
names other than the built-ins are QEMU's opaque numbers, commands and events
keep their names.  Both the catalog (typed events) and the simulator
(argument checks, answers) read the schema through it, so there is one source.
"""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

CAPTURE_FILE: Final = "qemu-7.2.json.gz"

SchemaInfo = Mapping[str, Any]

#: The QAPI names of the shipped schema's alternates, which introspection hides
#: behind numbers but QEMU's type errors print (``expected: BlockdevRef``); each
#: is recognised by its branches (a test checks every alternate is named).
ALTERNATE_NAMES_BY_BRANCHES: Final[dict[tuple[str, ...], str]] = {
    ("str", "object"): "BlockDirtyBitmapOrStr",
    ("str", "null"): "StrOrNull",
    ("object", "str"): "BlockdevRef",
    ("object", "str", "null"): "BlockdevRefOrNull",
    ("object", "enum"): "Qcow2OverlapChecks",
    ("int", "bool", "array"): "StatsValue",
}


@functools.cache
def load_capture() -> Mapping[str, Any]:
    """The shipped capture of QEMU 7.2 (decoded once, shared: do not mutate)."""
    blob = resources.files("qmpevents").joinpath("data", CAPTURE_FILE).read_bytes()
    data: dict[str, Any] = json.loads(gzip.decompress(blob))
    return data


@dataclass(frozen=True, slots=True)
class Member:
    """One member of an object type: its JSON name, type name and optionality."""

    name: str
    type: str
    optional: bool


class QapiSchema:
    """Lookups into a list of ``SchemaInfo`` entries."""

    def __init__(self, entries: Iterable[SchemaInfo]) -> None:
        self.entries: list[SchemaInfo] = list(entries)
        self._by_name = {entry["name"]: entry for entry in self.entries}

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> SchemaInfo:
        return self._by_name[name]

    def of_meta(self, meta_type: str) -> Iterator[SchemaInfo]:
        """Entries of one meta-type (``command``, ``event``, ``object``...), in schema order."""
        return (entry for entry in self.entries if entry["meta-type"] == meta_type)

    def command_names(self) -> list[str]:
        return [entry["name"] for entry in self.of_meta("command")]

    def event_names(self) -> list[str]:
        return [entry["name"] for entry in self.of_meta("event")]

    def members(self, type_name: str) -> list[Member]:
        """An object type's own members (not its variants'), in schema order."""
        entry = self[type_name]
        return [Member(m["name"], m["type"], "default" in m) for m in entry.get("members", ())]

    def variants(self, type_name: str) -> tuple[str, dict[str, str]] | None:
        """A union object's tag member and its ``case -> variant type`` table, or None."""
        entry = self[type_name]
        if "variants" not in entry:
            return None
        return entry["tag"], {v["case"]: v["type"] for v in entry["variants"]}

    def event_data_type(self, event: str) -> str | None:
        """The object type of an event's ``data``; None when the event carries no data."""
        arg_type = self[event].get("arg-type")
        if arg_type is None or (not self[arg_type].get("members")
                                and "variants" not in self[arg_type]):
            return None
        return str(arg_type)

    def alternate_names(self) -> dict[str, str]:
        """Opaque alternate type name -> its QAPI name (see :data:`ALTERNATE_NAMES_BY_BRANCHES`)."""
        names = {}
        for entry in self.of_meta("alternate"):
            branches = tuple(m["type"] if m["type"] not in self
                             or self[m["type"]]["meta-type"] == "builtin"
                             else self[m["type"]]["meta-type"] for m in entry["members"])
            if branches in ALTERNATE_NAMES_BY_BRANCHES:
                names[entry["name"]] = ALTERNATE_NAMES_BY_BRANCHES[branches]
        return names

    def next_type_name(self) -> int:
        """A number not used by any opaque type name (to add types of our own)."""
        return 1 + max(int(e["name"]) for e in self.entries if e["name"].isdigit())


@functools.cache
def qemu72_schema() -> QapiSchema:
    """QEMU 7.2's schema, from the shipped capture."""
    return QapiSchema(load_capture()["query-qmp-schema"])
