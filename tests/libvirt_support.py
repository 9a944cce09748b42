"""A private libvirtd (and virtlogd) for tests, and helpers to drive it with virsh.

libvirt 9.0 as Debian packages it (``libvirt-daemon``, ``libvirt-daemon-driver-qemu``,
``libvirt-clients``; installed by ``./dev test``) runs here as root, as
``shared/spec/libvirt/obstacles.txt`` found:

* the daemon's own sockets go to a private ``unix_sock_dir`` (``libvirtd -f CONF``)
  and clients reach it with ``qemu:///system?socket=...``;
* the QEMU driver's state (``/run/libvirt/qemu``, ``/var/lib/libvirt/qemu``) and
  ``qemu.conf`` have fixed paths in privileged mode, so ``/etc/libvirt/qemu.conf``
  gets ``user/group root`` and ``security_driver none`` for the test's life (an
  existing file is put back afterwards);
* the compiled-in ``libvirt-qemu`` user and group must exist before qemu.conf
  is even read: created if missing (``useradd``/``groupadd``);
* virtlogd listens on its fixed ``/run/libvirt/virtlogd-sock``.

Both daemons are stopped (SIGTERM, then reaped) at the end; domains the tests
defined are destroyed and undefined first.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

LIBVIRTD = shutil.which("libvirtd") or "/usr/sbin/libvirtd"
VIRTLOGD = shutil.which("virtlogd") or "/usr/sbin/virtlogd"
VIRSH = shutil.which("virsh") or "/usr/bin/virsh"
SYSTEM_PYTHON = "/usr/bin/python3"
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
CAPS_CACHE = Path("/var/cache/libvirt/qemu/capabilities")
QEMU_CONF_TEXT = 'user = "root"\ngroup = "root"\nsecurity_driver = "none"\n'
START_DEADLINE = 30.0
EVENT_DEADLINE = 20.0

requires_libvirt = pytest.mark.skipif(
    not (os.path.exists(LIBVIRTD) and os.path.exists(VIRSH)),
    reason="libvirt not installed (apt-get install libvirt-daemon "
           "libvirt-daemon-driver-qemu libvirt-clients)")


def wait_for(condition: Callable[[], bool], what: str, deadline: float = EVENT_DEADLINE,
             describe: Callable[[], str] = lambda: "") -> None:
    """Poll *condition* until true or fail after *deadline* seconds, saying *what*."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}{describe()}")
        time.sleep(0.05)


def _ensure_qemu_identity() -> None:
    """libvirt resolves the compiled-in user/group before reading qemu.conf."""
    if subprocess.run(["getent", "group", "libvirt-qemu"], capture_output=True,
                      check=False).returncode != 0:
        subprocess.run(["groupadd", "-r", "libvirt-qemu"], check=True)
    if subprocess.run(["getent", "passwd", "libvirt-qemu"], capture_output=True,
                      check=False).returncode != 0:
        subprocess.run(["useradd", "-r", "-g", "libvirt-qemu", "-d", "/var/lib/libvirt",
                        "-s", "/usr/sbin/nologin", "libvirt-qemu"], check=True)


def _forget_cached_capabilities() -> None:
    """libvirt re-probes an emulator only when its ctime changes, and qmpevents-qemu is a
    wrapper script whose replies live in the package: drop its cached probe so each run
    exercises the probe."""
    for cached in CAPS_CACHE.glob("*.xml"):
        with contextlib.suppress(OSError):
            if "qmpevents-qemu</emulator>" in cached.read_text():
                cached.unlink()


@dataclass
class Libvirt:
    """A running private libvirtd: its URI, a virsh runner, and what it logged."""

    workdir: Path
    uri: str
    log: Path
    operations: list[tuple[str, bool]] = field(default_factory=list)

    def virsh(self, *args: str, check: bool = True, count: bool = True,
              timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``virsh -c URI ARGS``; recorded as one operation tried (and whether it worked)."""
        done = subprocess.run([VIRSH, "-c", self.uri, *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
        if count:
            self.operations.append((" ".join(args[:1]), done.returncode == 0))
        if check and done.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)} failed ({done.returncode}): "
                                 f"{done.stderr.strip()}\n{self.log_tail()}")
        return done

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text().splitlines()[-lines:])
        return ""


class EventWatcher:
    """A process that prints one line per libvirt event (``virsh event --all --loop``)."""

    def __init__(self, argv: list[str], path: Path) -> None:
        self.path = path
        self._out = open(path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)

    def lines(self) -> list[str]:
        """The events so far, without virsh's timestamp prefix and loop chatter."""
        text = self.path.read_text()
        complete = text[:text.rfind("\n") + 1]
        return [re.sub(r"^\S+ \S+: (?=event )", "", line) for line in complete.splitlines()
                if "event '" in line]

    def wait_count(self, needle: str, count: int, deadline: float = EVENT_DEADLINE) -> None:
        wait_for(lambda: sum(needle in line for line in self.lines()) >= count,
                 f"{count} x {needle!r} from {self.path.name}", deadline,
                 lambda: "; got:\n" + "\n".join(self.lines()))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._out.close()


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running_libvirtd() -> Iterator[Libvirt]:
    """Start virtlogd and libvirtd on private sockets; stop both afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a privileged libvirtd (qemu:///system) needs root")
    _ensure_qemu_identity()
    workdir = Path(tempfile.mkdtemp(prefix="qmpev-libvirt-"))
    sockdir = workdir / "sock"
    sockdir.mkdir()
    log = workdir / "libvirtd.log"
    (workdir / "libvirtd.conf").write_text(
        f'unix_sock_dir = "{sockdir}"\nauth_unix_rw = "none"\nauth_unix_ro = "none"\n'
        f'log_outputs = "3:file:{log}"\n')
    (workdir / "virtlogd.conf").write_text(f'log_outputs = "3:file:{workdir}/virtlogd.log"\n')
    _forget_cached_capabilities()
    saved_conf = QEMU_CONF.read_text() if QEMU_CONF.exists() else None
    QEMU_CONF.parent.mkdir(parents=True, exist_ok=True)
    QEMU_CONF.write_text(QEMU_CONF_TEXT)
    daemon_out = open(workdir / "daemons.out", "wb")  # noqa: SIM115 - closed below
    virtlogd = subprocess.Popen([VIRTLOGD, "-f", str(workdir / "virtlogd.conf"),
                                 "-p", str(workdir / "virtlogd.pid")],
                                stdout=daemon_out, stderr=daemon_out)
    libvirtd = subprocess.Popen([LIBVIRTD, "-f", str(workdir / "libvirtd.conf"),
                                 "-p", str(workdir / "libvirtd.pid")],
                                stdout=daemon_out, stderr=daemon_out)
    libvirt = Libvirt(workdir, f"qemu:///system?socket={sockdir}/libvirt-sock", log)
    try:
        def answers() -> bool:
            if libvirtd.poll() is not None:
                raise AssertionError(f"libvirtd exited: {libvirt.log_tail()}"
                                     f"{(workdir / 'daemons.out').read_text()}")
            return libvirt.virsh("version", check=False, count=False).returncode == 0
        wait_for(answers, "libvirtd to answer", START_DEADLINE)
        yield libvirt
    finally:
        for name in libvirt.virsh("list", "--all", "--name", check=False,
                                  count=False).stdout.split():
            if name.startswith("qmpev-"):
                libvirt.virsh("destroy", name, check=False, count=False)
                libvirt.virsh("undefine", name, check=False, count=False)
        _terminate(libvirtd)
        _terminate(virtlogd)
        daemon_out.close()
        if saved_conf is None:
            QEMU_CONF.unlink(missing_ok=True)
        else:
            QEMU_CONF.write_text(saved_conf)
        shutil.rmtree(workdir, ignore_errors=True)


def domain_xml(name: str, emulator: str, disks: list[tuple[Path, str]]) -> str:
    """A TCG domain: 2 vCPUs, 64 MiB, ACPI, virtio disks with error policies, VNC, balloon."""
    targets = iter("abcdefgh")
    disk_xml = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='raw' "
        f"error_policy='{policy}'/><source file='{path}'/>"
        f"<target dev='vd{next(targets)}' bus='virtio'/></disk>" for path, policy in disks)
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>{emulator}</emulator>
    {disk_xml}
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
    <memballoon model='virtio'><stats period='5'/></memballoon>
  </devices>
</domain>
"""
