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
    """``ID[,werror=A][,rerror=A][,media=disk|cdrom]`` parsed.

    A disk is a null-co image on an anonymous virtio-blk-pci device; a cdrom is
    an ide-cd device whose tray starts closed and empty (``-drive
    if=none,media=cdrom`` plus ``-device ide-cd``).
    """

    id: str
    werror: ErrorPolicy = ErrorPolicy.ENOSPC
    rerror: ErrorPolicy = ErrorPolicy.REPORT
    media: str = "disk"


def parse_drive(spec: str) -> DriveConfig:
    """Parse a ``--drive`` value; ValueError with QEMU's wording for a bad action."""
    drive_id, *options = spec.split(",")
    if not drive_id or "=" in drive_id:
        raise ValueError(f"{spec!r}: expected ID[,werror=ACTION][,rerror=ACTION]"
                         "[,media=disk|cdrom]")
    policies: dict[str, ErrorPolicy] = {}
    media: str | None = None
    for option in options:
        key, sep, value = option.partition("=")
        if key == "media" and sep and value in ("disk", "cdrom") and media is None:
            media = value
            continue
        if not sep or key not in ("werror", "rerror") or key in policies:
            raise ValueError(f"{spec!r}: unknown or repeated option {option!r}")
        is_read = key == "rerror"
        if value not in ErrorPolicy.__members__.values() or (
                is_read and value == ErrorPolicy.ENOSPC):
            raise ValueError(f"'{value}' invalid {'read' if is_read else 'write'} error action")
        policies[key] = ErrorPolicy(value)
    return DriveConfig(drive_id, **policies, media=media or "disk")


@dataclass(frozen=True, slots=True)
class IoErrorOutcome:
    """What one injected error did: the event's data and whether the VM must stop."""

    data: dict[str, Any]
    stop: bool


@dataclass(frozen=True, slots=True)
class Medium:
    """What is inserted in a drive: an image file, its format driver, its node."""

    filename: str
    driver: str
    read_only: bool
    node_name: str


class Drive:
    """One drive: its policy, its medium and tray, its I/O status."""

    def __init__(self, config: DriveConfig, node_name: str, qdev_index: int) -> None:
        self.config = config
        self.qdev_path = f"/machine/peripheral-anon/device[{qdev_index}]"
        """The QOM path of the drive's anonymous device (virtio-blk-pci or ide-cd)."""
        self.removable = config.media == "cdrom"
        self.tray_open = False
        self.medium = None if self.removable else Medium("null-co://", "null-co", False,
                                                         node_name)
        self._qdev = self.qdev_path if self.removable else f"{self.qdev_path}/virtio-backend"
        self.io_status = "ok"

    @property
    def node_name(self) -> str:
        return self.medium.node_name if self.medium is not None else ""

    @property
    def attached_to(self) -> str:
        """The ``qdev`` of query-block: the virtio backend, or the ide-cd device."""
        return self._qdev

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
        """This drive as one element of QEMU's ``query-block`` reply."""
        # Members in QAPI schema order (BlockInfo, BlockDeviceInfo, ImageInfo), as QEMU
        # builds them; the encoder turns that into QEMU's exact key order.
        info: dict[str, Any] = {
            "device": self.config.id, "qdev": self._qdev, "type": "unknown",
            "removable": self.removable, "locked": False}
        if self.medium is not None:
            info["inserted"] = _inserted(self.medium)
        if self.removable:
            info["tray_open"] = self.tray_open
        if self.iostatus_enabled:
            info["io-status"] = self.io_status
        return info


def _inserted(medium: Medium) -> dict[str, Any]:
    """``BlockDeviceInfo`` of a null-co image (QEMU's values for one)."""
    return {
        "file": medium.filename, "node-name": medium.node_name, "ro": medium.read_only,
        "drv": medium.driver, "backing_file_depth": 0, "encrypted": False,
        "detect_zeroes": "off", "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0,
        "iops_rd": 0, "iops_wr": 0,
        "image": {"filename": medium.filename, "format": medium.driver,
                  "actual-size": 0, "virtual-size": 1 << 30},
        "cache": {"writeback": True, "direct": False, "no-flush": False},
        "write_threshold": 0}


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
        self._rng = rng
        self._used = set(numbers)
        self.drives = {config.id: Drive(config, f"#block{number}", index)
                       for index, (config, number) in enumerate(zip(configs, numbers,
                                                                    strict=True))}

    def new_node_number(self) -> int:
        """A fresh number for an auto node name (``#blockNNN``) not used yet."""
        number = self._rng.choice([n for n in range(100, 1000) if n not in self._used])
        self._used.add(number)
        return number

    def get(self, device: str) -> Drive | None:
        return self.drives.get(device)

    def reset_status(self) -> None:
        """``cont`` clears every device's I/O status (``bdrv_iostatus_reset``)."""
        for drive in self.drives.values():
            drive.io_status = "ok"

    def query(self) -> list[dict[str, Any]]:
        return [drive.query() for drive in self.drives.values()]
