"""SimulatedVM: the machine served over QMP (and VNC), as an async context manager.

This is the in-process form of ``qmpevents serve``, for tests of management
software::

    async with SimulatedVM(drives=["disk0,werror=stop"], profile="qemu-7.2") as vm:
        ...connect a QMP client to vm.socket_path...
        vm.machine.io_error("disk0", "write")     # or x-sim-io-error over QMP
        status = await vm.wait_closed()           # after quit / guest shutdown

Without ``qmp`` addresses it listens on a Unix socket in a private temporary
directory (short enough for ``sun_path``), removed on close.

Connection rules follow the profile: ``qemu-7.2`` serves one client per QMP
socket, as QEMU does (the next one waits, ungreeted, until the first leaves);
``seed`` serves several at once, as this simulator always did, since the spec
document says nothing about it and tools built on the seed profile (a watcher
plus ``qmpevents exec``) rely on it.  ``single_client=True`` or
``multi_client=True`` overrides the profile's choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import ssl
import tempfile
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from qmpevents.catalog import Profile
from qmpevents.server import (
    DEFAULT_MAX_OUTBOUND,
    Address,
    QMPServer,
    ServerOptions,
    TcpAddress,
    UnixAddress,
    check_allowed,
    parse_address,
)
from qmpevents.sim.block import DriveConfig, parse_drive
from qmpevents.sim.clock import Clock
from qmpevents.sim.commands import UserCommands, build_command_table
from qmpevents.sim.machine import Machine

_log = logging.getLogger(__name__)

_VNC_EXPOSED = "VNC is unencrypted and its password at most 8 characters"


def parse_vnc(text: str) -> tuple[str, int]:
    """``HOST:DISPLAY`` (IPv6 host in brackets) to (host, display); port is 5900+DISPLAY."""
    host, sep, display = text.rpartition(":")
    if not sep or not display.isdigit() or int(display) > 65535 - 5900:
        raise ValueError(f"{text!r}: expected HOST:DISPLAY, e.g. 127.0.0.1:0")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(display)


def _chardev_filename(address: Address) -> str:
    """How QEMU's query-chardev shows a ``-qmp`` listener."""
    if isinstance(address, UnixAddress):
        return f"unix:{address.path},server=on"
    return f"disconnected:tcp:{address.host}:{address.port},server=on"


class SimulatedVM:
    """A running simulated VM: :attr:`machine`, its QMP :attr:`server`, maybe VNC."""

    def __init__(self, *, qmp: Sequence[str | Address] | str | Address = (),
                 drives: Sequence[str | DriveConfig] = (), no_shutdown: bool = False,
                 start_paused: bool = False, profile: Profile = "seed",
                 vnc: str | None = None, vnc_password: str | None = None,
                 vnc_port: int | None = None, vnc_connections: int | None = None,
                 name: str | None = None,
                 powerdown_delay: float = 1.0, ignore_acpi: bool = False,
                 single_client: bool = False, multi_client: bool = False,
                 allow_remote: bool = False,
                 socket_mode: int = 0o600, max_outbound: int = DEFAULT_MAX_OUTBOUND,
                 clock: Clock | None = None, tls: ssl.SSLContext | None = None,
                 commands: UserCommands | None = None) -> None:
        # Everything that can refuse the options comes before the temporary directory.
        if not isinstance(qmp, Sequence) or isinstance(qmp, str):
            qmp = [qmp]  # one address given alone, not as a list of characters
        addresses = [parse_address(a) if isinstance(a, str) else a for a in qmp]
        configs = [parse_drive(d) if isinstance(d, str) else d for d in drives]
        self._vnc_spec = parse_vnc(vnc) if vnc is not None else None
        if self._vnc_spec is not None:
            vnc_host, display = self._vnc_spec
            # QEMU's "-vnc :N" listens on every interface.
            check_allowed(TcpAddress(vnc_host or "0.0.0.0", 5900 + display),
                          allow_remote=allow_remote, why=_VNC_EXPOSED)
        if single_client and multi_client:
            raise ValueError("single_client and multi_client exclude each other")
        # One client per QMP socket at a time (QEMU's rule), or several.
        self.single_client = single_client or (not multi_client and profile == "qemu-7.2")
        options = ServerOptions(single_client=self.single_client, socket_mode=socket_mode,
                                allow_remote=allow_remote, max_outbound=max_outbound, tls=tls)
        for address in addresses:
            check_allowed(address, allow_remote=allow_remote)
        self._tempdir: str | None = None
        if not addresses:
            self._tempdir = tempfile.mkdtemp(prefix="qmpev-")
            addresses = [UnixAddress(os.path.join(self._tempdir, "qmp.sock"))]
        self.machine = Machine(name=name, profile=profile, drives=configs,
                               no_shutdown=no_shutdown, start_paused=start_paused,
                               powerdown_delay=powerdown_delay, ignore_acpi=ignore_acpi,
                               clock=clock)
        self.server = QMPServer(addresses, build_command_table(self.machine, commands),
                                version=self.machine.version, options=options)
        self.machine.subscribe(self.server.publish)
        self._vnc_password = vnc_password
        self._vnc_port = vnc_port
        self._vnc_connections = vnc_connections  # None: QEMU's default (32)
        self._closed = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None

    # -- addresses -----------------------------------------------------------

    @property
    def addresses(self) -> list[Address]:
        """Where QMP listens (real ports once started)."""
        return self.server.addresses

    @property
    def socket_path(self) -> str:
        """The first Unix socket's path (the usual way to connect)."""
        for address in self.addresses:
            if isinstance(address, UnixAddress):
                return address.path
        raise AttributeError("this SimulatedVM has no unix: QMP address")

    @property
    def vnc_port(self) -> int | None:
        return self.machine.vnc.port if self.machine.vnc is not None else None

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        """Listen on QMP and VNC; the machine is then live."""
        loop = asyncio.get_running_loop()
        self.machine.watch_exit(lambda status: loop.call_soon(self._begin_close))
        try:
            await self.server.start()
            self.machine.chardevs = [(f"compat_monitor{index}", _chardev_filename(address))
                                     for index, address in enumerate(self.addresses)]
            if self._vnc_spec is not None:
                from qmpevents.sim.vnc import DEFAULT_CONNECTIONS, VncListener

                host, display = self._vnc_spec
                vnc = VncListener(host, display, on_event=self.machine.vnc_event,
                                  screen=self.machine.screen, password=self._vnc_password,
                                  name=self.machine.name or "qmpevents-sim", port=self._vnc_port,
                                  connections=self._vnc_connections or DEFAULT_CONNECTIONS)
                await vnc.start()
                self.machine.vnc = vnc
                self.machine.watch_state(lambda _state: vnc.redraw())
        except BaseException:
            await self.close()
            raise

    def _begin_close(self) -> None:
        """The machine exited (quit, guest shutdown): close after this iteration's writes."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.close())

    async def close(self) -> None:
        """Close QMP monitors (EOF), the VNC listener, and remove socket files."""
        if self._closed.is_set():
            return
        await self.server.close()
        if self.machine.vnc is not None:
            await self.machine.vnc.close()
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
        self._closed.set()

    async def wait_closed(self) -> int | None:
        """Wait until the VM has exited and closed; its exit status (None if just closed)."""
        await self._closed.wait()
        return self.machine.exit_status

    def shutdown_by_signal(self) -> None:
        """SIGTERM/SIGINT: SHUTDOWN(host-signal) to the monitors, then close, like QEMU."""
        if self.machine.exit_status is None:
            self.machine.host_signal()
        else:
            self._begin_close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._closing is not None:
            with contextlib.suppress(Exception):
                await self._closing
        await self.close()
