"""The QMP commands libvirt sends, answered consistently with the command line.

Three layers, asked in this order:

1. live answers computed from the command line and the machine (this module):
   disks with libvirt's node names and their io-status, vCPUs with real thread
   ids, chardevs, ``/machine/peripheral``, the balloon, statistics, KVM;
2. QEMU 7.2's recorded replies (:mod:`qmpevents.qemu_compat.capture`) for what
   describes the binary rather than a guest: the capability probe's queries
   and the CPU's QOM properties;
3. the simulator's own QEMU 7.2 table
   (:func:`qmpevents.sim.commands.build_command_table`, which gets 1 and 2 as
   its ``commands``): the schema and its argument checks, run state,
   ``x-sim-*`` faults, VNC.

Statistics are those of a guest that does no I/O (QEMU's own values with no
guest OS), except the failed-operation counters, which count injected errors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from qmpevents.protocol import CommandFailure
from qmpevents.qemu_compat.blockdev import BlockdevLayer
from qmpevents.qemu_compat.capture import BALLOON_PATH, CPU_PATH, request_key
from qmpevents.qemu_compat.cmdline import QemuCommandLine
from qmpevents.qemu_compat.vcpus import VcpuThreads
from qmpevents.server.dispatch import Handler

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


def _recorded(recorded: dict[str, dict[str, Any]], name: str) -> Handler:
    """Answer *name* with QEMU's recorded reply to the same arguments."""
    def handler(arguments: dict[str, Any]) -> Any:
        reply = recorded.get(request_key(name, arguments))
        if reply is None:
            typename = arguments.get("typename")
            if name == "device-list-properties" and isinstance(typename, str):
                raise CommandFailure("DeviceNotFound", f"Device '{typename}' not found")
            raise CommandFailure("GenericError", f"qmpevents-qemu has no recorded QEMU reply "
                                 f"to {name} with these arguments")
        if "error" in reply:
            raise CommandFailure(reply["error"]["class"], reply["error"]["desc"])
        return reply["return"]
    return handler


def _not_found(path: str) -> CommandFailure:
    return CommandFailure("DeviceNotFound", f"Device '{path}' not found")


def compat_commands(cmdline: QemuCommandLine, block: BlockdevLayer, vcpus: VcpuThreads | None,
                    chardev_paths: Callable[[], Sequence[str]],
                    recorded: dict[str, dict[str, Any]]) -> dict[str, Handler]:
    """The commands ``qmpevents-qemu`` adds to (or overrides in) the simulator's table.

    Their arguments are checked against QEMU 7.2's schema by the table before a
    handler runs, so only the values need checking here.
    """
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

    live: dict[str, Handler] = {
        "query-kvm": query_kvm,
        "query-chardev": query_chardev,
        "query-migrate-capabilities":
            lambda _: [{"state": s, "capability": c} for c, s in migrate_caps.items()],
        "migrate-set-capabilities": set_migrate_caps,
        "query-cpus-fast": cpus(VcpuThreads.query_cpus_fast),
        "query-hotpluggable-cpus": cpus(VcpuThreads.query_hotpluggable_cpus),
        "query-iothreads": lambda _: [],
        "query-block": lambda _: block.query(),
        "query-named-block-nodes": lambda _: block.named_nodes(),
        "query-blockstats": blockstats,
        "qom-list": qom_list,
        "qom-get": qom_get,
        "qom-set": qom_set,
        "query-balloon": query_balloon,
        "balloon": set_balloon,
        "query-stats": lambda _: [],
        "query-stats-schemas": lambda _: [],
        "query-dirty-rate": lambda _: {
            "status": "unstarted", "sample-pages": 0, "mode": "page-sampling",
            "start-time": 0, "calc-time": 0},
        "query-name": lambda _: {"name": cmdline.name},
        "query-uuid": lambda _: {"UUID": cmdline.uuid},
    }
    names = {json.loads(key)[0] for key in recorded} - set(live)
    return {**{name: _recorded(recorded, name) for name in sorted(names)}, **live}
