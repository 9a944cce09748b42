"""The simulator's QMP command table: QEMU's commands plus ``x-sim-*`` controls.

Argument schemas are QEMU 7.2's QAPI definitions for the real commands, so
argument errors read exactly as QEMU's.  The ``x-`` prefix of the simulation
controls follows QEMU's convention for unstable commands: they stand for what
a guest does (a disk error, an RTC write, a reboot, a power-off), which only a
running guest can do.
"""

from __future__ import annotations

from typing import Any

from qmpevents.protocol import CommandFailure
from qmpevents.server import CommandSpec, CommandTable, Param
from qmpevents.sim.machine import ERRNOS, Machine


def build_command_table(machine: Machine) -> CommandTable:
    """Every command the simulated VM answers, bound to *machine*."""

    def done(action: Any) -> Any:
        def handler(_arguments: dict[str, Any]) -> dict[str, Any]:
            action()
            return {}
        return handler

    def query_commands(_arguments: dict[str, Any]) -> list[dict[str, str]]:
        return [{"name": name} for name in table.names()]

    def query_vnc(_arguments: dict[str, Any]) -> dict[str, Any]:
        return machine.vnc.query() if machine.vnc is not None else {"enabled": False}

    def change_vnc_password(arguments: dict[str, Any]) -> dict[str, Any]:
        # QEMU refuses unless the display was started with password authentication.
        if machine.vnc is None or machine.vnc.query().get("auth") != "vnc":
            raise CommandFailure("GenericError", "Could not set password")
        machine.vnc.set_password(arguments["password"])
        return {}

    def io_error(arguments: dict[str, Any]) -> dict[str, Any]:
        machine.io_error(arguments["device"], arguments["operation"],
                         arguments.get("errno", "EIO"))
        return {}

    def rtc_change(arguments: dict[str, Any]) -> dict[str, Any]:
        machine.rtc_change(arguments["offset"])
        return {}

    table = CommandTable([
        CommandSpec("query-status", lambda _: machine.query_status()),
        CommandSpec("query-version", lambda _: machine.version),
        CommandSpec("query-commands", query_commands),
        CommandSpec("stop", done(machine.stop)),
        CommandSpec("cont", done(machine.cont)),
        CommandSpec("system_reset", done(machine.system_reset)),
        CommandSpec("system_powerdown", done(machine.system_powerdown)),
        CommandSpec("quit", done(machine.quit)),
        CommandSpec("query-block", lambda _: machine.block.query()),
        CommandSpec("query-vnc", query_vnc),
        CommandSpec("change-vnc-password", change_vnc_password,
                    {"password": Param("string")}),
        CommandSpec("x-sim-io-error", io_error, {
            "device": Param("string"),
            "operation": Param("string", enum=("read", "write")),
            "errno": Param("string", optional=True, enum=tuple(ERRNOS)),
        }),
        CommandSpec("x-sim-rtc-change", rtc_change, {"offset": Param("integer")}),
        CommandSpec("x-sim-guest-reset", done(machine.guest_reset)),
        CommandSpec("x-sim-guest-shutdown", done(machine.guest_shutdown)),
    ])
    return table
