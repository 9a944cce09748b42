"""The QMP commands libvirt sends, answered consistently with the command line.

Three layers, asked in this order:

1. live answers computed from the command line and the machine (this module):
   disks with libvirt's node names and their io-status, vCPUs with real thread
   ids, chardevs, ``/machine/peripheral``, the balloon, statistics, KVM;
2. the simulator's own table (:func:`qmpevents.sim.commands.build_command_table`):
   run state, ``x-sim-*`` faults, VNC;
3. QEMU 7.2's recorded replies (:mod:`qmpevents.qemu_compat.capture`) for what
   describes the binary rather than a guest: the capability probe's queries
   and the CPU's QOM properties.

Statistics are those of a guest that does no I/O (QEMU's own values with no
guest OS), except the failed-operation counters, which count injected errors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from qmpevents.protocol import Command, CommandFailure
from qmpevents.qemu_compat.blockdev import BlockdevLayer
from qmpevents.qemu_compat.capture import BALLOON_PATH, CPU_PATH, request_key
from qmpevents.qemu_compat.cmdline import QemuCommandLine
from qmpevents.qemu_compat.vcpus import VcpuThreads
from qmpevents.server import CommandSpec, CommandTable, Param

KVM_ENV = "QMPEVENTS_QEMU_KVM"
"""Set to ``1`` to make ``query-kvm`` say KVM is present and enabled (default: absent)."""

NO_GUEST_STAT = (1 << 64) - 1
"""What QEMU's balloon reports for a statistic the guest never sent."""

BALLOON_STATS = ("stat-htlb-pgalloc", "stat-swap-out", "stat-available-memory",
                 "stat-htlb-pgfail", "stat-free-memory", "stat-minor-faults",
                 "stat-major-faults", "stat-total-memory", "stat-swap-in", "stat-disk-caches")


class Balloon:
    """A ``virtio-balloon-pci`` the simulated guest obeys at once."""

    def __init__(self, device_id: str, memory: int) -> None:
        self.path = f"/machine/peripheral/{device_id}"
        self.actual = memory
        self.polling_interval = 0

    def guest_stats(self) -> dict[str, Any]:
        return {"stats": dict.fromkeys(BALLOON_STATS, NO_GUEST_STAT), "last-update": 0}


class CompatTable:
    """An executor: the live commands, then the simulator's table, then QEMU's replies."""

    def __init__(self, live: CommandTable, base: CommandTable,
                 recorded: dict[str, dict[str, Any]]) -> None:
        self._live = live
        self._live_names = set(live.names()) - {"qmp_capabilities"}
        self._base = base
        self._base_names = set(base.names()) - {"qmp_capabilities"}
        self._recorded = recorded
        self._recorded_names = {json.loads(key)[0] for key in recorded}

    def names(self) -> list[str]:
        return sorted(self._live_names | self._base_names)

    def execute(self, command: Command) -> Any:
        if command.name in self._live_names:
            return self._live.execute(command)
        if command.name in self._base_names:
            return self._base.execute(command)
        reply = self._recorded.get(request_key(command.name, command.arguments))
        if reply is None:
            if command.name not in self._recorded_names:
                return self._base.execute(command)  # CommandNotFound, with QEMU's text
            typename = command.arguments.get("typename")
            if command.name == "device-list-properties" and isinstance(typename, str):
                raise CommandFailure("DeviceNotFound", f"Device '{typename}' not found")
            raise CommandFailure("GenericError", f"qmpevents-qemu has no recorded QEMU reply "
                                 f"to {command.name} with these arguments")
        if "error" in reply:
            raise CommandFailure(reply["error"]["class"], reply["error"]["desc"])
        return reply["return"]


def _not_found(path: str) -> CommandFailure:
    return CommandFailure("DeviceNotFound", f"Device '{path}' not found")


def build_compat_table(cmdline: QemuCommandLine, block: BlockdevLayer,
                       vcpus: VcpuThreads | None, chardev_paths: Callable[[], Sequence[str]],
                       base: CommandTable, recorded: dict[str, dict[str, Any]]) -> CompatTable:
    """The command surface of ``qmpevents-qemu`` for one command line."""
    balloon = next((Balloon(device.id, cmdline.memory) for device in cmdline.devices
                    if device.driver.startswith("virtio-balloon") and device.id), None)
    peripherals = {f"/machine/peripheral/{device.id}": device.driver
                   for device in cmdline.devices if device.id}
    migrate_caps = {cap["capability"]: cap["state"] for cap in recorded.get(
        request_key("query-migrate-capabilities", None), {}).get("return", [])}

    def recorded_reply(name: str, arguments: dict[str, Any]) -> Any:
        reply = recorded.get(request_key(name, arguments))
        if reply is None:
            raise _not_found(arguments.get("path", ""))
        if "error" in reply:
            raise CommandFailure(reply["error"]["class"], reply["error"]["desc"])
        return reply["return"]

    def query_commands(_: dict[str, Any]) -> list[dict[str, str]]:
        names = [c["name"] for c in recorded_reply("query-commands", {})]
        return [{"name": name} for name in [*names, *(
            n for n in base.names() if n.startswith("x-sim-") and n not in names)]]

    def query_kvm(_: dict[str, Any]) -> dict[str, bool]:
        kvm = os.environ.get(KVM_ENV) == "1"
        return {"enabled": kvm, "present": kvm}

    def query_chardev(_: dict[str, Any]) -> list[dict[str, Any]]:
        labels = [chardev.id for chardev in cmdline.monitors]
        return [{"frontend-open": True, "filename": f"unix:{path},server=on", "label": label}
                for label, path in zip(labels, chardev_paths(), strict=False)]

    def set_migrate_caps(arguments: dict[str, Any]) -> dict[str, Any]:
        for cap in arguments["capabilities"]:
            if not isinstance(cap, dict) or cap.get("capability") not in migrate_caps:
                raise CommandFailure("GenericError", "Invalid parameter 'capability'")
            migrate_caps[cap["capability"]] = bool(cap.get("state"))
        return {}

    def qom_list(arguments: dict[str, Any]) -> list[dict[str, str]]:
        path = arguments["path"]
        if path == "/machine/peripheral":
            return [{"name": "type", "type": "string"}, *(
                {"name": p.rsplit("/", 1)[1], "type": f"child<{driver}>"}
                for p, driver in peripherals.items())]
        if balloon is not None and path == balloon.path:
            return list(recorded_reply("qom-list", {"path": BALLOON_PATH}))
        if path == CPU_PATH and vcpus is not None:
            return list(recorded_reply("qom-list", {"path": CPU_PATH}))
        raise _not_found(path)

    def qom_get(arguments: dict[str, Any]) -> Any:
        path, prop = arguments["path"], arguments["property"]
        if balloon is not None and path == balloon.path:
            if prop == "guest-stats":
                return balloon.guest_stats()
            if prop == "guest-stats-polling-interval":
                return balloon.polling_interval
        if path == CPU_PATH and vcpus is not None:
            return recorded_reply("qom-get", {"path": CPU_PATH, "property": prop})
        if path in peripherals and prop == "type":
            return peripherals[path]
        raise CommandFailure("GenericError", f"Property '{prop}' not found")

    def qom_set(arguments: dict[str, Any]) -> dict[str, Any]:
        path, prop, value = arguments["path"], arguments["property"], arguments["value"]
        if (balloon is not None and path == balloon.path
                and prop == "guest-stats-polling-interval"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise CommandFailure("GenericError", "timer value must be greater than zero")
            balloon.polling_interval = value
            return {}
        if path not in peripherals:
            raise _not_found(path)
        raise CommandFailure("GenericError", f"Property '{prop}' not found")

    def require_balloon() -> Balloon:
        if balloon is None:
            raise CommandFailure("DeviceNotActive", "No balloon device has been activated")
        return balloon

    def query_balloon(_: dict[str, Any]) -> dict[str, int]:
        return {"actual": require_balloon().actual}

    def set_balloon(arguments: dict[str, Any]) -> dict[str, Any]:
        target = require_balloon()
        if arguments["value"] <= 0:
            raise CommandFailure("GenericError",
                                 "Parameter 'target' expects a size")
        target.actual = min(arguments["value"], cmdline.memory)  # the guest obeys at once
        return {}

    def blockstats(arguments: dict[str, Any]) -> list[dict[str, Any]]:
        return block.blockstats(query_nodes=bool(arguments.get("query-nodes")))

    def cpus(query: Callable[[VcpuThreads], list[dict[str, Any]]]) -> Callable[..., Any]:
        return lambda _: query(vcpus) if vcpus is not None else []

    live = CommandTable([
        CommandSpec("query-commands", query_commands),
        CommandSpec("query-kvm", query_kvm),
        CommandSpec("query-chardev", query_chardev),
        CommandSpec("query-migrate-capabilities",
                    lambda _: [{"state": s, "capability": c} for c, s in migrate_caps.items()]),
        CommandSpec("migrate-set-capabilities", set_migrate_caps,
                    {"capabilities": Param("array")}),
        CommandSpec("query-cpus-fast", cpus(VcpuThreads.query_cpus_fast)),
        CommandSpec("query-hotpluggable-cpus", cpus(VcpuThreads.query_hotpluggable_cpus)),
        CommandSpec("query-iothreads", lambda _: []),
        CommandSpec("query-block", lambda _: block.query()),
        CommandSpec("query-named-block-nodes", lambda _: block.named_nodes(),
                    {"flat": Param("boolean", optional=True)}),
        CommandSpec("query-blockstats", blockstats,
                    {"query-nodes": Param("boolean", optional=True)}),
        CommandSpec("qom-list", qom_list, {"path": Param("string")}),
        CommandSpec("qom-get", qom_get, {"path": Param("string"), "property": Param("string")}),
        CommandSpec("qom-set", qom_set, {"path": Param("string"), "property": Param("string"),
                                         "value": Param("integer")}),
        CommandSpec("query-balloon", query_balloon),
        CommandSpec("balloon", set_balloon, {"value": Param("integer")}),
        CommandSpec("query-stats", lambda _: [], {
            "target": Param("string", enum=("vm", "vcpu")),
            "providers": Param("array", optional=True),
            "vcpus": Param("array", optional=True)}),
        CommandSpec("query-stats-schemas", lambda _: [],
                    {"provider": Param("string", optional=True)}),
        CommandSpec("query-dirty-rate", lambda _: {
            "status": "unstarted", "sample-pages": 0, "mode": "page-sampling",
            "start-time": 0, "calc-time": 0}),
        CommandSpec("query-name", lambda _: {"name": cmdline.name}),
        CommandSpec("query-uuid", lambda _: {"UUID": cmdline.uuid}),
    ])
    return CompatTable(live, base, recorded)
