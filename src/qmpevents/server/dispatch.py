"""The command table: lookup, OOB policy and argument checks before a handler runs.

Checks happen in the order of QEMU's ``qmp_dispatch`` (unknown command, then
OOB support, then arguments), so a request with several faults gets the same
error as from QEMU.  Handlers are plain synchronous callables: every command
of the simulator completes at once, which is also what lets the events it
causes be written before its reply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qmpevents.protocol import Command, CommandFailure
from qmpevents.server.arguments import Param, SchemaChecker, check_arguments

Handler = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command's name, argument schema, handler, and whether ``exec-oob`` may run it.

    ``arg_type`` names the command's argument type in the table's QAPI schema;
    when set, that (not ``schema``) checks the arguments.
    """

    name: str
    handler: Handler
    schema: Mapping[str, Param] = field(default_factory=dict)
    allow_oob: bool = False
    arg_type: str | None = None


class CommandTable:
    """Runs negotiated commands; ``qmp_capabilities`` is answered by the protocol layer."""

    def __init__(self, specs: Iterable[CommandSpec], *,
                 checker: SchemaChecker | None = None) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self._checker = checker

    def names(self) -> list[str]:
        """Every command, ``qmp_capabilities`` included, as ``query-commands`` lists them."""
        return ["qmp_capabilities", *self._specs]

    def execute(self, command: Command) -> Any:
        """The command's return value; raises :class:`CommandFailure` with QEMU's text."""
        spec = self._specs.get(command.name)
        if spec is None:
            raise CommandFailure("CommandNotFound",
                                 f"The command {command.name} has not been found")
        if command.oob and not spec.allow_oob:
            raise CommandFailure("GenericError",
                                 f"The command {command.name} does not support OOB")
        if spec.arg_type is not None and self._checker is not None:
            self._checker.check(spec.arg_type, command.arguments)
        else:
            check_arguments(spec.schema, command.arguments)
        return spec.handler(command.arguments)
