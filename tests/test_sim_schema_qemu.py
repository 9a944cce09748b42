"""The simulator's argument errors, HMP texts and shipped capture against real QEMU 7.2."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from qemu_support import QemuProcess, RawQMP, requires_qemu

from qmpevents.qapi import load_capture
from qmpevents.sim import SimulatedVM

pytestmark = [pytest.mark.qemu, requires_qemu]

sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))
from capture_qemu_schema import QEMU_ARGS, capture  # noqa: E402

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
       "info status", "cont", "info status", "system_reset"]
_NODE = re.compile(rb"#block\d+")


async def _replies(path: str, requests: list[bytes]) -> list[bytes]:
    qmp = await RawQMP.open(path)
    await qmp.negotiate()
    replies = []
    for request in requests:
        await qmp.send(request + b"\r\n")
        while b'"event"' in (line := await qmp.read_line()):  # events: name only
            replies.append(json.dumps(json.loads(line)["event"]).encode())
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


async def test_argument_errors_and_hmp_match_real_qemu() -> None:
    # QEMU on the machine the simulator models, the VM running, as the simulator starts.
    args = [arg for arg in QEMU_ARGS if arg != "-S"]
    async with QemuProcess(*args[args.index("-name"):]) as qemu:
        await _replies(qemu.socket_path, [b'{"execute": "cont"}'])
        theirs = await _replies(qemu.socket_path, _requests())
    async with SimulatedVM(profile="qemu-7.2", name="qmpevents-sim",
                           drives=["drive0"]) as vm:
        ours = await _replies(vm.socket_path, _requests())
    assert [line.decode() for line in ours] == [line.decode() for line in theirs]


def test_shipped_capture_is_what_the_installed_qemu_answers() -> None:
    live = capture()
    shipped = load_capture()
    for key in ("query-qmp-schema", "query-commands", "query-version", "qemu-args"):
        assert live[key] == shipped[key], key
    assert live["hmp"]["info version"] == shipped["hmp"]["info version"]
    assert live["queries"].keys() == shipped["queries"].keys()
