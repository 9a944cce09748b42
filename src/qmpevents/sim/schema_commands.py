"""The simulator's QAPI schema: QEMU 7.2's, plus entries for commands QEMU does not have.

``query-qmp-schema`` must describe every command ``query-commands`` lists, so
the ``x-sim-*`` controls (and commands a user adds with
``SimulatedVM(commands=...)``) get introspection entries as QEMU's own ``x-``
commands have: an argument object type, enum types for enumerated members, and
opaque type names numbered after QEMU's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from qmpevents.qapi import QapiSchema
from qmpevents.server import CommandSpec, Param

_BUILTIN = {"string": "str", "integer": "int", "boolean": "bool", "number": "number",
            "object": "any", "array": "any"}
_NO_RETURN = "0"  # QEMU's empty object type, the ret-type of commands returning {}


def extend_schema(base: QapiSchema, specs: Iterable[CommandSpec]) -> QapiSchema:
    """*base* plus a command entry (and its types) for each spec *base* does not know."""
    entries: list[dict[str, Any]] = []
    number = base.next_type_name()

    def new_type(entry: dict[str, Any]) -> str:
        nonlocal number
        named = {"name": str(number), **entry}  # "name" first, as QEMU writes it
        number += 1
        entries.append(named)
        return str(named["name"])

    commands = []
    for spec in specs:
        if spec.name in base:
            continue
        members = [_member(name, param, new_type) for name, param in spec.schema.items()]
        arg_type = new_type({"members": members, "meta-type": "object"})
        commands.append({"name": spec.name, "ret-type": _NO_RETURN, "meta-type": "command",
                         "arg-type": arg_type})
    return QapiSchema([*base.entries, *commands, *entries])


def _member(name: str, param: Param, new_type: Any) -> dict[str, Any]:
    if param.enum is not None:
        type_name = new_type({"members": [{"name": value} for value in param.enum],
                              "meta-type": "enum", "values": list(param.enum)})
    else:
        type_name = _BUILTIN[param.type]
    member: dict[str, Any] = {"name": name}
    if param.optional:
        member["default"] = None
    member["type"] = type_name
    return member
