"""Commands about things the simulated machine has none of, answered as QEMU answers them.

The machine has no block jobs, no jobs, no netdevs, no balloon, no extra
chardevs, objects or passed file descriptors, and is never suspended; QEMU
7.2 answers a command naming one of those with a specific error, and a few
commands with nothing to act on simply succeed (``inject-nmi``,
``migrate_cancel``...).  Each text here is QEMU's (compared in
``tests/test_sim_schema_qemu.py``).  A command naming something the machine
*does* have, but that is not modelled (``blockdev-del`` of a drive's node),
fails with the not-modelled error instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qmpevents.protocol import CommandFailure
from qmpevents.server.dispatch import Handler
from qmpevents.sim.machine import Machine


def _fail(error_class: str, desc: str, member: str | None = None) -> Handler:
    def handler(arguments: dict[str, Any]) -> Any:
        raise CommandFailure(error_class, desc.format(arguments.get(member or "", "")))
    return handler


def _succeed(_arguments: dict[str, Any]) -> dict[str, Any]:
    return {}


def absent_handlers(machine: Machine, not_modelled: Callable[[str], Handler]) -> dict[str, Handler]:
    """Handlers for the commands of this module's docstring, bound to *machine*."""
    block_job = "Block job '{}' not found"
    handlers: dict[str, Handler] = {
        **{name: _fail("DeviceNotActive", block_job, "device") for name in (
            "block-job-cancel", "block-job-pause", "block-job-resume", "block-job-complete",
            "block-job-set-speed")},
        "block-job-dismiss": _fail("DeviceNotActive", block_job, "id"),
        "block-job-finalize": _fail("DeviceNotActive", block_job, "id"),
        **{name: _fail("GenericError", "Job not found") for name in (
            "job-cancel", "job-pause", "job-resume", "job-complete", "job-dismiss",
            "job-finalize")},
        "system_wakeup": _fail("GenericError",
                               "Unable to wake up: guest is not in suspended state"),
        "set_link": _fail("DeviceNotFound", "Device '{}' not found", "name"),
        "netdev_del": _fail("DeviceNotFound", "Device '{}' not found", "id"),
        "closefd": _fail("GenericError", "File descriptor named '{}' not found", "fdname"),
        "balloon": _fail("DeviceNotActive", "No balloon device has been activated"),
        "x-exit-preconfig": _fail("GenericError",
                                  "The command is permitted only before machine initialization"),
        "inject-nmi": _succeed,
        "rtc-reset-reinjection": _succeed,
        "migrate_cancel": _succeed,
        "send-key": _succeed,
    }

    def unless_known(name: str, known: Callable[[str], bool], absent: Handler,
                     member: str) -> Handler:
        def handler(arguments: dict[str, Any]) -> Any:
            if known(arguments[member]):
                return not_modelled(name)(arguments)
            return absent(arguments)
        return handler

    nodes = {drive.node_name for drive in machine.block.drives.values()}
    chardevs = lambda label: label in {known for known, _ in machine.chardevs}  # noqa: E731
    handlers["chardev-remove"] = unless_known(
        "chardev-remove", chardevs, _fail("GenericError", "Chardev '{}' not found", "id"), "id")
    handlers["object-del"] = unless_known(
        "object-del", lambda name: name == "pc.ram",
        _fail("GenericError", "object '{}' not found", "id"), "id")
    handlers["blockdev-del"] = unless_known(
        "blockdev-del", lambda node: node in nodes,
        _fail("GenericError", "Failed to find node with node-name='{}'", "node-name"),
        "node-name")
    return handlers
