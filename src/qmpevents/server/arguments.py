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

from qmpevents.codec import qdict_order
from qmpevents.protocol import CommandFailure

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
    unexpected = [key for key in arguments if key not in schema]
    if unexpected:
        raise CommandFailure("GenericError",
                             f"Parameter '{qdict_order(unexpected)[0]}' is unexpected")
