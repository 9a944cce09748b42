"""``qmpevents-qemu``: the simulated VM started with QEMU's command line.

libvirt (``<emulator>/path/to/qmpevents-qemu</emulator>`` in a ``type='qemu'``
domain) runs it exactly as it runs ``qemu-system-x86_64``:

* the capability probe passes ``-qmp unix:PATH,server=on,wait=off -pidfile FILE
  -daemonize``: the parent exits 0 once the socket listens and the pid file is
  written (1 with QEMU's message on stderr if the child failed);
* a domain's monitor is a socket libvirt has already bound and put in listening
  state, passed as an inherited fd (``-chardev socket,id=charmonitor,fd=N``);
  libvirt owns that socket file, so it is served but never removed.

SIGTERM/SIGINT/SIGHUP end the VM as QEMU does: SHUTDOWN (host-signal), then exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence

from qmpevents.addresses import UnixAddress
from qmpevents.qemu_compat.blockdev import BlockdevLayer
from qmpevents.qemu_compat.capture import load
from qmpevents.qemu_compat.cmdline import CommandLineError, QemuCommandLine, parse_command_line
from qmpevents.qemu_compat.surface import compat_commands
from qmpevents.qemu_compat.vcpus import VcpuStartError, VcpuThreads
from qmpevents.server.listeners import Listener, MonitorFactory
from qmpevents.sim.machine import QEMU_VERSION
from qmpevents.sim.vm import SimulatedVM

PROG = "qmpevents-qemu"


class InheritedListener(Listener):
    """A listening Unix socket received as an open fd (libvirt binds it itself).

    One client at a time, as QEMU's socket chardev serves its monitor.
    """

    def __init__(self, fd: int) -> None:
        try:
            self._sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise CommandLineError(f"fd={fd}: not an open socket: {exc.strerror}") from None
        if self._sock.family != socket.AF_UNIX:
            raise CommandLineError(f"fd={fd}: not a unix socket")
        super().__init__(UnixAddress(self._sock.getsockname() or f"fd:{fd}"),
                         single_client=True)

    async def start(self, factory: MonitorFactory) -> None:
        self._serve([self._sock], factory)  # accepted one at a time, as any one-client socket


def build_vm(cmdline: QemuCommandLine) -> tuple[SimulatedVM, VcpuThreads | None]:
    """The SimulatedVM a command line describes (not started), and its vCPU threads."""
    block = BlockdevLayer(cmdline.blockdevs, cmdline.devices)
    vcpus = None if cmdline.probe else VcpuThreads(cmdline.smp, cmdline.cpu_model)
    fd_listeners = [InheritedListener(m.fd) for m in cmdline.monitors if m.fd is not None]
    path_monitors = [UnixAddress(m.path) for m in cmdline.monitors if m.path is not None]
    placeholders = [listener.address for listener in fd_listeners]
    holder: list[SimulatedVM] = []

    def chardev_paths() -> list[str]:
        return [str(getattr(address, "path", address)) for address in holder[0].addresses]

    commands = compat_commands(cmdline, block, vcpus, chardev_paths, load()["replies"])
    vm = SimulatedVM(qmp=[*path_monitors, *placeholders], profile="qemu-7.2",
                     name=cmdline.name, no_shutdown=cmdline.no_shutdown,
                     start_paused=cmdline.start_paused, vnc=cmdline.vnc,
                     ignore_acpi=not cmdline.acpi, commands=commands)
    vm.machine.block = block  # x-sim-io-error and cont act on libvirt's disks
    # The server made listeners that would bind; the inherited ones are bound already.
    vm.server.listeners[len(path_monitors):] = fd_listeners
    holder.append(vm)
    return vm, vcpus


async def serve(cmdline: QemuCommandLine, ready: Callable[[], None]) -> int:
    """Run the VM until it exits; *ready* is called once every monitor listens."""
    loop = asyncio.get_running_loop()
    vm, vcpus = build_vm(cmdline)
    if vcpus is not None:
        vcpus.start()
    try:
        await vm.start()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, vm.shutdown_by_signal)
        if cmdline.pidfile is not None:
            with open(cmdline.pidfile, "w") as pidfile:
                pidfile.write(f"{os.getpid()}\n")
        ready()
        status = await vm.wait_closed()
    finally:
        await vm.close()
        if vcpus is not None:
            vcpus.stop()
        if cmdline.pidfile is not None:
            with contextlib.suppress(OSError):
                os.unlink(cmdline.pidfile)
    return status if status is not None else 0


def _run(cmdline: QemuCommandLine, ready: Callable[[], None]) -> int:
    try:
        return asyncio.run(serve(cmdline, ready))
    except (OSError, ValueError, VcpuStartError) as exc:  # bind, VNC address, host limits
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1


def _daemonize(cmdline: QemuCommandLine) -> int:
    """QEMU's -daemonize: the parent's exit status says whether the child came up."""
    read_end, write_end = os.pipe()
    if os.fork() != 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            return 0 if pipe.read(1) == b"\0" else 1
    os.close(read_end)
    os.setsid()

    def ready() -> None:
        os.write(write_end, b"\0")
        os.close(write_end)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)

    status = _run(cmdline, ready)
    os._exit(status)


def version_text() -> str:
    """QEMU's ``-version`` output, for the QEMU the simulated machine answers as."""
    qemu, package = QEMU_VERSION["qemu"], QEMU_VERSION["package"]
    return (f"QEMU emulator version {qemu['major']}.{qemu['minor']}.{qemu['micro']} "
            f"({package})\nCopyright (c) 2003-2022 Fabrice Bellard and the QEMU Project "
            f"developers\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["-version"], ["--version"]):  # what a tool probing "which QEMU is this" reads
        sys.stdout.write(version_text())
        return 0
    try:
        cmdline = parse_command_line(args)
        if cmdline.daemonize:
            return _daemonize(cmdline)
        return _run(cmdline, lambda: None)
    except CommandLineError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
