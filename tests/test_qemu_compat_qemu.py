"""Real QEMU 7.2 is the witness for qmpevents-qemu's replies.

* the shipped probe data is what the installed QEMU answers today (re-captured);
* for libvirt's own domain command line, qmpevents-qemu and real QEMU give the same
  replies to the commands libvirt sends at start-up and for statistics (thread ids
  and the VNC/KVM facts that differ by design aside).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu_support import qemu_binary, requires_qemu
from test_qemu_compat_cmdline import DOMAIN
from test_qemu_compat_process import Monitor, connect_when_listening
from test_server_one_client import patient_unix_connect

from qmpevents.qemu_compat.capture import capture, load

pytestmark = [pytest.mark.qemu, requires_qemu]

SIM = str(Path(sys.executable).with_name("qmpevents-qemu"))

QUERIES: list[tuple[str, dict[str, Any] | None]] = [
    ("query-status", None),
    ("query-block", None),
    ("query-named-block-nodes", {"flat": True}),
    ("query-blockstats", None),
    ("query-blockstats", {"query-nodes": True}),
    ("query-hotpluggable-cpus", None),
    ("query-cpus-fast", None),
    ("query-chardev", None),
    ("query-iothreads", None),
    ("query-dirty-rate", None),
    ("query-balloon", None),
    ("qom-list", {"path": "/machine/peripheral"}),
    ("qom-list", {"path": "/machine/peripheral/balloon0"}),
    ("qom-get", {"path": "/machine/peripheral/balloon0", "property": "guest-stats"}),
    ("qom-list", {"path": "/machine/unattached/device[0]"}),
    ("qom-get", {"path": "/machine/unattached/device[0]", "property": "family"}),
    ("query-stats-schemas", None),
    ("query-stats", {"target": "vm"}),
    ("query-stats", {"target": "vcpu"}),
    ("query-migrate-capabilities", None),
    ("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]}),
    ("query-migrate-capabilities", None),
    ("balloon", {"value": 50331648}),
    ("query-name", None),
    ("query-uuid", None),
]


def test_shipped_replies_are_the_installed_qemus() -> None:
    binary = qemu_binary()
    assert binary is not None
    assert capture(binary) == load()


def _ask_all(argv: list[str], socket_path: Path) -> list[Any]:
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        sock = connect_when_listening(process, socket_path)
        sock.settimeout(10)
        stream = sock.makefile("rb")
        stream.readline()
        replies = []
        for name, arguments in [("qmp_capabilities", None), *QUERIES]:
            request: dict[str, Any] = {"execute": name}
            if arguments is not None:
                request["arguments"] = arguments
            sock.sendall(json.dumps(request).encode() + b"\r\n")
            while True:
                message = json.loads(stream.readline())
                if "event" not in message:
                    break
            replies.append(message)
        sock.close()
        return replies[1:]
    finally:
        process.kill()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="qmpev-compat-q-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _domain_argv(workdir: Path, monitor: Path) -> list[str]:
    argv = [a.replace("WORKDIR/img", str(workdir)) for a in DOMAIN]
    # No secret object (needs libvirt's key file), no VNC: the rest is libvirt's line as is.
    index = argv.index("-object")
    del argv[index:index + 2]
    argv[argv.index("-vnc") + 1] = "none"
    argv[argv.index("-chardev") + 1] = f"socket,id=charmonitor,path={monitor},server=on,wait=off"
    return argv


def _normalize(reply: Any) -> Any:
    """Thread ids are the host's; everything else must be equal."""
    if isinstance(reply, dict):
        return {k: ("TID" if k == "thread-id" and v > 1 else _normalize(v))
                for k, v in reply.items()}
    if isinstance(reply, list):
        return [_normalize(v) for v in reply]
    return reply


def test_domain_replies_match_real_qemu(workdir: Path) -> None:
    for name in ("disk.raw", "disk2.raw"):
        with open(workdir / name, "wb") as image:
            image.truncate(16 << 20)
    binary = qemu_binary()
    assert binary is not None
    real_sock, sim_sock = workdir / "real.sock", workdir / "sim.sock"
    real = _ask_all([binary, *_domain_argv(workdir, real_sock)], real_sock)
    sim = _ask_all([SIM, *_domain_argv(workdir, sim_sock)], sim_sock)
    for (name, arguments), theirs, ours in zip(QUERIES, real, sim, strict=True):
        theirs = _normalize(theirs)
        ours = _normalize(ours)
        if name == "qom-list":  # QOM keeps children in a GLib hash table: order is not API
            theirs["return"].sort(key=json.dumps)
            ours["return"].sort(key=json.dumps)
        if name == "query-chardev":
            ours = json.loads(json.dumps(ours).replace(str(sim_sock), str(real_sock)))
        assert ours == theirs, f"{name} {arguments}"
    assert os.path.exists(workdir / "disk.raw")


@pytest.mark.parametrize("args", [
    ["-smp", "100000"],
    ["-smp", "256,sockets=256", "-machine", "pc"],
    ["-machine", "q35", "-smp", "289"],
    ["-machine", "pc-q35-2.7", "-smp", "256"],
    ["-machine", "none", "-smp", "2"],
    ["-smp", "1,maxcpus=256"],
    ["-blockdev", "driver=null-co,node-name=a",
     "-blockdev", '{"driver":"null-co","node-name":"a"}'],
    ["-smp", "300", "-blockdev", "driver=null-co,node-name=a",
     "-blockdev", "driver=null-co,node-name=a"],  # QEMU reports the duplicate first
])
def test_refused_command_lines_fail_as_real_qemu_does(workdir: Path, args: list[str]) -> None:
    """Same exit status, same one-line message (after the program name) as QEMU 7.2."""
    binary = qemu_binary()
    assert binary is not None
    results = []
    for program in (binary, SIM):
        argv = [program, "-S", "-nodefaults", "-display", "none",
                "-qmp", f"unix:{workdir / 'qmp.sock'},server=on,wait=off", *args]
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=15, check=False)
        results.append((done.returncode,
                        done.stderr.removeprefix(f"{Path(program).name}: ")))
    real, ours = results
    assert real[0] == 1 and real[1].count("\n") == 1, real
    assert ours == real


@pytest.mark.parametrize("emulator", ["qemu", "sim"])
def test_clients_that_give_up_while_one_is_served_cost_no_descriptor(
        workdir: Path, emulator: str) -> None:
    """QEMU accepts nothing while its monitor has a client; qmpevents-qemu does the same."""
    binary = qemu_binary() if emulator == "qemu" else SIM
    assert binary is not None
    path = workdir / "qmp.sock"
    process = subprocess.Popen([binary, "-S", "-nodefaults", "-display", "none",
                                "-qmp", f"unix:{path},server=on,wait=off"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        first = Monitor(connect_when_listening(process, path))
        fds = len(os.listdir(f"/proc/{process.pid}/fd"))
        for index in range(300):
            gave_up = socket.socket(socket.AF_UNIX)
            gave_up.setblocking(False)
            gave_up.connect_ex(str(path))  # 0, or EAGAIN once the backlog is full
            gave_up.close()
            if index % 30 == 29:  # a round trip: the emulator ran with them pending
                assert first.ask("query-status")["return"]["status"] == "prelaunch"
        assert len(os.listdir(f"/proc/{process.pid}/fd")) == fds
        first.file.close()
        first.sock.close()
        second = Monitor(patient_unix_connect(str(path)))  # greeted once they are dropped
        assert second.ask("query-status")["return"]["status"] == "prelaunch"
        second.file.close()
        second.sock.close()
    finally:
        process.kill()
        process.wait()


def test_version_is_what_real_qemu_prints() -> None:
    binary = qemu_binary()
    assert binary is not None
    ours = subprocess.run([SIM, "-version"], capture_output=True, text=True, timeout=30)
    qemu = subprocess.run([binary, "-version"], capture_output=True, text=True, timeout=30)
    assert (ours.returncode, ours.stdout) == (qemu.returncode, qemu.stdout) == (0, qemu.stdout)
    assert qemu.stdout.startswith("QEMU emulator version 7.2.")
