"""libvirt 9.0 runs domains on ``qmpevents-qemu``: the peer is libvirt itself.

A private libvirtd (see ``libvirt_support``) defines and starts a domain whose
``<emulator>`` is the installed ``qmpevents-qemu``, with a ``werror=stop`` disk, a
``werror=report`` disk, VNC on loopback and a virtio balloon.  ``virsh event --all
--loop`` and a python3-libvirt event-API consumer watch while the test suspends,
resumes, resets, injects an I/O error on each disk and an RTC change with ``virsh
qemu-monitor-command``, connects a real VNC viewer (vncsnapshot), reads the
statistics, shuts down, starts again and destroys.  Every event is checked
against the QMP -> libvirt mapping observed with real QEMU
(``shared/spec/libvirt/domain-commands.txt``), and the same scenario with real
QEMU 7.2 as emulator gives the same events for what QEMU supports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from libvirt_support import (
    SYSTEM_PYTHON,
    EventWatcher,
    Libvirt,
    domain_xml,
    requires_libvirt,
    running_libvirtd,
    wait_for,
)
from qemu_support import qemu_binary

SIM_EMULATOR = str(Path(sys.executable).with_name("qmpevents-qemu"))
CONSUMER = Path(__file__).with_name("libvirt_event_consumer.py")

pytestmark = [requires_libvirt, pytest.mark.service]  # starts libvirtd and virtlogd


def _has_python_libvirt() -> bool:
    return subprocess.run([SYSTEM_PYTHON, "-c", "import libvirt"], capture_output=True,
                          check=False).returncode == 0


@pytest.fixture(scope="module")
def libvirt_daemon() -> Iterator[Libvirt]:
    with running_libvirtd() as daemon:
        yield daemon


@dataclass
class Run:
    """One scenario: the events of each operation, as virsh and python3-libvirt saw them."""

    name: str
    segments: list[tuple[str, list[str]]] = field(default_factory=list)
    virsh_lines: list[str] = field(default_factory=list)
    api_lines: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)


class Scenario:
    """Drive one domain; each step waits for the events it should cause."""

    def __init__(self, daemon: Libvirt, name: str, emulator: str, workdir: Path,
                 *, firmware: bool = False) -> None:
        self.daemon = daemon
        self.firmware = firmware
        self.run = Run(name)
        self.workdir = workdir
        self.disks = [workdir / f"{name}-stop.raw", workdir / f"{name}-report.raw"]
        for disk in self.disks:
            with open(disk, "wb") as image:
                image.truncate(16 << 20)
        (workdir / f"{name}.xml").write_text(domain_xml(
            name, emulator, [(self.disks[0], "stop"), (self.disks[1], "report")]))
        self.virsh_events = EventWatcher(
            ["virsh", "-c", daemon.uri, "event", "--all", "--loop"],
            workdir / f"{name}-virsh-events.txt")
        self.api_events: EventWatcher | None = None
        if _has_python_libvirt():
            self.api_events = EventWatcher([SYSTEM_PYTHON, "-u", str(CONSUMER), daemon.uri],
                                           workdir / f"{name}-api-events.txt")
            wait_for(lambda: "ready" in self.api_events.path.read_text(),  # type: ignore[union-attr]
                     "the python3-libvirt consumer to register")

    def lines(self) -> list[str]:
        """virsh's events; with real firmware, reboots after the first are SeaBIOS's."""
        lines = self.virsh_events.lines()
        return _without_firmware_reboots(lines) if self.firmware else lines

    def step(self, label: str, action: Callable[[], object], count: int) -> list[str]:
        """Run *action*; wait for *count* new events from virsh (and the API consumer)."""
        mark = len(self.lines())
        action()
        wait_for(lambda: len(self.lines()) >= mark + count,
                 f"{count} events after {label}",
                 describe=lambda: "; got:\n" + "\n".join(self.lines()[mark:]))
        segment = self.lines()[mark:mark + count]
        self.run.segments.append((label, segment))
        return segment

    def virsh(self, *args: str) -> str:
        return self.daemon.virsh(*args).stdout

    def monitor(self, command: str, **arguments: object) -> object:
        request = {"execute": command, **({"arguments": arguments} if arguments else {})}
        return json.loads(self.virsh("qemu-monitor-command", self.run.name,
                                     json.dumps(request)))["return"]

    def finish(self) -> Run:
        total = sum(len(segment) for _, segment in self.run.segments)
        if self.api_events is not None:
            wait_for(lambda: len(self.api_events.lines()) >= total,  # type: ignore[union-attr]
                     "the python3-libvirt consumer to catch up")
        self.virsh_events.stop()
        self.run.virsh_lines = self.lines()
        if self.api_events is not None:
            self.api_events.stop()
            self.run.api_lines = self.api_events.lines()
        return self.run

    # -- the operations --------------------------------------------------------

    def define(self) -> None:
        self.step("define", lambda: self.virsh("define", str(self.workdir /
                                                             f"{self.run.name}.xml")), 1)

    def start(self) -> None:
        self.step("start", lambda: self.virsh("start", self.run.name), 2)

    def vnc(self) -> None:
        display = self.virsh("vncdisplay", self.run.name).strip()
        snapshot = self.workdir / f"{self.run.name}.jpg"

        def view() -> None:
            done = subprocess.run(["vncsnapshot", "-quiet", display, str(snapshot)],
                                  capture_output=True, timeout=30, check=False)
            self.daemon.operations.append(("vncsnapshot", done.returncode == 0))
            assert done.returncode == 0, done.stderr
        self.step("vnc", view, 3)


def _mask(line: str, name: str) -> str:
    """Make two runs' lines comparable: the domain's name and the viewer's port."""
    line = line.replace(f"'{name}'", "'DOMAIN'")
    return re.sub(r"(remote\[IPv4 127\.0\.0\.1 )\d+\]", r"\1PORT]", line)


def _without_firmware_reboots(lines: list[str]) -> list[str]:
    """Real QEMU's reset is followed by SeaBIOS's own guest resets (1 or 2, observed, and
    possibly after later events when the host is loaded): the scenario resets once, so
    every reboot event after the first one is the firmware's."""
    first = next((i for i, line in enumerate(lines) if "'reboot'" in line), len(lines))
    return lines[:first + 1] + [line for line in lines[first + 1:] if "'reboot'" not in line]


@pytest.fixture(scope="module")
def sim_run(libvirt_daemon: Libvirt, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The whole scenario on the simulator, run once for the tests below."""
    workdir = tmp_path_factory.mktemp("libvirt-sim")
    scenario = Scenario(libvirt_daemon, "qmpev-sim", SIM_EMULATOR, workdir)
    name = scenario.run.name
    virsh = scenario.virsh
    scenario.define()
    scenario.start()
    cpus = scenario.monitor("query-cpus-fast")
    assert isinstance(cpus, list)
    scenario.run.facts["vcpu0 cgroup"] = Path(f"/proc/{cpus[0]['thread-id']}/cgroup").read_text()
    scenario.step("suspend", lambda: virsh("suspend", name), 1)
    scenario.step("resume", lambda: virsh("resume", name), 1)
    scenario.step("reset", lambda: virsh("reset", name), 1)
    scenario.step("io-error stop", lambda: scenario.monitor(
        "x-sim-io-error", device="virtio-disk0", operation="write"), 3)
    scenario.run.facts["domstate"] = virsh("domstate", "--reason", name).strip()
    scenario.run.facts["domblkerror"] = virsh("domblkerror", name).strip()
    scenario.step("resume after io-error", lambda: virsh("resume", name), 1)
    scenario.run.facts["domstate after resume"] = virsh("domstate", "--reason", name).strip()
    scenario.step("io-error report", lambda: scenario.monitor(
        "x-sim-io-error", device="libvirt-1-format", operation="read"), 2)
    scenario.step("rtc-change", lambda: scenario.monitor("x-sim-rtc-change", offset=100), 1)
    scenario.vnc()
    for stat in (["domstats", name], ["dominfo", name], ["vcpuinfo", name],
                 ["dommemstat", name], ["domblkstat", name, "vda"],
                 ["setmem", name, "48M", "--live"]):
        scenario.run.facts[stat[0]] = virsh(*stat)
    scenario.run.facts["dommemstat after setmem"] = virsh("dommemstat", name)
    scenario.step("shutdown", lambda: virsh("shutdown", name), 2)
    scenario.start()
    scenario.step("destroy", lambda: virsh("destroy", name), 2)
    scenario.step("undefine", lambda: virsh("undefine", name), 1)
    return scenario.finish()


def test_domcapabilities_match_real_qemu(libvirt_daemon: Libvirt) -> None:
    ours = libvirt_daemon.virsh("domcapabilities", "--emulatorbin", SIM_EMULATOR,
                                "--virttype", "qemu").stdout
    assert f"<path>{SIM_EMULATOR}</path>" in ours
    assert "<domain>qemu</domain>" in ours and "<machine>pc-i440fx-7.2</machine>" in ours
    real_qemu = qemu_binary()
    if real_qemu is None:
        pytest.skip("no real QEMU to compare with")
    real = libvirt_daemon.virsh("domcapabilities", "--emulatorbin", real_qemu,
                                "--virttype", "qemu").stdout
    assert ours.replace(SIM_EMULATOR, real_qemu) == real


EXPECTED = {  # QMP events -> libvirt events, as observed with real QEMU (domain-commands.txt)
    "define": ["lifecycle: Defined Added"],
    "start": ["lifecycle: Resumed Unpaused", "lifecycle: Started Booted"],  # either order
    "suspend": ["lifecycle: Suspended Paused"],
    "resume": ["lifecycle: Resumed Unpaused"],
    "reset": ["reboot"],
    "io-error stop": ["io-error: {stop} (virtio-disk0) pause",
                      "io-error-reason: {stop} (virtio-disk0) pause due to ",
                      "lifecycle: Suspended I/O Error"],
    "resume after io-error": ["lifecycle: Resumed Unpaused"],
    "io-error report": ["io-error: {report} (virtio-disk1) report",
                        "io-error-reason: {report} (virtio-disk1) report due to "],
    "rtc-change": ["rtc-change: 100"],
    "vnc": ["graphics: connect local[IPv4 127.0.0.1 {port}] remote[IPv4 127.0.0.1 PORT] none",
            "graphics: initialize local[IPv4 127.0.0.1 {port}] remote[IPv4 127.0.0.1 PORT] none",
            "graphics: disconnect local[IPv4 127.0.0.1 {port}] remote[IPv4 127.0.0.1 PORT] "
            "none"],
    "shutdown": ["lifecycle: Shutdown Finished after guest request",
                 "lifecycle: Stopped Shutdown"],
    "destroy": ["lifecycle: Shutdown Finished after host request",
                "lifecycle: Stopped Destroyed"],
    "undefine": ["lifecycle: Undefined Removed"],
}


def _short(line: str) -> str:
    """``event 'io-error' for domain 'D': X`` -> ``io-error: X`` (``reboot`` alone)."""
    match = re.fullmatch(r"event '([^']+)' for domain '[^']+'(?:: (.*))?", line, re.DOTALL)
    assert match is not None, line
    kind, text = match.groups()
    return kind if text is None else f"{kind}: {text}"


@pytest.mark.slow
def test_every_libvirt_event_follows_the_mapping(sim_run: Run,
                                                 figures: Callable[[str, object], None],
                                                 libvirt_daemon: Libvirt) -> None:
    disks = {"stop": "", "report": ""}
    for _label, segment in sim_run.segments:
        for line in segment:
            found = re.search(r"io-error' for domain '[^']+': (\S+) \(virtio-disk(\d)\)", line)
            if found:
                disks["stop" if found.group(2) == "0" else "report"] = found.group(1)
    assert disks["stop"].endswith("qmpev-sim-stop.raw")
    assert disks["report"].endswith("qmpev-sim-report.raw")
    port = re.search(r"local\[IPv4 127\.0\.0\.1 (\d+)\]", "\n".join(sim_run.virsh_lines))
    assert port is not None
    for label, segment in sim_run.segments:
        want = [w.format(port=port.group(1), **disks) for w in EXPECTED[label]]
        got = [_short(_mask(line, sim_run.name)) for line in segment]
        if label == "start":
            got, want = sorted(got), sorted(want)
        assert got == want, label
    # nothing else happened: every event line belongs to one operation
    assert len(sim_run.virsh_lines) == sum(len(s) for _, s in sim_run.segments)
    tried = len(libvirt_daemon.operations)
    succeeded = sum(ok for _, ok in libvirt_daemon.operations)
    figures("libvirt operations on qmpevents-qemu succeeded/tried", f"{succeeded}/{tried}")
    figures("libvirt events checked against the QMP->libvirt mapping",
            len(sim_run.virsh_lines))


@pytest.mark.slow
def test_pause_reason_block_errors_and_statistics(sim_run: Run) -> None:
    facts = sim_run.facts
    assert facts["domstate"] == "paused (I/O error)"
    assert facts["domblkerror"].startswith("vda:") and "error" in facts["domblkerror"]
    assert facts["domstate after resume"] == "running (unpaused)"
    assert re.search(r"State:\s+running", facts["dominfo"])
    assert re.search(r"CPU\(s\):\s+2", facts["dominfo"])
    assert facts["vcpuinfo"].count("VCPU:") == 2
    assert "vcpu0" in facts["vcpu0 cgroup"]  # libvirt moved our vCPU thread into its cgroup
    assert "block.count=2" in facts["domstats"] and "vcpu.current=2" in facts["domstats"]
    assert "actual 65536" in facts["dommemstat"]
    assert "actual 49152" in facts["dommemstat after setmem"]  # the guest obeyed the balloon
    assert "vda rd_req 0" in facts["domblkstat"]


@pytest.mark.slow
def test_python_libvirt_consumer_sees_the_same_events(sim_run: Run) -> None:
    if not _has_python_libvirt():
        pytest.skip("python3-libvirt not installed")
    assert sim_run.api_lines == sim_run.virsh_lines


@pytest.mark.slow
@pytest.mark.qemu
def test_same_libvirt_events_as_real_qemu(sim_run: Run, libvirt_daemon: Libvirt,
                                          tmp_path_factory: pytest.TempPathFactory,
                                          figures: Callable[[str, object], None]) -> None:
    """What real QEMU supports without a guest: start, suspend, resume, reset, VNC, destroy."""
    real_qemu = qemu_binary()
    if real_qemu is None or shutil.which("vncsnapshot") is None:
        pytest.skip("real QEMU or vncsnapshot missing")
    workdir = tmp_path_factory.mktemp("libvirt-real")
    scenario = Scenario(libvirt_daemon, "qmpev-real", real_qemu, workdir, firmware=True)
    name = scenario.run.name
    scenario.define()
    scenario.start()
    scenario.step("suspend", lambda: scenario.virsh("suspend", name), 1)
    scenario.step("resume", lambda: scenario.virsh("resume", name), 1)
    # QEMU's reset: its own RESET, then SeaBIOS's guest RESETs (dropped: see lines())
    scenario.step("reset", lambda: scenario.virsh("reset", name), 1)
    scenario.vnc()
    scenario.step("destroy", lambda: scenario.virsh("destroy", name), 2)
    scenario.step("undefine", lambda: scenario.virsh("undefine", name), 1)
    real = scenario.finish()
    ours = dict(sim_run.segments)
    compared = identical = 0
    for label, segment in real.segments:
        theirs = [_mask(line, real.name) for line in segment]
        mine = [_mask(line, sim_run.name) for line in ours[label]]
        if label == "start":
            theirs, mine = sorted(theirs), sorted(mine)
        compared += len(theirs)
        identical += sum(a == b for a, b in zip(theirs, mine, strict=False))
        assert mine == theirs, f"{label}: real QEMU {segment}, simulator {ours[label]}"
    figures("libvirt events identical to real QEMU's/compared", f"{identical}/{compared}")
