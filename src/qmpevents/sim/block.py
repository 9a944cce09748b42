"""Simulated block devices: ``-drive`` error policies and the BLOCK_IO_ERROR they give.

The rules are QEMU's ``blockdev.c`` and ``block-backend.c``:

* ``werror`` accepts ignore, report, stop, enospc (default enospc);
  ``rerror`` accepts ignore, report, stop (default report);
* the action taken for an error is the policy's, except enospc, which
  stops only for ENOSPC and reports anything else;
* a device's I/O status is tracked ("io-status" in query-block, "nospace" in
  the event) only when werror is stop/enospc or rerror is stop;
* action stop marks the device failed (or nospace) until ``cont``.
"""

from __future__ import annotations

import errno as errno_codes
import os
import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ErrorPolicy(StrEnum):
    """``werror=`` / ``rerror=``."""

    IGNORE = "ignore"
    REPORT = "report"
    STOP = "stop"
    ENOSPC = "enospc"


@dataclass(frozen=True, slots=True)
class DriveConfig:
    """``ID[,werror=A][,rerror=A]`` parsed."""

    id: str
    werror: ErrorPolicy = ErrorPolicy.ENOSPC
    rerror: ErrorPolicy = ErrorPolicy.REPORT


def parse_drive(spec: str) -> DriveConfig:
    """Parse a ``--drive`` value; ValueError with QEMU's wording for a bad action."""
    drive_id, *options = spec.split(",")
    if not drive_id or "=" in drive_id:
        raise ValueError(f"{spec!r}: expected ID[,werror=ACTION][,rerror=ACTION]")
    policies: dict[str, ErrorPolicy] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in ("werror", "rerror") or key in policies:
            raise ValueError(f"{spec!r}: unknown or repeated option {option!r}")
        is_read = key == "rerror"
        if value not in ErrorPolicy.__members__.values() or (
                is_read and value == ErrorPolicy.ENOSPC):
            raise ValueError(f"'{value}' invalid {'read' if is_read else 'write'} error action")
        policies[key] = ErrorPolicy(value)
    return DriveConfig(drive_id, **policies)


@dataclass(frozen=True, slots=True)
class IoErrorOutcome:
    """What one injected error did: the event's data and whether the VM must stop."""

    data: dict[str, Any]
    stop: bool


class Drive:
    """One drive: its policy, its auto node name, its I/O status."""

    def __init__(self, config: DriveConfig, node_name: str, qdev_index: int) -> None:
        self.config = config
        self.node_name = node_name
        self._qdev = f"/machine/peripheral-anon/device[{qdev_index}]/virtio-backend"
        self.io_status = "ok"

    @property
    def qdev_path(self) -> str:
        """The QOM path of the drive's (anonymous virtio-blk-pci) device."""
        return self._qdev.removesuffix("/virtio-backend")

    @property
    def iostatus_enabled(self) -> bool:
        return (self.config.werror in (ErrorPolicy.STOP, ErrorPolicy.ENOSPC)
                or self.config.rerror is ErrorPolicy.STOP)

    def fail(self, operation: str, error: int) -> IoErrorOutcome:
        """Apply the policy to an I/O error with errno *error* (EIO or ENOSPC)."""
        policy = self.config.werror if operation == "write" else self.config.rerror
        if policy is ErrorPolicy.ENOSPC:
            action = "stop" if error == errno_codes.ENOSPC else "report"
        else:
            action = policy.value
        data: dict[str, Any] = {
            "device": self.config.id, "node-name": self.node_name, "operation": operation,
            "action": action, "reason": os.strerror(error)}
        if self.iostatus_enabled:
            data["nospace"] = error == errno_codes.ENOSPC
        stop = action == "stop"
        if stop and self.io_status == "ok":
            self.io_status = "nospace" if error == errno_codes.ENOSPC else "failed"
        return IoErrorOutcome(data, stop)

    def query(self) -> dict[str, Any]:
        """This drive as one element of QEMU's ``query-block`` reply (a null-co disk)."""
        # Members in QAPI schema order (BlockInfo, BlockDeviceInfo, ImageInfo), as QEMU
        # builds them; the encoder turns that into QEMU's exact key order.
        info: dict[str, Any] = {
            "device": self.config.id, "qdev": self._qdev, "type": "unknown",
            "removable": False, "locked": False,
            "inserted": {
                "file": "null-co://", "node-name": self.node_name, "ro": False,
                "drv": "null-co", "backing_file_depth": 0, "encrypted": False,
                "detect_zeroes": "off", "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0,
                "iops_rd": 0, "iops_wr": 0,
                "image": {"filename": "null-co://", "format": "null-co",
                          "dirty-flag": False, "actual-size": 0, "virtual-size": 1 << 30},
                "cache": {"writeback": True, "direct": False, "no-flush": False},
                "write_threshold": 0}}
        if self.iostatus_enabled:
            info["io-status"] = self.io_status
        return info


class BlockLayer:
    """The machine's drives, by id, in command-line order."""

    def __init__(self, configs: list[DriveConfig], rng: random.Random | None = None) -> None:
        rng = rng or random.Random()
        ids = [config.id for config in configs]
        duplicates = {drive_id for drive_id in ids if ids.count(drive_id) > 1}
        if duplicates:
            raise ValueError(f"Duplicate ID '{sorted(duplicates)[0]}' for drive")
        # QEMU names a -drive's node "#block" + a number that differs from run to run.
        numbers = rng.sample(range(100, 1000), len(configs))
        self.drives = {config.id: Drive(config, f"#block{number}", index)
                       for index, (config, number) in enumerate(zip(configs, numbers,
                                                                    strict=True))}

    def get(self, device: str) -> Drive | None:
        return self.drives.get(device)

    def reset_status(self) -> None:
        """``cont`` clears every device's I/O status (``bdrv_iostatus_reset``)."""
        for drive in self.drives.values():
            drive.io_status = "ok"

    def query(self) -> list[dict[str, Any]]:
        return [drive.query() for drive in self.drives.values()]
