"""QAPI-style checking of a command's ``arguments``, with QEMU's error texts.

QEMU's QObject input visitor walks a command's argument struct member by
member, in schema order, and stops at the first problem; members it did not
visit are reported afterwards as unexpected.  :func:`check_arguments` does the
same so a client sees exactly the error real QEMU would give it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from qmpevents.protocol import CommandFailure
from qmpevents.protocol.unexpected import first_unexpected

ArgType = Literal["string", "integer", "boolean", "number", "object", "array"]

_INT64 = range(-(1 << 63), 1 << 63)


@dataclass(frozen=True, slots=True)
class Param:
    """One member of an argument struct: its type, whether it is optional, its enum."""

    type: ArgType
    optional: bool = False
    enum: tuple[str, ...] | None = None


Schema = Mapping[str, Param]


def _fits(value: Any, kind: ArgType) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":  # a JSON integer beyond int64 arrives as a double: not an integer
        return isinstance(value, int) and not isinstance(value, bool) and value in _INT64
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    return isinstance(value, list)


def check_arguments(schema: Schema, arguments: Mapping[str, Any]) -> None:
    """Raise ``CommandFailure("GenericError", ...)`` as QEMU would for bad *arguments*."""
    for name, param in schema.items():
        if name not in arguments:
            if param.optional:
                continue
            raise CommandFailure("GenericError", f"Parameter '{name}' is missing")
        value = arguments[name]
        if not _fits(value, param.type):
            raise CommandFailure("GenericError",
                                 f"Invalid parameter type for '{name}', expected: {param.type}")
        if param.enum is not None and value not in param.enum:
            raise CommandFailure("GenericError",
                                 f"Parameter '{name}' does not accept value '{value}'")
    unexpected = first_unexpected(list(arguments), [key for key in schema if key in arguments])
    if unexpected is not None:
        raise CommandFailure("GenericError", f"Parameter '{unexpected}' is unexpected")


# --- checking against QEMU's introspected schema ---------------------------------

_JSON_KIND = {"str": "string", "int": "integer", "number": "number", "bool": "boolean",
              "null": "null"}


def _json_kind(value: Any) -> str:
    """The QAPI JSON kind of a decoded value (QEMU's QType, as its errors name it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer" if value in _INT64 else "number"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict) else "array"


class SchemaChecker:
    """QEMU 7.2's QObject input visitor over an introspected schema (``SchemaInfo`` list).

    What real QEMU 7.2 answers, member by member in schema order: a missing
    member and a wrong type name the member by its full path (``file.x``,
    ``capabilities[0].state``); a bad enum value names only the member itself
    (``null`` for a list element), as ``visit_type_enum`` does; members left
    over are reported, in QDict order, when their object is done; an alternate
    that no branch fits is reported with the alternate's QAPI type name.
    """

    def __init__(self, types: Mapping[str, Mapping[str, Any]],
                 alternate_names: Mapping[str, str]) -> None:
        self._types = types
        self._alternate_names = alternate_names

    def check(self, type_name: str, value: Any) -> None:
        """Raise ``CommandFailure("GenericError", ...)`` as QEMU would for *value*."""
        self._visit(type_name, value, "", None)

    def _visit(self, type_name: str, value: Any, path: str, name: str | None) -> None:
        if type_name == "any":
            return
        entry = self._types.get(type_name)
        meta = "builtin" if entry is None or entry["meta-type"] == "builtin" else entry["meta-type"]
        if meta == "builtin":
            self._expect(value, _JSON_KIND[type_name], path)
        elif meta == "enum":
            assert entry is not None
            self._expect(value, "string", path)
            if value not in entry["values"]:
                raise CommandFailure("GenericError", f"Parameter '{name or 'null'}' does not"
                                                     f" accept value '{value}'")
        elif meta == "array":
            assert entry is not None
            self._expect(value, "array", path)
            for index, element in enumerate(value):
                self._visit(entry["element-type"], element, f"{path}[{index}]", None)
        elif meta == "alternate":
            assert entry is not None
            self._visit_alternate(entry, value, path, name)
        else:
            assert entry is not None
            self._expect(value, "object", path)
            self._visit_object(entry, value, path)

    def _expect(self, value: Any, kind: str, path: str) -> None:
        actual = _json_kind(value)
        if actual != kind and not (kind == "number" and actual == "integer"):
            raise CommandFailure("GenericError", f"Invalid parameter type for"
                                                 f" '{path or 'null'}', expected: {kind}")

    def _members(self, entry: Mapping[str, Any], value: Mapping[str, Any]) -> list[Any]:
        members = list(entry.get("members", ()))
        tag = entry.get("tag")
        if tag is not None and tag in value:
            for variant in entry.get("variants", ()):
                if variant["case"] == value[tag]:
                    members += self._types[variant["type"]].get("members", ())
        return members

    def _visit_object(self, entry: Mapping[str, Any], value: Mapping[str, Any],
                      path: str) -> None:
        prefix = f"{path}." if path else ""
        visited: list[str] = []
        for member in self._members(entry, value):
            key = member["name"]
            if key not in value:
                if "default" in member:
                    continue
                raise CommandFailure("GenericError", f"Parameter '{prefix}{key}' is missing")
            visited.append(key)
            self._visit(member["type"], value[key], prefix + key, key)
        unexpected = first_unexpected(list(value), visited)
        if unexpected is not None:
            raise CommandFailure("GenericError",
                                 f"Parameter '{prefix}{unexpected}' is unexpected")

    def _visit_alternate(self, entry: Mapping[str, Any], value: Any, path: str,
                         name: str | None) -> None:
        kind = _json_kind(value)
        for member in entry["members"]:
            branch = self._types.get(member["type"])
            meta = ("builtin" if branch is None or branch["meta-type"] == "builtin"
                    else branch["meta-type"])
            branch_kind = {"enum": "string", "object": "object", "array": "array"}.get(
                meta, _JSON_KIND.get(member["type"], ""))
            if branch_kind == kind or (branch_kind == "number" and kind == "integer"):
                self._visit(member["type"], value, path, name)
                return
        alternate = self._alternate_names.get(entry["name"], entry["name"])
        raise CommandFailure("GenericError", f"Invalid parameter type for '{path or 'null'}',"
                                             f" expected: {alternate}")
