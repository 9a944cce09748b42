"""The simulator's QMP command table: QEMU's commands plus ``x-sim-*`` controls.

In the ``qemu-7.2`` profile the table is QEMU 7.2's schema (:mod:`qmpevents.qapi`):
every command QEMU has is listed by ``query-commands`` and ``query-qmp-schema``
and has its arguments checked as QEMU checks them; the commands the machine
models do what QEMU does, every other one fails with :data:`NOT_MODELLED`.
The ``seed`` profile keeps the small table of the spec's era.

The ``x-`` prefix of the simulation controls follows QEMU's convention for
unstable commands: they stand for what a guest does (a disk error, an RTC
write, a reboot, a power-off), which only a running guest can do.

``build_command_table(machine, commands={...})`` adds or overrides commands:
a value is a handler (``arguments -> return value``; raise
``CommandFailure`` for an error) or a :class:`CommandSpec` with its own
argument schema.  A handler for a command QEMU has keeps QEMU's argument checks.
"""

from __future__ import annotations

__all__ = ["NOT_MODELLED", "UserCommands", "build_command_table", "modelled_commands"]

from collections.abc import Callable, Mapping
from typing import Any

from qmpevents.protocol import CommandFailure
from qmpevents.qapi import QapiSchema, load_capture, qemu72_schema
from qmpevents.server import CommandSpec, CommandTable, Param, SchemaChecker
from qmpevents.server.dispatch import Handler
from qmpevents.sim.absent import absent_handlers
from qmpevents.sim.block import Drive
from qmpevents.sim.display import Display
from qmpevents.sim.hmp import human_monitor_command
from qmpevents.sim.machine import ERRNOS, Machine
from qmpevents.sim.not_modelled import NOT_MODELLED, not_modelled
from qmpevents.sim.queries import Queries, as_inserted
from qmpevents.sim.schema_commands import extend_schema

UserCommands = Mapping[str, Handler | CommandSpec]


def _done(action: Callable[[], object]) -> Handler:
    def handler(_arguments: dict[str, Any]) -> dict[str, Any]:
        action()
        return {}
    return handler


def _sim_specs(machine: Machine) -> list[CommandSpec]:
    """The ``x-sim-*`` controls, in both profiles."""
    def io_error(arguments: dict[str, Any]) -> dict[str, Any]:
        machine.io_error(arguments["device"], arguments["operation"],
                         arguments.get("errno", "EIO"))
        return {}

    def rtc_change(arguments: dict[str, Any]) -> dict[str, Any]:
        machine.rtc_change(arguments["offset"])
        return {}

    return [
        CommandSpec("x-sim-io-error", io_error, {
            "device": Param("string"),
            "operation": Param("string", enum=("read", "write")),
            "errno": Param("string", optional=True, enum=tuple(ERRNOS)),
        }),
        CommandSpec("x-sim-rtc-change", rtc_change, {"offset": Param("integer")}),
        CommandSpec("x-sim-guest-reset", _done(machine.guest_reset)),
        CommandSpec("x-sim-guest-shutdown", _done(machine.guest_shutdown)),
    ]


def _qemu_handlers(machine: Machine) -> dict[str, Handler]:
    """QEMU commands the machine models, by name (both profiles)."""
    def change_vnc_password(arguments: dict[str, Any]) -> dict[str, Any]:
        # QEMU refuses unless the display was started with password authentication.
        if machine.vnc is None or machine.vnc.query().get("auth") != "vnc":
            raise CommandFailure("GenericError", "Could not set password")
        machine.vnc.set_password(arguments["password"])
        return {}

    return {
        "query-status": lambda _: machine.query_status(),
        "query-version": lambda _: machine.version,
        # --name, or {} without one, as QEMU: watch and record name VMs by it
        "query-name": lambda _: {"name": machine.name} if machine.name else {},
        "stop": _done(machine.stop),
        "cont": _done(machine.cont),
        "system_reset": _done(machine.system_reset),
        "system_powerdown": _done(machine.system_powerdown),
        "quit": _done(machine.quit),
        "query-block": lambda _: machine.block.query(),
        "query-vnc": lambda _: (machine.vnc.query() if machine.vnc is not None
                                else {"enabled": False}),
        "change-vnc-password": change_vnc_password,
    }


def _user_specs(commands: UserCommands) -> dict[str, CommandSpec]:
    return {name: spec if isinstance(spec, CommandSpec) else CommandSpec(name, spec)
            for name, spec in commands.items()}


def build_command_table(machine: Machine, commands: UserCommands | None = None) -> CommandTable:
    """Every command the simulated VM answers, bound to *machine*."""
    user = _user_specs(commands or {})
    if machine.profile == "qemu-7.2":
        return _qemu72_table(machine, user)
    handlers = _qemu_handlers(machine)
    specs = [CommandSpec("change-vnc-password", handlers["change-vnc-password"],
                         {"password": Param("string")})
             if name == "change-vnc-password" else CommandSpec(name, handler)
             for name, handler in handlers.items()]
    specs.insert(2, CommandSpec("query-commands", lambda _: [{"name": n} for n in table.names()]))
    by_name = {spec.name: spec for spec in [*specs, *_sim_specs(machine)]}
    by_name.update(user)
    table = CommandTable(by_name.values())
    return table


def _qemu72_handlers(machine: Machine, schema: QapiSchema,
                     listed: list[dict[str, str]]) -> dict[str, Handler]:
    """The QEMU 7.2 commands the machine models in the qemu-7.2 profile, by name."""
    queries = Queries(machine)
    display = Display(machine)

    def qom_get(arguments: dict[str, Any]) -> Any:
        return queries.qom_get(arguments["path"], arguments["property"])

    handlers: dict[str, Handler] = {name: _query(queries, name) for name in queries.names()}
    handlers.update(absent_handlers(machine, _not_modelled))
    handlers.update(_qemu_handlers(machine))
    handlers.update({
        "query-commands": lambda _: listed,
        "query-qmp-schema": _schema_answer(schema),
        "qom-list": lambda arguments: queries.qom_list(arguments["path"]),
        "qom-get": qom_get,
        "device_del": lambda arguments: _done(lambda: machine.device_del(arguments["id"]))({}),
        **_media_handlers(machine),
        "set_password": display.set_password,
        "expire_password": display.expire_password,
        "screendump": display.screendump,
        "human-monitor-command": lambda arguments: human_monitor_command(
            machine, arguments["command-line"]),
    })
    return handlers


def _media_handlers(machine: Machine) -> dict[str, Handler]:
    """eject and the blockdev tray/medium commands, on a drive named by device or id."""
    def on_drive(action: Callable[[Drive, dict[str, Any]], object]) -> Handler:
        def handler(arguments: dict[str, Any]) -> dict[str, Any]:
            action(machine.find_drive(arguments.get("device"), arguments.get("id")), arguments)
            return {}
        return handler

    return {
        "eject": on_drive(lambda drive, _: machine.eject(drive)),
        "blockdev-open-tray": on_drive(lambda drive, _: machine.open_tray(drive)),
        "blockdev-close-tray": on_drive(lambda drive, _: machine.close_tray(drive)),
        "blockdev-remove-medium": on_drive(lambda drive, _: machine.remove_medium(drive)),
        "blockdev-change-medium": on_drive(lambda drive, arguments: machine.change_medium(
            drive, arguments["filename"], arguments.get("format"))),
    }


def modelled_commands(machine: Machine) -> list[str]:
    """QEMU 7.2's commands that *machine* answers (the others fail with NOT_MODELLED)."""
    base = qemu72_schema()
    handlers = _qemu72_handlers(machine, base, [])
    return [name for name in base.command_names() if name in handlers or name == "qmp_capabilities"]


def _qemu72_table(machine: Machine, user: dict[str, CommandSpec]) -> CommandTable:
    base = qemu72_schema()
    extra = {spec.name: spec for spec in _sim_specs(machine)}
    extra.update({name: spec for name, spec in user.items() if name not in base})
    schema = extend_schema(base, extra.values())
    listed = [*as_inserted(load_capture()["query-commands"]), *({"name": name} for name in extra)]
    handlers = _qemu72_handlers(machine, schema, listed)
    specs = []
    for entry in schema.of_meta("command"):
        name = entry["name"]
        if name == "qmp_capabilities":
            continue  # the protocol layer answers it
        chosen = user.get(name) or extra.get(name)
        handler = chosen.handler if chosen is not None else handlers.get(name, _not_modelled(name))
        specs.append(CommandSpec(name, handler, allow_oob=bool(entry.get("allow-oob")),
                                 arg_type=entry["arg-type"]))
    types = {entry["name"]: entry for entry in schema.entries}
    return CommandTable(specs, checker=SchemaChecker(types, base.alternate_names()))


def _schema_answer(schema: QapiSchema) -> Handler:
    """query-qmp-schema's answer, built at the first call (a thousand entries)."""
    built: list[Any] = []

    def handler(_arguments: dict[str, Any]) -> Any:
        if not built:
            built.append(as_inserted(schema.entries))
        return built[0]
    return handler


def _query(queries: Queries, name: str) -> Handler:
    return lambda _arguments: queries.answer(name)


def _not_modelled(name: str) -> Handler:
    def handler(_arguments: dict[str, Any]) -> Any:
        raise not_modelled(name)
    return handler
