"""The simulated virtual machine: run state, drives, RTC, guest, VNC, and its events.

The machine is the one place events are made: it stamps them with the
clock's wall time when they happen, drops those the profile does not have
(RESUME and POWERDOWN exist only in ``qemu-7.2``), projects their data onto
the profile (:func:`qmpevents.catalog.build_event`), applies QEMU's RTC_CHANGE
rate limit in the ``qemu-7.2`` profile, and hands the wire form to its
subscribers (the QMP server's broadcast).  Everything is synchronous, so the
events of an operation are published before the operation returns -- which
is what puts them ahead of the command's reply on the wire.

Operations follow QEMU 7.2 (``softmmu/runstate.c``, ``cpus.c``, ``qmp-cmds.c``):
``stop`` of a VM that is not running and ``cont`` of a running one emit
nothing; ``cont`` of a VM that shut down under ``-no-shutdown`` is refused
until a ``system_reset``; any reset of a VM that is not running leaves it in
``prelaunch``.  What QEMU's firmware adds (SeaBIOS's own resets after a reset)
is not simulated: there is no firmware.
"""

from __future__ import annotations

import errno as errno_codes
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from qmpevents import __version__
from qmpevents.catalog import PROFILE_FIELDS, Profile, Timestamp, build_event
from qmpevents.protocol import CommandFailure
from qmpevents.sim.block import BlockLayer, Drive, DriveConfig, Medium
from qmpevents.sim.clock import Clock, LoopClock, Timer
from qmpevents.sim.rtc import Rtc, Throttle
from qmpevents.sim.runstate import RunState

if TYPE_CHECKING:  # the VNC listener needs pycryptodome, an optional dependency
    from qmpevents.sim.vnc import VncEndpoint, VncListener

# Members are inserted in QAPI schema order, as QEMU does: the encoder reproduces
# QDict's iteration order from that, so replies match QEMU byte for byte.
QEMU_VERSION: dict[str, Any] = {"qemu": {"major": 7, "minor": 2, "micro": 22},
                                "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}
"""query-version of the QEMU the ``qemu-7.2`` profile reproduces."""

SEED_VERSION: dict[str, Any] = {"qemu": {"major": 7, "minor": 2, "micro": 22},
                                "package": f"qmpevents {__version__} (simulated)"}

ERRNOS = {"EIO": errno_codes.EIO, "ENOSPC": errno_codes.ENOSPC}

EventSink = Callable[[dict[str, Any]], object]


class Machine:
    """A VM that does what QMP and the simulated guest ask, emitting QEMU's events."""

    def __init__(self, *, name: str | None = None, profile: Profile = "seed",
                 drives: Sequence[DriveConfig] = (), no_shutdown: bool = False,
                 start_paused: bool = False, powerdown_delay: float = 1.0,
                 ignore_acpi: bool = False, clock: Clock | None = None) -> None:
        if profile not in PROFILE_FIELDS:
            raise ValueError(f"unknown profile {profile!r}")
        self.name = name
        self.profile: Profile = profile
        self.clock: Clock = clock or LoopClock()
        self.no_shutdown = no_shutdown
        self.powerdown_delay = powerdown_delay
        self.ignore_acpi = ignore_acpi
        self.block = BlockLayer(list(drives))
        self.rtc = Rtc()
        self.vnc: VncListener | None = None
        #: The QMP monitors' chardevs as (label, filename), for query-chardev.
        self.chardevs: list[tuple[str, str]] = []
        self.state = RunState.PRELAUNCH if start_paused else RunState.RUNNING
        self.exit_status: int | None = None
        self._events = set(PROFILE_FIELDS[profile])
        self._sinks: list[EventSink] = []
        self._state_watchers: list[Callable[[RunState], object]] = []
        self._exit_watchers: list[Callable[[int], object]] = []
        self._rtc_throttle = Throttle(self.clock, self._publish) if profile == "qemu-7.2" else None
        self._powerdown_timer: Timer | None = None
        self._powerdown_pending = False

    @property
    def version(self) -> dict[str, Any]:
        return QEMU_VERSION if self.profile == "qemu-7.2" else SEED_VERSION

    # -- observers ---------------------------------------------------------

    def subscribe(self, sink: EventSink) -> None:
        """Receive every event as its wire form (plain JSON values), in order."""
        self._sinks.append(sink)

    def watch_state(self, watcher: Callable[[RunState], object]) -> None:
        self._state_watchers.append(watcher)

    def watch_exit(self, watcher: Callable[[int], object]) -> None:
        """Called once when the VM process would exit (quit, guest shutdown, signal)."""
        self._exit_watchers.append(watcher)

    # -- events ------------------------------------------------------------

    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        """An event happens now (dropped if the profile has no such event)."""
        if name not in self._events or self.exit_status is not None:
            return
        stamp = Timestamp.from_float(self.clock.time())
        if name == "RTC_CHANGE" and self._rtc_throttle is not None:
            self._rtc_throttle.submit(name, data, stamp)
        else:
            self._publish(name, data, stamp)

    def _publish(self, name: str, data: dict[str, Any] | None, stamp: Timestamp) -> None:
        if self.exit_status is not None:
            return
        message = build_event(name, data, stamp, self.profile)
        for sink in self._sinks:
            sink(message)

    def _set_state(self, state: RunState) -> None:
        if state is self.state:
            return
        self.state = state
        for watcher in self._state_watchers:
            watcher(state)

    def _exit(self, status: int) -> None:
        if self.exit_status is not None:
            return
        self.exit_status = status
        self._cancel_powerdown()
        if self._rtc_throttle is not None:
            self._rtc_throttle.cancel()
        for watcher in self._exit_watchers:
            watcher(status)

    # -- QMP operations ------------------------------------------------------

    def query_status(self) -> dict[str, Any]:
        return {"running": self.state.running, "singlestep": False, "status": self.state.value}

    def stop(self) -> None:
        if self.state.running:
            self._set_state(RunState.PAUSED)
            self.emit("STOP")

    def cont(self) -> None:
        if self.state.needs_reset:
            raise CommandFailure("GenericError", "Resetting the Virtual Machine is required")
        self.block.reset_status()
        if self.state.running:
            return
        self._set_state(RunState.RUNNING)
        self.emit("RESUME")
        if self._powerdown_pending:
            self._powerdown_pending = False
            self._arm_powerdown()

    def system_reset(self) -> None:
        self._reset(guest=False, reason="host-qmp-system-reset")

    def system_powerdown(self) -> None:
        """The ACPI power button: POWERDOWN, then the guest shuts down unless it ignores ACPI."""
        self.emit("POWERDOWN")
        if not self.ignore_acpi and self._powerdown_timer is None:
            if self.state.running:
                self._arm_powerdown()
            else:
                self._powerdown_pending = True  # the guest handles it once it runs

    def quit(self) -> None:
        self.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        self._exit(0)

    def host_signal(self) -> None:
        """SIGTERM/SIGINT/SIGHUP to the process, as QEMU reports it."""
        self.emit("SHUTDOWN", {"guest": False, "reason": "host-signal"})
        self._exit(0)

    # -- the simulated guest -------------------------------------------------

    def _require_running(self) -> None:
        if not self.state.running:
            raise CommandFailure("GenericError",
                                 f"The guest is not running (status: {self.state.value})")

    def guest_reset(self) -> None:
        self._require_running()
        self._reset(guest=True, reason="guest-reset")

    def guest_shutdown(self) -> None:
        """The guest powers off: SHUTDOWN, then STOP under -no-shutdown, else the VM exits."""
        self._require_running()
        self._cancel_powerdown()
        self.emit("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
        if self.no_shutdown:
            self._set_state(RunState.SHUTDOWN)
            self.emit("STOP")
        else:
            self._exit(0)

    def io_error(self, device: str, operation: str, error: str = "EIO") -> None:
        """The guest's I/O on *device* failed with errno *error*: the policy decides."""
        self._require_running()
        drive = self.block.get(device)
        if drive is None:
            raise CommandFailure("DeviceNotFound", f"Device '{device}' not found")
        outcome = drive.fail(operation, ERRNOS[error])
        self.emit("BLOCK_IO_ERROR", outcome.data)
        if outcome.stop:
            self._set_state(RunState.IO_ERROR)
            self.emit("STOP")

    def rtc_change(self, offset: int) -> None:
        """The guest set its RTC *offset* seconds away from host UTC."""
        self._require_running()
        self.emit("RTC_CHANGE", self.rtc.change(offset))

    # -- removable media (QEMU's blockdev.c: eject = open tray + remove medium) ----

    def find_drive(self, device: str | None, qdev_id: str | None) -> Drive:
        """The drive a media command names by ``device`` (drive id) or ``id`` (QOM path)."""
        if (device is None) == (qdev_id is None):
            raise CommandFailure("GenericError", "Need exactly one of 'device' and 'id'")
        drives = self.block.drives.values()
        found = (self.block.get(device) if device is not None
                 else next((d for d in drives if d.qdev_path == qdev_id), None))
        if found is None:
            raise CommandFailure("DeviceNotFound", f"Device '{device or qdev_id}' not found")
        if not found.removable:
            raise CommandFailure("GenericError", f"Device '{found.config.id}' is not removable")
        return found

    def _move_tray(self, drive: Drive, tray_open: bool) -> None:
        if drive.tray_open != tray_open:
            drive.tray_open = tray_open
            self.emit("DEVICE_TRAY_MOVED", {"device": drive.config.id, "id": drive.qdev_path,
                                            "tray-open": tray_open})

    def eject(self, drive: Drive) -> None:
        """Open the tray (DEVICE_TRAY_MOVED) and take the medium out."""
        self._move_tray(drive, True)
        drive.medium = None

    def open_tray(self, drive: Drive) -> None:
        self._move_tray(drive, True)

    def close_tray(self, drive: Drive) -> None:
        self._move_tray(drive, False)

    def remove_medium(self, drive: Drive) -> None:
        if not drive.tray_open:
            raise CommandFailure("GenericError", f"Tray of device '{drive.config.id}' is not open")
        drive.medium = None

    def change_medium(self, drive: Drive, filename: str, driver: str | None) -> None:
        """Open the tray, swap the medium, close the tray: QEMU's blockdev-change-medium."""
        self.eject(drive)
        number = self.block.new_node_number()
        drive.medium = Medium(filename, driver or "raw", True, f"#block{number}")
        self.close_tray(drive)

    def device_del(self, device: str) -> None:
        """Unplug a drive's device (by QOM path): the guest agrees at once, the drive goes.

        DEVICE_DELETED comes for the virtio backend, then for the PCI device, as
        from QEMU; an anonymous device has no ``device`` member.
        """
        drive = next((d for d in self.block.drives.values() if d.qdev_path == device), None)
        if drive is None:
            raise CommandFailure("DeviceNotFound", f"Device '{device}' not found")
        if drive.removable:  # an ide-cd: the IDE bus has no hotplug
            raise CommandFailure("GenericError",
                                 f"Bus '{self._ide_bus(drive)}' does not support hotplugging")
        self.emit("DEVICE_DELETED", {"path": f"{drive.qdev_path}/virtio-backend"})
        self.emit("DEVICE_DELETED", {"path": drive.qdev_path})
        del self.block.drives[drive.config.id]

    def _ide_bus(self, drive: Drive) -> str:
        """The PIIX IDE bus QEMU puts an anonymous ide-cd on: the emptier one, ide.1 on a tie."""
        used = [0, 0]
        for cdrom in (d for d in self.block.drives.values() if d.removable):
            bus = 0 if used[0] < used[1] else 1
            used[bus] += 1
            if cdrom is drive:
                return f"ide.{bus}"
        raise AssertionError("not a cdrom drive")

    def vnc_event(self, name: str, server: VncEndpoint, client: VncEndpoint) -> None:
        """The VNC listener's callback: full data, the profile projects it."""
        self.emit(name, {
            "server": {"host": server.host, "service": server.service,
                       "family": server.family, "auth": server.auth, "websocket": False},
            "client": {"host": client.host, "service": client.service,
                       "family": client.family, "websocket": False},
        })

    def screen(self) -> list[str]:
        """What the VNC display shows: the truth about the machine."""
        lines = [self.name or "qmpevents-sim", f"status: {self.state.value}",
                 f"profile: {self.profile}"]
        lines += [f"drive {drive.config.id}: {drive.io_status}"
                  for drive in self.block.drives.values()]
        return lines

    # -- internals -------------------------------------------------------------

    def _reset(self, *, guest: bool, reason: str) -> None:
        self._cancel_powerdown()
        self.emit("RESET", {"guest": guest, "reason": reason})
        if not self.state.running:
            self._set_state(RunState.PRELAUNCH)

    def _arm_powerdown(self) -> None:
        self._powerdown_timer = self.clock.call_later(self.powerdown_delay, self._acpi_shutdown)

    def _acpi_shutdown(self) -> None:
        self._powerdown_timer = None
        if self.exit_status is not None:
            return
        if self.state.running:
            self.guest_shutdown()
        else:
            self._powerdown_pending = True

    def _cancel_powerdown(self) -> None:
        if self._powerdown_timer is not None:
            self._powerdown_timer.cancel()
            self._powerdown_timer = None
        self._powerdown_pending = False
