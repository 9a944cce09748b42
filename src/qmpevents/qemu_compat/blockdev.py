"""Disks as libvirt defines them: ``-blockdev`` node pairs behind a ``-device``.

libvirt 9.0 never uses ``-drive``: each disk is a protocol node
(``libvirt-N-storage``, driver ``file``) under a format node
(``libvirt-N-format``, driver ``raw``/``qcow2``), attached by a ``-device``
whose ``drive`` names the format node and which carries ``werror``/``rerror``.
Such a disk has no BlockBackend name, so QEMU reports it with ``"device": ""``
everywhere (``query-block``, ``query-blockstats``, BLOCK_IO_ERROR) and
identifies it by the device's ``qdev`` path and the format node's name;
libvirt resolves events and replies back to its disk through those.  The
reply shapes are QEMU 7.2's for the same command line (checked against real
QEMU by ``tests/test_qemu_compat_qemu.py``).
"""

from __future__ import annotations

import os
from typing import Any

from qmpevents.qemu_compat.cmdline import BlockNode, CommandLineError, Device
from qmpevents.sim.block import BlockLayer, Drive, DriveConfig, ErrorPolicy, IoErrorOutcome

DEFAULT_SIZE = 1 << 30
"""Virtual size of a disk whose file does not exist (the simulator reads no data)."""

_STAT_NAMES = (
    "unmap_operations", "unmap_merged", "flush_total_time_ns", "wr_highest_offset",
    "wr_total_time_ns", "failed_wr_operations", "failed_rd_operations", "wr_merged", "wr_bytes",
    "timed_stats", "failed_unmap_operations", "failed_flush_operations", "account_invalid",
    "rd_total_time_ns", "invalid_unmap_operations", "flush_operations", "wr_operations",
    "unmap_bytes", "rd_merged", "rd_bytes", "unmap_total_time_ns", "invalid_flush_operations",
    "account_failed", "rd_operations", "invalid_wr_operations", "invalid_rd_operations")


def _policy(device: Device, key: str, default: ErrorPolicy) -> ErrorPolicy:
    value = device.props.get(key, "auto")
    if value == "auto":
        return default
    try:
        policy = ErrorPolicy(value)
    except ValueError:
        raise CommandLineError(f"-device {device.driver}: Property '{key}' doesn't take "
                               f"value '{value}'") from None
    if key == "rerror" and policy is ErrorPolicy.ENOSPC:
        raise CommandLineError(f"-device {device.driver}: 'enospc' invalid read error action")
    return policy


class BlockdevDrive(Drive):
    """A ``-device`` disk over a format node over a storage node."""

    def __init__(self, config: DriveConfig, fmt: BlockNode, storage: BlockNode | None) -> None:
        super().__init__(config, fmt.node_name, 0)
        self.format = fmt
        self.storage = storage
        self.qdev = f"/machine/peripheral/{config.id}/virtio-backend"
        self.filename = (storage.filename if storage is not None else None) or fmt.node_name
        try:
            self.size = os.stat(self.filename).st_size
        except OSError:
            self.size = DEFAULT_SIZE
        self.failed = {"read": 0, "write": 0}

    def fail(self, operation: str, error: int) -> IoErrorOutcome:
        outcome = super().fail(operation, error)
        self.failed[operation] += 1
        outcome.data["device"] = ""  # no BlockBackend name: libvirt uses the node name
        return outcome

    def node_info(self, node: BlockNode) -> dict[str, Any]:
        """One node as ``query-named-block-nodes`` (and ``inserted``) show it."""
        is_format = node is self.format
        return {
            "file": self.filename, "node-name": node.node_name, "ro": node.read_only,
            "drv": node.driver, "backing_file_depth": 0, "encrypted": False,
            "detect_zeroes": "off", "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0,
            "iops_rd": 0, "iops_wr": 0,
            "image": {"filename": self.filename,
                      "format": node.driver if is_format else "file",
                      "dirty-flag": False, "actual-size": 0, "virtual-size": self.size},
            "cache": {"writeback": True, "direct": False, "no-flush": False},
            "write_threshold": 0}

    def nodes(self) -> list[BlockNode]:
        return [self.format] + ([self.storage] if self.storage is not None else [])

    def query(self) -> dict[str, Any]:
        info: dict[str, Any] = {"device": "", "qdev": self.qdev, "type": "unknown",
                                "removable": False, "locked": False,
                                "inserted": self.node_info(self.format)}
        if self.iostatus_enabled:
            info["io-status"] = self.io_status
        return info

    def _stats(self, *, accounted: bool) -> dict[str, Any]:
        stats: dict[str, Any] = dict.fromkeys(_STAT_NAMES, 0)
        stats["timed_stats"] = []
        stats["account_invalid"] = stats["account_failed"] = accounted
        if accounted:
            stats["failed_rd_operations"] = self.failed["read"]
            stats["failed_wr_operations"] = self.failed["write"]
        return stats

    def _node_stats(self, node: BlockNode, *, accounted: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {"node-name": node.node_name,
                                 "stats": self._stats(accounted=accounted)}
        if node is self.storage:
            entry["driver-specific"] = {"driver": "file", "discard-nb-ok": 0,
                                        "discard-nb-failed": 0, "discard-bytes-ok": 0}
        return entry

    def blockstats(self) -> dict[str, Any]:
        """This disk as one element of ``query-blockstats`` (per device)."""
        entry: dict[str, Any] = {"device": "", "qdev": self.qdev,
                                 **self._node_stats(self.format, accounted=True)}
        if self.storage is not None:
            entry["parent"] = self._node_stats(self.storage, accounted=False)
        return entry

    def node_blockstats(self) -> list[dict[str, Any]]:
        """This disk's nodes in ``query-blockstats {"query-nodes": true}``."""
        entries = []
        for node in reversed(self.nodes()):  # creation order: storage, then format
            entry = self._node_stats(node, accounted=False)
            if node is self.format and self.storage is not None:
                entry["parent"] = self._node_stats(self.storage, accounted=False)
            entries.append(entry)
        return entries


class BlockdevLayer(BlockLayer):
    """The machine's ``-device`` disks, found by device id or format node name."""

    def __init__(self, nodes: dict[str, BlockNode], devices: list[Device]) -> None:
        super().__init__([])
        self.by_node: dict[str, BlockdevDrive] = {}
        for device in devices:
            node_name = device.props.get("drive")
            if not isinstance(node_name, str):
                continue
            if device.id is None:
                raise CommandLineError(f"-device {device.driver}: a disk needs an 'id'")
            fmt = nodes[node_name]
            storage = nodes.get(fmt.file) if fmt.file is not None else None
            config = DriveConfig(device.id, _policy(device, "werror", ErrorPolicy.ENOSPC),
                                 _policy(device, "rerror", ErrorPolicy.REPORT))
            drive = BlockdevDrive(config, fmt, storage)
            self.drives[device.id] = drive
            self.by_node[node_name] = drive

    def get(self, device: str) -> Drive | None:
        return self.drives.get(device) or self.by_node.get(device)

    def disks(self) -> list[BlockdevDrive]:
        return list(self.by_node.values())

    def named_nodes(self) -> list[dict[str, Any]]:
        return [drive.node_info(node) for drive in reversed(self.disks())
                for node in drive.nodes()]

    def blockstats(self, *, query_nodes: bool) -> list[dict[str, Any]]:
        if query_nodes:
            return [entry for drive in self.disks() for entry in drive.node_blockstats()]
        return [drive.blockstats() for drive in self.disks()]

