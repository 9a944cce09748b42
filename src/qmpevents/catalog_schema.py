"""Event models built at import from QEMU 7.2's schema (:mod:`qmpevents.qapi`).

For every event of the schema that :mod:`qmpevents.catalog` does not define by
hand, :func:`build_schema_events` makes three things from the event's QAPI
data type, so that nothing about these events is written twice:

* a *tolerant* typed model (a subclass of the catalog's ``Event``): members by
  their Python names (``tray-open`` is ``tray_open``), enums as plain strings so
  a newer QEMU's values still decode, nested objects as frozen structs;
* a *strict* model for ``validate``: unknown members forbidden, enums as their
  exact values, integers in QEMU's 64-bit range, unions by their tag;
* a field table (JSON member -> required / optional / nested table), the
  catalog's common description of what a profile puts on the wire.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import UNSET, Struct, UnsetType, field

from qmpevents.qapi import QapiSchema

FieldTable = dict[str, "bool | FieldTable"]

_INT = Annotated[int, msgspec.Meta(ge=-(1 << 63))]  # msgspec itself stops at uint64
_BUILTIN_STRICT: dict[str, Any] = {"str": str, "int": _INT, "number": float, "bool": bool,
                                   "null": None, "any": Any}
_BUILTIN_TOLERANT: dict[str, Any] = {"str": str, "int": int, "number": float, "bool": bool,
                                     "null": None, "any": Any}

_STRICT_TIMESTAMP = msgspec.defstruct("Timestamp_strict", [("seconds", int), ("microseconds", int)],
                                      forbid_unknown_fields=True, kw_only=True)


@dataclass(frozen=True, slots=True)
class SchemaEvent:
    """What the schema gives for one event."""

    name: str
    model: type[Struct]
    strict: type[Struct]
    table: FieldTable | None  # None: the event has no ``data``


def attribute_name(member: str) -> str:
    """The Python attribute for a QAPI member name (``tray-open`` -> ``tray_open``)."""
    name = member.replace("-", "_").replace(".", "_")
    return f"{name}_" if keyword.iskeyword(name) or not name.isidentifier() else name


def class_name(event: str) -> str:
    """``DEVICE_TRAY_MOVED`` -> ``DeviceTrayMoved``."""
    return "".join(part.capitalize() for part in event.split("_"))


class _Builder:
    """Makes the msgspec types of one schema, naming nested structs by their path."""

    def __init__(self, schema: QapiSchema, data_base: type[Struct]) -> None:
        self.schema = schema
        self.data_base = data_base

    # -- tolerant ----------------------------------------------------------

    def tolerant(self, type_name: str, path: str) -> Any:
        if type_name in _BUILTIN_TOLERANT:
            return _BUILTIN_TOLERANT[type_name]
        entry = self.schema[type_name]
        meta = entry["meta-type"]
        if meta == "enum":
            return str
        if meta == "array":
            return list[self.tolerant(entry["element-type"], path)]  # type: ignore[misc]
        if meta == "object" and "variants" not in entry:
            return self.tolerant_struct(type_name, path)
        return Any  # unions and alternates stay plain JSON values

    def tolerant_struct(self, type_name: str, path: str) -> type[Struct]:
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for member in self.schema.members(type_name):
            member_type = self.tolerant(member.type, f"{path}_{class_name(member.name)}")
            if member.optional:
                fields.append((attribute_name(member.name), member_type | None,
                               field(default=None, name=member.name)))
            else:
                fields.append((attribute_name(member.name), member_type,
                               field(name=member.name)))
        return msgspec.defstruct(path, fields, bases=(self.data_base,), frozen=True,
                                 kw_only=True, omit_defaults=True, gc=False,
                                 module="qmpevents.catalog_schema")

    # -- strict --------------------------------------------------------------

    def strict(self, type_name: str, path: str) -> Any:
        if type_name in _BUILTIN_STRICT:
            return _BUILTIN_STRICT[type_name]
        entry = self.schema[type_name]
        meta = entry["meta-type"]
        if meta == "enum":
            return Literal[tuple(entry["values"])]
        if meta == "array":
            return list[self.strict(entry["element-type"], path)]  # type: ignore[misc]
        if meta == "alternate":
            choices = tuple(self.strict(m["type"], f"{path}_{i}")
                            for i, m in enumerate(entry["members"]))
            return Union[choices]  # noqa: UP007
        variants = self.schema.variants(type_name)
        if variants is None:
            return self.strict_struct(type_name, path)
        tag, cases = variants
        tag_entry = self.schema[next(m.type for m in self.schema.members(type_name)
                                     if m.name == tag)]
        structs = [self.strict_struct(type_name, f"{path}_{value}", tag=(tag, value),
                                      variant=cases.get(value))
                   for value in tag_entry["values"]]
        return Union[tuple(structs)]  # noqa: UP007

    def strict_struct(self, type_name: str, path: str, *, tag: tuple[str, str] | None = None,
                      variant: str | None = None) -> type[Struct]:
        members = self.schema.members(type_name)
        if variant is not None:
            members += self.schema.members(variant)
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for member in members:
            if tag is not None and member.name == tag[0]:
                continue  # msgspec checks the tag itself
            member_type = self.strict(member.type, f"{path}_{class_name(member.name)}")
            if member.optional:
                fields.append((attribute_name(member.name), member_type | UnsetType,
                               field(default=UNSET, name=member.name)))
            else:
                fields.append((attribute_name(member.name), member_type,
                               field(name=member.name)))
        options: dict[str, Any] = {}
        if tag is not None:
            options = {"tag_field": tag[0], "tag": tag[1]}
        return msgspec.defstruct(path, fields, forbid_unknown_fields=True, kw_only=True,
                                 **options)

    # -- field tables ----------------------------------------------------------

    def table(self, type_name: str) -> FieldTable:
        table: FieldTable = {}
        for member in self.schema.members(type_name):
            entry = self.schema[member.type]  # built-ins have entries too
            if entry.get("meta-type") == "object" and "variants" not in entry:
                table[member.name] = self.table(member.type)
            else:
                table[member.name] = not member.optional
        return table


def build_schema_events(schema: QapiSchema, *, skip: set[str], event_base: type[Struct],
                        data_base: type[Struct]) -> list[SchemaEvent]:
    """The schema's events other than *skip*, as models derived from *event_base*."""
    builder = _Builder(schema, data_base)
    built = []
    for name in schema.event_names():
        if name in skip:
            continue
        data_type = schema.event_data_type(name)
        cls = class_name(name)
        strict_fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
            ("timestamp", _STRICT_TIMESTAMP)]
        if data_type is None:
            # A newer QEMU may add data to an event that has none: keep it, stay known.
            model = msgspec.defstruct(cls, [("data", dict[str, Any] | None, None)],
                                      bases=(event_base,),
                                      tag=name, module="qmpevents.catalog_schema")
            table = None
        else:
            data_model = builder.tolerant_struct(data_type, f"{cls}Data")
            model = msgspec.defstruct(cls, [("data", data_model)], bases=(event_base,),
                                      tag=name, module="qmpevents.catalog_schema")
            strict_fields.append(("data", builder.strict(data_type, f"{cls}_strict_data")))
            table = builder.table(data_type)
        strict = msgspec.defstruct(f"{cls}_strict", strict_fields, tag_field="event",
                                   tag=name, forbid_unknown_fields=True, kw_only=True)
        built.append(SchemaEvent(name, model, strict, table))
    return built
