"""Answers to QEMU's ``query-*`` commands (and ``qom-list``/``qom-get``) from the machine.

The shipped capture (:mod:`qmpevents.qapi`) holds what real QEMU 7.2 answers
on the machine the simulator models (a paused ``pc`` machine, one vCPU, 64 MiB,
one null-co drive ``drive0`` on virtio-blk-pci).  Replies that do not depend
on the machine's state are QEMU's own; those that do are made from the state:
the run state, ``--name``, the drives (QEMU's ``drive0`` reply is the template
of each drive's), the QMP monitors (chardevs), the VNC listener.  A captured
error (``query-balloon`` without a balloon) is raised as that error.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

from qmpevents.codec.encoder import qdict_bucket
from qmpevents.protocol import CommandFailure
from qmpevents.qapi import load_capture
from qmpevents.sim.block import Drive
from qmpevents.sim.machine import Machine
from qmpevents.sim.not_modelled import not_modelled

Query = Callable[[], Any]

_TEMPLATE_DRIVE = "drive0"
_TEMPLATE_QDEV = "/machine/peripheral-anon/device[0]"


def as_inserted(value: Any) -> Any:
    """A value received from QEMU, its objects' keys put back in QEMU's insertion order.

    QEMU writes a QDict in bucket order, the newest key first within a bucket;
    the encoder reproduces that from insertion order, so re-encoding QEMU's
    own reply needs the keys of each bucket back in insertion (reverse) order.
    """
    if isinstance(value, list):
        return [as_inserted(item) for item in value]
    if not isinstance(value, dict):
        return value
    buckets: dict[int, list[str]] = {}
    for key in value:
        buckets.setdefault(qdict_bucket(key), []).append(key)
    return {key: as_inserted(value[key])
            for keys in buckets.values() for key in reversed(keys)}


def _replace(value: Any, substitutions: Mapping[str, str]) -> Any:
    """*value* with every string in *substitutions* replaced (deep, order kept)."""
    if isinstance(value, str):
        for old, new in substitutions.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {key: _replace(item, substitutions) for key, item in value.items()}
    if isinstance(value, list):
        return [_replace(item, substitutions) for item in value]
    return value


@functools.cache
def _inserted_queries() -> Mapping[str, Any]:
    """The captured replies, in insertion order (shared: callers copy before changing)."""
    return {name: as_inserted(reply) for name, reply in load_capture()["queries"].items()}


class Queries:
    """Every argument-less ``query-*`` of QEMU 7.2, answered for one machine."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        capture = load_capture()
        self._captured: Mapping[str, Any] = _inserted_queries()
        self._qom: Mapping[str, Any] = as_inserted(capture["qom-list"])
        # QEMU's property lists of the two kinds of drive device (device[0], device[1]).
        self._device_properties = {
            kind: self._qom[f"/machine/peripheral-anon/device[{index}]"]["return"]
            for index, kind in enumerate(("virtio-blk-pci", "ide-cd"))}
        block = self._captured["query-block"]["return"][0]
        self._template_node = str(block["inserted"]["node-name"])
        self._state: dict[str, Query] = {
            "query-status": machine.query_status,
            "query-name": lambda: {"name": machine.name} if machine.name else {},  # as QEMU
            "query-version": lambda: machine.version,
            "query-block": machine.block.query,
            "query-blockstats": lambda: self._per_drive("query-blockstats"),
            "query-named-block-nodes": lambda: self._per_drive("query-named-block-nodes"),
            "query-pci": self._pci,
            "query-cpus-fast": self._cpus,
            "query-chardev": self._chardevs,
            "query-yank": lambda: [{"type": "chardev", "id": label}
                                   for label, _ in machine.chardevs],
            "query-vnc": self._vnc,
            "query-vnc-servers": self._vnc_servers,
        }

    def names(self) -> list[str]:
        """The queries answered (state-made ones and QEMU's captured ones)."""
        return sorted({*self._captured, *self._state} - {"query-commands", "query-qmp-schema"})

    def answer(self, name: str) -> Any:
        """The reply's ``return`` value; a captured error is raised as QEMU raised it."""
        if name in self._state:
            return self._state[name]()
        reply = self._captured[name]
        if "error" in reply:
            raise CommandFailure(reply["error"]["class"], reply["error"]["desc"])
        return copy.deepcopy(reply["return"])

    # -- state-made ----------------------------------------------------------

    def _substitutions(self, drive: Drive) -> dict[str, str]:
        return {f"{_TEMPLATE_QDEV}/virtio-backend": drive.attached_to,
                self._template_node: drive.node_name, _TEMPLATE_DRIVE: drive.config.id}

    def _per_drive(self, name: str) -> list[Any]:
        """QEMU's reply for drive0, made for each drive (nodes: only those with a medium)."""
        template = self._captured[name]["return"][0]
        answers = []
        for drive in self.machine.block.drives.values():
            if drive.medium is None and name == "query-named-block-nodes":
                continue
            answer = _replace(template, self._substitutions(drive))
            if drive.medium is None:
                answer.pop("node-name", None)
            answers.append(answer)
        return answers

    def _pci(self) -> list[Any]:
        bus = copy.deepcopy(self._captured["query-pci"]["return"][0])
        devices = bus["devices"]
        virtio = next(d for d in devices if d["class_info"].get("desc") == "SCSI controller")
        builtin = [d for d in devices if d is not virtio]
        disks = [d for d in self.machine.block.drives.values() if not d.removable]
        for index, _disk in enumerate(disks):  # ide-cd devices sit on the built-in IDE
            builtin.append({**copy.deepcopy(virtio), "slot": virtio["slot"] + index})
        bus["devices"] = builtin
        return [bus]

    def _cpus(self) -> list[Any]:
        cpus: list[Any] = copy.deepcopy(self._captured["query-cpus-fast"]["return"])
        for cpu in cpus:
            cpu["thread-id"] = os.getpid()  # the simulated vCPU runs in this process
        return cpus

    def _chardevs(self) -> list[dict[str, Any]]:
        return [{"frontend-open": True, "filename": filename, "label": label}
                for label, filename in self.machine.chardevs]

    def _vnc(self) -> dict[str, Any]:
        return self.machine.vnc.query() if self.machine.vnc is not None else {"enabled": False}

    def _vnc_servers(self) -> list[dict[str, Any]]:
        info = self._vnc()
        if not info.get("enabled"):
            return []
        auth = info["auth"]
        return [{"id": "default", "auth": auth,
                 "server": [{"host": info["host"], "service": info["service"],
                             "family": info["family"], "websocket": False,
                             "auth": auth}],
                 "clients": info["clients"]}]

    # -- QOM -------------------------------------------------------------------

    def qom_list(self, path: str) -> list[dict[str, str]]:
        """The children and properties of *path*, as QEMU lists them."""
        if path == "/machine/peripheral-anon":
            return [{"name": "type", "type": "string"},
                    *({"name": drive.qdev_path.rsplit("/", 1)[1],
                       "type": "child<ide-cd>" if drive.removable else "child<virtio-blk-pci>"}
                      for drive in self.machine.block.drives.values())]
        if path == "/chardevs":
            return [{"name": "type", "type": "string"},
                    *({"name": label, "type": "child<chardev-socket>"}
                      for label, _ in self.machine.chardevs)]
        for drive in self.machine.block.drives.values():
            if drive.qdev_path == path:
                kind = "ide-cd" if drive.removable else "virtio-blk-pci"
                return copy.deepcopy(list(self._device_properties[kind]))
        if path in self._qom and not path.startswith("/machine/peripheral-anon/"):
            reply = self._qom[path]
            if "return" in reply:
                return copy.deepcopy(list(reply["return"]))
        self.qom_type(path)  # DeviceNotFound unless the object exists
        raise not_modelled("qom-list")  # an object of QEMU's whose properties we lack

    def qom_get(self, path: str, name: str) -> Any:
        """``qom-get``: the ``type`` of any object; other properties are not modelled."""
        type_name = self.qom_type(path)
        if name == "type":
            return type_name
        try:
            known = any(prop["name"] == name for prop in self.qom_list(path))
        except CommandFailure:
            known = True  # an object whose properties we do not know
        if known:
            raise not_modelled("qom-get")
        raise CommandFailure("GenericError", f"Property '{type_name}.{name}' not found")

    def qom_type(self, path: str) -> str:
        """The QOM type of *path* (``qom-get PATH type``)."""
        if path == "/":
            return "container"
        parent, _, child = path.rstrip("/").rpartition("/")
        for prop in self.qom_list(parent or "/"):
            if prop["name"] == child and prop["type"].startswith("child<"):
                return prop["type"][len("child<"):-1]
        raise CommandFailure("DeviceNotFound", f"Device '{path}' not found")
