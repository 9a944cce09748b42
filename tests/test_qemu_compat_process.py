"""The ``qmpevents-qemu`` executable as libvirt runs it: probe (-daemonize) and domain mode."""

from __future__ import annotations

import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_qemu_compat_cmdline import DOMAIN, PROBE
from test_server_one_client import patient_unix_connect

EXE = str(Path(sys.executable).with_name("qmpevents-qemu"))
DEADLINE = 10.0


class Monitor:
    """A blocking QMP client for these tests (lines, CRLF as libvirt needs)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(DEADLINE)
        self.sock = sock
        self.file = sock.makefile("rb")
        self.greeting = json.loads(self.file.readline())
        self.events: list[dict[str, Any]] = []
        assert self.ask("qmp_capabilities") == {"return": {}}

    def ask(self, name: str, **arguments: Any) -> dict[str, Any]:
        request: dict[str, Any] = {"execute": name}
        if arguments:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            raw = self.file.readline()
            assert raw.endswith(b"\r\n"), raw  # libvirt 9.0 splits on CRLF only
            message = json.loads(raw)
            if "event" in message:
                self.events.append(message)
            else:
                return dict(message)

    def read_event(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.file.readline())
        return message


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="qmpev-compat-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _wait_exit(pid: int) -> None:
    """Wait for a process that is not our child (a daemon) to exit: its pidfd says so."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already gone
    try:
        readable, _, _ = select.select([fd], [], [], DEADLINE)
        assert readable, f"process {pid} still runs after {DEADLINE} s"
    finally:
        os.close(fd)


def test_probe_mode_daemonizes_once_listening(workdir: Path) -> None:
    argv = [a.replace("/var/lib/libvirt/qemu/qmp-LY5CZ3", str(workdir)) for a in PROBE]
    done = subprocess.run([EXE, *argv], capture_output=True, timeout=DEADLINE, check=False)
    assert done.returncode == 0, done.stderr
    pid = int((workdir / "qmp.pid").read_text())
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(workdir / "qmp.monitor"))  # listening before the parent exited
    monitor = Monitor(sock)
    assert monitor.greeting["QMP"]["version"]["qemu"] == {"micro": 22, "minor": 2, "major": 7}
    assert monitor.ask("query-kvm") == {"return": {"enabled": False, "present": False}}
    assert monitor.ask("query-cpus-fast") == {"return": []}  # -machine none: no CPU
    not_found = monitor.ask("device-list-properties", typename="virtio-net-ccw")
    assert not_found["error"]["class"] == "DeviceNotFound"
    os.kill(pid, signal.SIGTERM)
    event = monitor.read_event()
    assert (event["event"], event["data"]) == ("SHUTDOWN", {"guest": False,
                                                            "reason": "host-signal"})
    _wait_exit(pid)
    assert not (workdir / "qmp.pid").exists()


def test_probe_mode_parent_fails_when_the_child_cannot_listen(workdir: Path) -> None:
    argv = [a.replace("/var/lib/libvirt/qemu/qmp-LY5CZ3", str(workdir / "missing"))
            for a in PROBE]
    done = subprocess.run([EXE, *argv], capture_output=True, timeout=DEADLINE, check=False)
    assert done.returncode == 1


def test_unknown_option_exits_1_with_a_message() -> None:
    done = subprocess.run([EXE, "-bogus"], capture_output=True, text=True, timeout=DEADLINE,
                          check=False)
    assert (done.returncode, done.stderr) == (1, "qmpevents-qemu: -bogus: invalid option\n")


def test_domain_mode_serves_the_inherited_listening_socket(workdir: Path) -> None:
    path = str(workdir / "monitor.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    fd = listener.fileno()
    argv = [a.replace("fd=28", f"fd={fd}").replace("WORKDIR", str(workdir)) for a in DOMAIN]
    argv[argv.index("-vnc") + 1] = "none"
    process = subprocess.Popen([EXE, *argv], pass_fds=[fd], stderr=subprocess.PIPE)
    listener.close()
    try:
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        monitor = Monitor(client)
        assert monitor.ask("query-status")["return"]["status"] == "prelaunch"
        cpus = monitor.ask("query-cpus-fast")["return"]
        tids = [cpu["thread-id"] for cpu in cpus]
        assert len(set(tids)) == 2 and process.pid not in tids
        for tid in tids:  # real threads of the emulator, as libvirt's cgroup code needs
            assert Path(f"/proc/{process.pid}/task/{tid}").exists()
            assert Path(f"/proc/{process.pid}/task/{tid}/comm").read_text().startswith("CPU ")
        assert monitor.ask("cont") == {"return": {}}
        assert monitor.ask("x-sim-io-error", device="virtio-disk0", operation="write") == {
            "return": {}}
        names = [e["event"] for e in monitor.events]
        assert names == ["RESUME", "BLOCK_IO_ERROR", "STOP"]
        assert monitor.events[1]["data"]["device"] == ""
        assert monitor.events[1]["data"]["node-name"] == "libvirt-2-format"
        block = monitor.ask("query-block")["return"]
        assert [b["io-status"] for b in block if "io-status" in b] == ["failed"]
        peripheral = monitor.ask("qom-list", path="/machine/peripheral")["return"]
        assert {"name": "balloon0", "type": "child<virtio-balloon-pci>"} in peripheral
        assert monitor.ask("balloon", value=48 << 20) == {"return": {}}
        assert monitor.ask("query-balloon") == {"return": {"actual": 48 << 20}}
        chardev = monitor.ask("query-chardev")["return"]
        assert chardev == [{"frontend-open": True, "filename": f"unix:{path},server=on",
                            "label": "charmonitor"}]
        process.send_signal(signal.SIGTERM)
        assert monitor.read_event()["data"] == {"guest": False, "reason": "host-signal"}
        assert process.wait(DEADLINE) == 0
        assert os.path.exists(path)  # libvirt's socket file: not ours to remove
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()


def _start(workdir: Path, *args: str, env: dict[str, str] | None = None,
           ) -> tuple[subprocess.Popen[bytes], Monitor]:
    path = workdir / "qmp.sock"
    process = subprocess.Popen([EXE, "-qmp", f"unix:{path},server=on,wait=off", *args],
                               env={**os.environ, **(env or {})})
    try:
        return process, Monitor(connect_when_listening(process, path))
    except BaseException:
        _reap(process)
        raise


def connect_when_listening(process: subprocess.Popen[bytes], path: Path) -> socket.socket:
    """The socket file exists from bind(); connections succeed from listen() on."""
    deadline = time.monotonic() + DEADLINE
    while True:
        assert process.poll() is None, "the emulator exited"
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            assert time.monotonic() < deadline, f"nothing listens on {path}"
            time.sleep(0.02)


def _reap(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


def test_kvm_is_absent_unless_asked(workdir: Path) -> None:
    process, monitor = _start(workdir, env={"QMPEVENTS_QEMU_KVM": "1"})
    try:
        assert monitor.ask("query-kvm") == {"return": {"enabled": True, "present": True}}
    finally:
        _reap(process)


def test_a_guest_without_acpi_ignores_the_power_button(workdir: Path) -> None:
    process, monitor = _start(workdir, "-no-acpi")
    try:
        assert monitor.ask("system_powerdown") == {"return": {}}
        assert [e["event"] for e in monitor.events] == ["POWERDOWN"]
        assert monitor.ask("query-status")["return"]["status"] == "running"
    finally:
        _reap(process)


def test_the_guest_obeys_the_power_button(workdir: Path) -> None:
    process, monitor = _start(workdir, "-no-shutdown")
    try:
        assert monitor.ask("system_powerdown") == {"return": {}}
        shutdown = monitor.read_event()
        assert (shutdown["event"], shutdown["data"]) == (
            "SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
        assert monitor.read_event()["event"] == "STOP"
        assert monitor.ask("query-status")["return"]["status"] == "shutdown"
    finally:
        _reap(process)


def test_recorded_commands_with_other_arguments_fail_cleanly(workdir: Path) -> None:
    process, monitor = _start(workdir, "-machine", "none")
    try:
        missing = monitor.ask("device-list-properties", typename="no-such-device")
        assert missing["error"] == {"class": "DeviceNotFound",
                                    "desc": "Device 'no-such-device' not found"}
        other = monitor.ask("query-cpu-model-expansion", type="full", model={"name": "x"})
        assert other["error"]["class"] == "GenericError"
        unknown = monitor.ask("no-such-command")
        assert unknown["error"]["class"] == "CommandNotFound"
        assert monitor.ask("query-target") == {"return": {"arch": "x86_64"}}
    finally:
        _reap(process)


def _limit_address_space() -> None:
    """1 GiB of address space, 8 MiB thread stacks: fewer than 128 threads fit."""
    resource.setrlimit(resource.RLIMIT_STACK, (8 << 20, 8 << 20))
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_a_vcpu_thread_the_host_refuses_is_a_one_line_error(workdir: Path) -> None:
    """255 vCPUs (the machine's bound) under a real limit: QEMU's bound is not the host's."""
    done = subprocess.run([EXE, "-qmp", f"unix:{workdir / 'qmp.sock'},server=on,wait=off",
                           "-smp", "255"], capture_output=True, text=True, timeout=DEADLINE,
                          check=False, preexec_fn=_limit_address_space)
    assert done.returncode == 1
    assert re.fullmatch(r"qmpevents-qemu: cannot start vCPU thread \d+ of 255: .+\n",
                        done.stderr), done.stderr
    assert not (workdir / "qmp.sock").exists()  # never listened


def test_the_inherited_monitor_accepts_nothing_while_a_client_is_on(workdir: Path) -> None:
    """As QEMU: 300 clients that connect and give up meanwhile cost the emulator no fd."""
    path = str(workdir / "monitor.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    fd = listener.fileno()
    process = subprocess.Popen([EXE, "-S", "-chardev", f"socket,id=charmonitor,fd={fd},"
                                "server=on,wait=off", "-mon", "chardev=charmonitor,mode=control"],
                               pass_fds=[fd])
    listener.close()
    try:
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        monitor = Monitor(client)
        fds = len(os.listdir(f"/proc/{process.pid}/fd"))
        for index in range(300):
            gave_up = socket.socket(socket.AF_UNIX)
            gave_up.setblocking(False)
            gave_up.connect_ex(path)  # 0, or EAGAIN once the backlog is full
            gave_up.close()
            if index % 30 == 29:  # a round trip: the emulator ran with them pending
                assert monitor.ask("query-status")["return"]["status"] == "prelaunch"
        assert len(os.listdir(f"/proc/{process.pid}/fd")) == fds
        monitor.file.close()  # the socket's fd stays open while its file object is
        client.close()
        patient = patient_unix_connect(path)  # waits while they are being dropped
        second = Monitor(patient)
        assert second.ask("query-status")["return"]["status"] == "prelaunch"
        second.file.close()
        patient.close()
    finally:
        _reap(process)
