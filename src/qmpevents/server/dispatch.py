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
from qmpevents.server.arguments import Param, check_arguments

Handler = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command's name, argument schema, handler, and whether ``exec-oob`` may run it."""

    name: str
    handler: Handler
    schema: Mapping[str, Param] = field(default_factory=dict)
    allow_oob: bool = False


class CommandTable:
    """Runs negotiated commands; ``qmp_capabilities`` is answered by the protocol layer."""

    def __init__(self, specs: Iterable[CommandSpec]) -> None:
        self._specs = {spec.name: spec for spec in specs}

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
        check_arguments(spec.schema, command.arguments)
        return spec.handler(command.arguments)
