"""The simulator's argument errors, HMP texts and shipped capture against real QEMU 7.2."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from conformance.harness import HALT_FIRMWARE
from qemu_support import QemuProcess, requires_qemu

from qmpevents.qapi import load_capture
from qmpevents.sim import SimulatedVM
from qmpevents.testing import RawQMP

pytestmark = [pytest.mark.qemu, requires_qemu]

sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))
from capture_qemu_schema import QEMU_ARGS, SIM_DRIVES, capture  # noqa: E402

#: Requests whose only fault is in their arguments (QEMU's input visitor answers them).
WRONG_ARGUMENTS: list[tuple[str, dict[str, Any]]] = [
    ("eject", {"id": 1}), ("eject", {"id": "x", "bogus": 1, "zzz": 2}),
    ("eject", {"id": "x", "force": "yes"}), ("blockdev-add", {}),
    ("blockdev-add", {"driver": "nope"}),
    ("blockdev-add", {"driver": "null-co", "node-name": "n", "size": "big"}),
    ("blockdev-add", {"driver": "null-co", "node-name": "n", "bogus": 1}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": 5}),
    ("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {"driver": "null-co",
                                                                     "x": 1}}),
    ("migrate-set-capabilities", {"capabilities": [{"capability": "events"}]}),
    ("migrate-set-capabilities", {"capabilities": [{"capability": "bad", "state": True}]}),
    ("migrate-set-capabilities", {"capabilities": {"capability": "bad"}}),
    ("set_password", {"protocol": "vnc"}),
    ("set_password", {"protocol": "vnc", "password": "x", "display": 3}),
    ("set_password", {"protocol": "spice", "password": "x", "connected": "bogus"}),
    ("qom-list", {"path": None}), ("device_del", {}), ("human-monitor-command", {}),
    ("screendump", {"filename": 1}), ("query-status", {"x": 1}), ("stop", {"a": 1}),
    ("block_set_io_throttle", {"id": "x"}), ("migrate-set-parameters", {"tls-creds": 5}),
    ("expire_password", {"protocol": "vnc", "time": 5}),
    ("transaction", {"actions": [{"type": "bogus"}]}),
    ("transaction", {"actions": [{"type": "abort", "data": {"x": 1}}]}),
    ("send-key", {"keys": [{"type": "qcode", "data": "nokey"}]}),
    ("send-key", {"keys": [{"type": "number", "data": 1.5}]}),
    ("balloon", {"value": 1.5}), ("balloon", {"value": 18446744073709551615}),
    ("qmp_capabilities", {"enable": ["bogus"]}),
    ("device_del", {"id": "nope"}), ("qom-list", {"path": "/nope"}),
]
HMP = ["info status", "info name", "info version", "info block", "info kvm", "stop",
       "info status", "cont", "info status", "system_reset", "bogus", "bogus x",
       "info bogus", "info bogus x", "  info   name  "]
_NODE = re.compile(rb"#block\d+")
_STAMP = re.compile(rb'"seconds": \d+, "microseconds": \d+')
CD = "/machine/peripheral-anon/device[1]"
MEDIA: list[tuple[str, dict[str, Any]]] = [
    ("eject", {"device": "drive0"}), ("eject", {"id": "nope"}), ("eject", {}),
    ("eject", {"device": "cd0", "id": CD}), ("eject", {"id": CD}), ("query-block", {}),
    ("eject", {"device": "cd0"}), ("blockdev-close-tray", {"device": "cd0"}),
    ("blockdev-remove-medium", {"device": "cd0"}),
    ("blockdev-change-medium", {"device": "cd0", "filename": "null-co://"}),
    ("query-block", {}), ("blockdev-change-medium", {"id": CD, "filename": "null-co://",
                                                     "format": "null-co"}),
    ("blockdev-change-medium", {"device": "drive0", "filename": "null-co://"}),
    ("human-monitor-command", {"command-line": "info block"}),
    ("eject", {"device": "cd0", "force": True}), ("blockdev-open-tray", {"device": "cd0"}),
    ("human-monitor-command", {"command-line": "info block"}),
    ("qom-list", {"path": "/machine/peripheral-anon"}),
    ("qom-get", {"path": CD, "property": "type"}), ("device_del", {"id": CD}),
    ("qom-get", {"path": CD, "property": "nope"}), ("qom-get", {"path": "/nope", "property": "x"}),
    ("qom-list", {"path": "/chardevs"}), ("qom-list", {"path": "/machine/peripheral"}),
    ("human-monitor-command", {"command-line": "help"}),
    ("human-monitor-command", {"command-line": "info"}),
    ("query-name", {}), ("query-kvm", {}), ("query-vnc", {}), ("query-vnc-servers", {}),
    ("query-status", {}), ("query-hotpluggable-cpus", {}), ("query-memdev", {}),
    ("set_password", {"protocol": "vnc", "password": "x"}),
    ("set_password", {"protocol": "vnc", "password": "x", "connected": "fail"}),
    ("expire_password", {"protocol": "vnc", "time": "now"}),
    ("set_password", {"protocol": "spice", "password": "x"}),
    ("expire_password", {"protocol": "spice", "time": "now"}),
    ("screendump", {"filename": "/nonexistent/s.ppm"}),
    *((name, {"device": "x"}) for name in ("block-job-cancel", "block-job-pause",
                                           "block-job-resume", "block-job-complete")),
    ("block-job-set-speed", {"device": "x", "speed": 1}),
    ("block-job-dismiss", {"id": "x"}), ("block-job-finalize", {"id": "x"}),
    *((name, {"id": "x"}) for name in ("job-cancel", "job-pause", "job-resume",
                                       "job-complete", "job-dismiss", "job-finalize")),
    ("system_wakeup", {}), ("inject-nmi", {}), ("set_link", {"name": "x", "up": True}),
    ("rtc-reset-reinjection", {}), ("netdev_del", {"id": "x"}), ("chardev-remove", {"id": "x"}),
    ("object-del", {"id": "x"}), ("blockdev-del", {"node-name": "x"}),
    ("closefd", {"fdname": "x"}), ("migrate_cancel", {}), ("balloon", {"value": 1}),
    ("x-exit-preconfig", {}), ("send-key", {"keys": [{"type": "qcode", "data": "a"}]}),
]


async def _replies(path: str, requests: list[bytes]) -> list[bytes]:
    qmp = await RawQMP.unix(path, retry=True)
    await qmp.negotiate()
    replies = []
    for request in requests:
        await qmp.send(request + b"\r\n")
        while (line := await qmp.line()).startswith(b'{"timestamp"'):
            replies.append(_STAMP.sub(b"S", line))
        replies.append(_NODE.sub(b"#blockN", line))
    await qmp.aclose()
    return replies


def _requests() -> list[bytes]:
    requests = [json.dumps({"execute": name, "arguments": args, "id": index}).encode()
                for index, (name, args) in enumerate(WRONG_ARGUMENTS)]
    requests += [json.dumps({"execute": "human-monitor-command",
                             "arguments": {"command-line": line}, "id": f"h{index}"}).encode()
                 for index, line in enumerate(HMP)]
    return requests


def _qemu_args(tmp_path: Path, *extra: str) -> list[str]:
    """QEMU on the machine the simulator models, with a firmware that only halts.

    SeaBIOS would probe the devices once the VM runs (closing the cdrom's tray,
    switching virtio-blk to writethrough) at moments of its own; the simulator
    has no firmware (see tests/conformance/harness.py).
    """
    firmware = tmp_path / "halt.bin"
    firmware.write_bytes(HALT_FIRMWARE)
    args = [arg for arg in QEMU_ARGS if arg != "-S"]
    return ["-bios", str(firmware), *args[args.index("-name"):], *extra]


async def test_argument_errors_and_hmp_match_real_qemu(tmp_path: Path) -> None:
    async with QemuProcess(*_qemu_args(tmp_path)) as qemu:
        await _replies(qemu.socket_path, [b'{"execute": "cont"}'])
        theirs = await _replies(qemu.socket_path, _requests())
    async with SimulatedVM(profile="qemu-7.2", name="qmpevents-sim",
                           drives=SIM_DRIVES) as vm:
        ours = await _replies(vm.socket_path, _requests())
    assert [line.decode() for line in ours] == [line.decode() for line in theirs]


async def test_media_and_state_queries_match_real_qemu(tmp_path: Path) -> None:
    requests = [json.dumps({"execute": name, "arguments": args, "id": index}).encode()
                for index, (name, args) in enumerate(MEDIA)]
    async with QemuProcess(*_qemu_args(tmp_path)) as qemu:
        await _replies(qemu.socket_path, [b'{"execute": "cont"}'])
        theirs = await _replies(qemu.socket_path, requests)
    async with SimulatedVM(profile="qemu-7.2", name="qmpevents-sim",
                           drives=SIM_DRIVES) as vm:
        ours = await _replies(vm.socket_path, requests)
    assert [line.decode() for line in ours] == [line.decode() for line in theirs]


def test_shipped_capture_is_what_the_installed_qemu_answers() -> None:
    live = capture()
    shipped = load_capture()
    for key in ("query-qmp-schema", "query-commands", "query-version", "qemu-args"):
        assert live[key] == shipped[key], key
    assert live["hmp"]["info version"] == shipped["hmp"]["info version"]
    assert live["queries"].keys() == shipped["queries"].keys()


_RUN_TIME = [(re.compile(rb'"thread-id": \d+'), b'"thread-id": T'),  # host thread ids
             (re.compile(rb'unix:[^,"]*\.sock'), b"unix:SOCKET")]  # where each listens


def _bytes_mask(line: bytes) -> bytes:
    for pattern, replacement in _RUN_TIME:
        line = pattern.sub(replacement, line)
    return line


async def test_every_query_reply_is_byte_for_byte_qemus(tmp_path: Path) -> None:
    names = sorted(load_capture()["queries"])
    requests = [json.dumps({"execute": name}).encode() for name in names]
    async with QemuProcess(*_qemu_args(tmp_path)) as qemu:
        await _replies(qemu.socket_path, [b'{"execute": "cont"}'])
        theirs = await _replies(qemu.socket_path, requests)
    async with SimulatedVM(profile="qemu-7.2", name="qmpevents-sim",
                           drives=SIM_DRIVES) as vm:
        ours = await _replies(vm.socket_path, requests)
    for name, qemu_line, sim_line in zip(names, theirs, ours, strict=True):
        if name in ("query-commands", "query-qmp-schema"):  # ours go on with the x-sim-*
            head = qemu_line.removesuffix(b"]}\r\n")
            assert sim_line.startswith(head + b", {") and b"x-sim-io-error" in sim_line, name
            continue
        assert _bytes_mask(sim_line) == _bytes_mask(qemu_line), name
