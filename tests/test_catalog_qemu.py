"""Events provoked from real QEMU 7.2 are typed and pass ``validate(..., "qemu-7.2")``.

The witness for the schema-derived part of the catalog: QEMU itself emits the
events (tray moves, block jobs, USB unplug, migration), nothing is written by
hand here except the commands that provoke them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from qemu_support import QemuProcess, requires_qemu

from qmpevents.catalog import EVENT_TYPES, UnknownEvent, decode_event, validate
from qmpevents.errors import EventValidationError
from qmpevents.testing import RawQMP

pytestmark = [pytest.mark.qemu, requires_qemu]

QEMU_ARGS = ("-drive", "if=none,id=cd0,media=cdrom", "-device", "ide-cd,drive=cd0,id=cd",
             "-device", "qemu-xhci,id=usb", "-blockdev", "null-co,node-name=src,size=1048576")


def _commands(workdir: Path) -> list[dict[str, Any]]:
    def mirror(job: str, target: str, **options: Any) -> list[dict[str, Any]]:
        return [{"execute": "blockdev-add", "arguments": {"driver": "null-co",
                                                          "node-name": target, "size": 1 << 20}},
                {"execute": "blockdev-mirror", "arguments": {"job-id": job, "device": "src",
                                                             "target": target, "sync": "full",
                                                             **options}}]
    return [
        {"execute": "eject", "arguments": {"id": "cd"}},
        {"execute": "blockdev-change-medium",
         "arguments": {"id": "cd", "filename": "null-co://", "format": "raw"}},
        *mirror("j1", "t1"),
        {"execute": "job-complete", "arguments": {"id": "j1"}},
        *mirror("j2", "t2", **{"auto-dismiss": False}),
        {"execute": "block-job-cancel", "arguments": {"device": "j2", "force": True}},
        {"execute": "job-dismiss", "arguments": {"id": "j2"}},
        {"execute": "device_add", "arguments": {"driver": "usb-tablet", "id": "tab"}},
        {"execute": "device_del", "arguments": {"id": "tab"}},
        {"execute": "stop"}, {"execute": "cont"}, {"execute": "system_reset"},
        {"execute": "system_powerdown"},
        {"execute": "migrate-set-capabilities",  # last: a migrated VM stays stopped
         "arguments": {"capabilities": [{"capability": "events", "state": True}]}},
        {"execute": "migrate", "arguments": {"uri": f"exec:cat > {workdir / 'migration'}"}},
    ]


async def _wait_for(qmp: RawQMP, name: str, lines: list[bytes], timeout: float = 20.0,
                    **data: Any) -> None:
    """Read until an event *name* with *data* arrived (unplug and migration end later)."""
    def arrived(line: bytes) -> bool:
        message = json.loads(line)
        return bool(message.get("event") == name
                    and data.items() <= message.get("data", {}).items())

    while not any(arrived(line) for line in lines):
        line = await qmp.line(timeout)
        lines.append(line)


async def test_real_qemu_events_are_typed_and_valid(tmp_path: Path) -> None:
    async with QemuProcess(*QEMU_ARGS) as qemu:
        qmp = await RawQMP.unix(qemu.socket_path, retry=True)
        await qmp.negotiate()
        lines: list[bytes] = []
        for command in _commands(tmp_path):
            await qmp.send(json.dumps(command).encode() + b"\r\n")
            lines += await qmp.sync()
        await _wait_for(qmp, "DEVICE_DELETED", lines)
        await _wait_for(qmp, "MIGRATION", lines, status="completed")
        await qmp.aclose()
    events = [line.rstrip(b"\r\n") for line in lines if b'"event"' in line]
    names = {json.loads(line)["event"] for line in events}
    assert {"DEVICE_TRAY_MOVED", "JOB_STATUS_CHANGE", "BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED",
            "BLOCK_JOB_CANCELLED", "DEVICE_DELETED", "MIGRATION", "MIGRATION_PASS", "STOP",
            "RESUME", "RESET", "POWERDOWN"} <= names
    for line in events:
        event = decode_event(line)
        assert not isinstance(event, UnknownEvent), line
        assert type(event) is EVENT_TYPES[event.name]
        validate(line, "qemu-7.2")
    tray = next(decode_event(line) for line in events if b"DEVICE_TRAY_MOVED" in line)
    assert (tray.data.device, tray.data.id, tray.data.tray_open) == ("cd0", "cd", True)
    # One member changed is one precise complaint.
    mutated = events[0].replace(b'"data": {', b'"data": {"bogus": 1, ', 1)
    with pytest.raises(EventValidationError, match="unknown field `bogus`"):
        validate(mutated, "qemu-7.2")
