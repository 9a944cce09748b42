"""QEMU's command line, as libvirt writes it, parsed into what the simulator needs.

Two shapes matter (``shared/spec/libvirt/``):

* the capability probe: ``-S -no-user-config -nodefaults -nographic -machine
  none,accel=kvm:tcg -qmp unix:PATH,server=on,wait=off -pidfile FILE -daemonize``;
* a domain: the monitor as an inherited listening fd (``-chardev
  socket,id=charmonitor,fd=N,server=on,wait=off -mon
  chardev=charmonitor,mode=control``), ``-name guest=NAME,...``, ``-S``,
  ``-no-shutdown``, ``-uuid``, ``-smp``, ``-m``, JSON ``-blockdev``/``-device``,
  ``-vnc HOST:DISPLAY[,...]`` and more.

Option values follow QEMU's QemuOpts/keyval syntax: ``KEY=VALUE`` pairs split
on ``,`` (``,,`` is a literal comma), the first item may omit its key (the
option's *implied* key: ``-smp 2``, ``-machine pc``, ``-vnc 127.0.0.1:0``);
``-device``/``-blockdev``/``-object``/``-audiodev`` also take a JSON object.
Every option QEMU 7.2 has that a libvirt domain can get is accepted; those the
simulator has no use for are kept in :attr:`QemuCommandLine.ignored`.  An
unknown option fails as QEMU does (``-foo: invalid option``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from qmpevents.errors import QMPEventsError
from qmpevents.qemu_compat.vcpus import Topology


class CommandLineError(QMPEventsError):
    """The command line is not one QEMU would accept; the message is QEMU's style."""


# Options that take no argument.
_FLAGS = frozenset({
    "S", "no-user-config", "nodefaults", "nographic", "daemonize", "no-shutdown", "no-reboot",
    "no-acpi", "no-hpet", "enable-kvm", "snapshot", "full-screen", "no-fd-bootchk",
    "no-quit", "preconfig", "enable-fips", "only-migratable", "usb", "s", "version", "help",
    "nodefconfig", "no-kvm", "win2k-hack", "rtc-td-hack", "enable-sync-profile",
})
# Options with an argument the simulator parses (see QemuCommandLine).
_PARSED = frozenset({
    "name", "machine", "M", "accel", "cpu", "m", "smp", "uuid", "chardev", "mon", "qmp",
    "qmp-pretty", "blockdev", "device", "vnc", "pidfile", "object", "audiodev",
})
# Options with an argument the simulator accepts and ignores (no guest to apply them to).
_IGNORED = frozenset({
    "overcommit", "rtc", "boot", "sandbox", "msg", "global", "netdev", "drive", "serial",
    "parallel", "display", "spice", "smbios", "fw_cfg", "bios", "kernel", "initrd", "append",
    "dtb", "k", "numa", "incoming", "watchdog", "watchdog-action", "d", "D", "L", "seed",
    "mem-path", "mem-prealloc", "mem-share", "realtime", "vga", "sdl", "monitor", "debugcon",
    "add-fd", "iscsi", "fsdev", "virtfs", "nic", "net", "usbdevice", "tpmdev", "set",
    "action", "run-with", "runas", "chroot", "trace", "plugin", "icount", "semihosting-config",
    "compat", "smp-opts", "option-rom", "loadvm", "alt-grab", "ctrl-grab", "g", "hda", "hdb",
    "hdc", "hdd", "cdrom", "fda", "fdb", "mtdblock", "sd", "pflash", "device-tree",
})


def split_options(text: str) -> list[str]:
    """``a=1,b=x,,y`` -> ``["a=1", "b=x,y"]`` (QEMU's ``,,`` escape)."""
    items: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == ",":
            if text[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            items.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    items.append("".join(current))
    return items


def parse_keyval(option: str, text: str, implied: str | None = None) -> dict[str, str]:
    """One option's ``KEY=VALUE,...`` value; the first bare item is the *implied* key."""
    result: dict[str, str] = {}
    for index, item in enumerate(split_options(text)):
        if not item and index > 0:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            if index == 0 and implied is not None:
                key, value = implied, item
            else:
                value = "on"  # QemuOpts: a bare key means key=on
        result[key] = value
    if implied is not None and implied not in result and option != "mon":
        result.setdefault(implied, "")
    return result


def parse_object(option: str, text: str, implied: str) -> dict[str, Any]:
    """A ``-device``/``-blockdev``/``-object`` value: JSON object or keyval."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise CommandLineError(f"-{option} {text}: JSON parse error: {exc}") from None
        if not isinstance(value, dict):
            raise CommandLineError(f"-{option} {text}: expected a JSON object")
        return value
    return dict(parse_keyval(option, text, implied))


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)B?$", re.IGNORECASE)
_SIZE_SHIFT = {"": 20, "K": 10, "M": 20, "G": 30, "T": 40}


def parse_memory(text: str) -> int:
    """``-m 64`` / ``-m size=64M`` / ``-m 1G`` -> bytes (a bare number is MiB)."""
    match = _SIZE.match(text)
    if match is None:
        raise CommandLineError(f"-m {text}: invalid RAM size")
    number, suffix = match.groups()
    return int(float(number) * (1 << _SIZE_SHIFT[suffix.upper()]))


@dataclass(frozen=True, slots=True)
class Chardev:
    """A ``-chardev socket`` (or a ``-qmp`` address): where a monitor listens."""

    id: str
    path: str | None = None
    fd: int | None = None


@dataclass(frozen=True, slots=True)
class BlockNode:
    """One ``-blockdev`` node: libvirt's ``libvirt-N-storage`` / ``libvirt-N-format``."""

    node_name: str
    driver: str
    file: str | None = None        # the child node (format -> storage)
    filename: str | None = None    # the host file (protocol node)
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class Device:
    """One ``-device``: its driver, id and the remaining properties as given."""

    driver: str
    id: str | None
    props: dict[str, Any]


@dataclass(slots=True)
class QemuCommandLine:
    """What a QEMU command line asks of the simulator."""

    name: str = "qemu"
    start_paused: bool = False
    no_shutdown: bool = False
    daemonize: bool = False
    acpi: bool = True
    uuid: str = "00000000-0000-0000-0000-000000000000"
    machine: str = "pc-i440fx-7.2"
    accel: list[str] = field(default_factory=lambda: ["tcg"])
    cpu_model: str = "qemu64"
    smp: Topology = field(default_factory=Topology)
    max_cpus: int = 1  # -smp maxcpus=, else the CPU count: what the machine bound limits
    memory: int = 128 << 20
    pidfile: str | None = None
    chardevs: dict[str, Chardev] = field(default_factory=dict)
    monitors: list[Chardev] = field(default_factory=list)
    blockdevs: dict[str, BlockNode] = field(default_factory=dict)
    devices: list[Device] = field(default_factory=list)
    vnc: str | None = None
    ignored: list[tuple[str, str | None]] = field(default_factory=list)

    @property
    def probe(self) -> bool:
        """libvirt's capability probe (``-machine none``): no guest at all."""
        return self.machine == "none"


_MACHINE_ALIASES = {"pc": "pc-i440fx-7.2", "q35": "pc-q35-7.2"}
_ONE_CPU_MACHINES = frozenset({"none", "isapc", "x-remote"})


def machine_max_cpus(machine: str) -> tuple[str, int]:
    """QEMU 7.2's ``max_cpus`` of an x86_64 machine type: (its real name, the bound).

    i440fx: 255; q35: 288 since pc-q35-2.8, 255 before; microvm: 288; ``none``,
    ``isapc``, ``x-remote``: 1.  A name QEMU does not know gets the i440fx bound,
    so no command line starts more vCPU threads than QEMU could.
    """
    name = _MACHINE_ALIASES.get(machine, machine)
    if name in _ONE_CPU_MACHINES:
        return name, 1
    if name == "microvm":
        return name, 288
    version = re.fullmatch(r"pc-q35-(\d+)\.(\d+)(?:\.\d+)?", name)
    if version is not None:
        return name, 255 if (int(version[1]), int(version[2])) < (2, 8) else 288
    return name, 255


def _check_cpu_count(cmdline: QemuCommandLine) -> None:
    """QEMU's machine bound on ``-smp`` (``maxcpus`` if given), with QEMU's message."""
    name, bound = machine_max_cpus(cmdline.machine)
    if cmdline.max_cpus > bound:
        raise CommandLineError(f"Invalid SMP CPUs {cmdline.max_cpus}. The max CPUs "
                               f"supported by machine '{name}' is {bound}")


def _socket_chardev(option: str, chardev_id: str, opts: dict[str, str]) -> Chardev:
    if "fd" in opts:
        if not opts["fd"].isdigit():
            raise CommandLineError(f"-{option}: fd={opts['fd']}: expected a file descriptor")
        return Chardev(chardev_id, fd=int(opts["fd"]))
    if "path" in opts:
        return Chardev(chardev_id, path=opts["path"])
    raise CommandLineError(f"-{option}: chardev: socket: 'path' or 'fd' is required "
                           "(the simulator serves unix sockets)")


def _parse_qmp(cmdline: QemuCommandLine, value: str) -> None:
    address, *rest = split_options(value)
    if not address.startswith("unix:"):
        raise CommandLineError(f"-qmp {value}: only unix: monitors are simulated")
    chardev = Chardev(f"compat_monitor{len(cmdline.monitors)}", path=address[len("unix:"):])
    del rest  # server=on,wait=off: the only mode a listening monitor has here
    cmdline.monitors.append(chardev)


def _parse_blockdev(cmdline: QemuCommandLine, value: str) -> None:
    spec = parse_object("blockdev", value, "driver")
    node_name = spec.get("node-name")
    driver = spec.get("driver")
    if not isinstance(node_name, str) or not isinstance(driver, str):
        raise CommandLineError(f"-blockdev {value}: 'driver' and 'node-name' are required")
    if node_name in cmdline.blockdevs:
        raise CommandLineError(f"-blockdev {value}: Duplicate nodes with node-name='{node_name}'")
    child = spec.get("file")
    filename = spec.get("filename")
    cmdline.blockdevs[node_name] = BlockNode(
        node_name, driver, file=child if isinstance(child, str) else None,
        filename=filename if isinstance(filename, str) else None,
        read_only=spec.get("read-only") in (True, "on"))


def _apply(cmdline: QemuCommandLine, option: str, value: str) -> None:
    """One option with its argument."""
    if option == "name":
        cmdline.name = parse_keyval(option, value, "guest")["guest"]
    elif option in ("machine", "M"):
        opts = parse_keyval("machine", value, "type")
        cmdline.machine = opts["type"] or cmdline.machine
        if "accel" in opts:
            cmdline.accel = opts["accel"].split(":")
        if opts.get("acpi") == "off":
            cmdline.acpi = False
    elif option == "accel":
        cmdline.accel = [parse_keyval(option, value, "accel")["accel"]]
    elif option == "cpu":
        cmdline.cpu_model = split_options(value)[0]
    elif option == "m":
        cmdline.memory = parse_memory(parse_keyval(option, value, "size")["size"])
    elif option == "smp":
        opts = parse_keyval(option, value, "cpus")
        try:
            counts = {key: int(opts[key])
                      for key in ("cpus", "sockets", "cores", "threads", "maxcpus")
                      if opts.get(key)}
        except ValueError:
            raise CommandLineError(f"-smp {value}: invalid number of CPUs") from None
        cores, threads = counts.get("cores", 1), counts.get("threads", 1)
        cpus = counts.get("cpus", counts.get("sockets", 1) * cores * threads)
        sockets = counts.get("sockets", max(1, cpus // (cores * threads)))
        max_cpus = counts.get("maxcpus", cpus)
        if cpus < 1 or sockets * cores * threads < cpus or max_cpus < cpus:
            raise CommandLineError(f"-smp {value}: Invalid CPU topology")
        cmdline.smp = Topology(cpus, sockets, cores, threads)
        cmdline.max_cpus = max_cpus
    elif option == "uuid":
        if not re.fullmatch(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", value):
            raise CommandLineError("Fail to parse UUID string. Wrong format.")
        cmdline.uuid = value.lower()
    elif option == "chardev":
        opts = parse_keyval(option, value, "backend")
        if "id" not in opts:
            raise CommandLineError(f"-chardev {value}: Parameter 'id' is missing")
        if opts["backend"] == "socket":
            cmdline.chardevs[opts["id"]] = _socket_chardev(option, opts["id"], opts)
        else:
            cmdline.ignored.append((option, value))
    elif option == "mon":
        opts = parse_keyval(option, value)
        if opts.get("mode", "readline") != "control":
            cmdline.ignored.append((option, value))
            return
        chardev = cmdline.chardevs.get(opts.get("chardev", ""))
        if chardev is None:
            raise CommandLineError(f"-mon {value}: chardev '{opts.get('chardev')}' not found")
        cmdline.monitors.append(chardev)
    elif option in ("qmp", "qmp-pretty"):
        _parse_qmp(cmdline, value)
    elif option == "blockdev":
        _parse_blockdev(cmdline, value)
    elif option == "device":
        spec = parse_object(option, value, "driver")
        driver = spec.pop("driver", None)
        if not isinstance(driver, str) or not driver:
            raise CommandLineError(f"-device {value}: Parameter 'driver' is missing")
        device_id = spec.pop("id", None)
        cmdline.devices.append(Device(driver, device_id if isinstance(device_id, str) else None,
                                      spec))
    elif option == "vnc":
        display = split_options(value)[0]
        cmdline.vnc = None if display == "none" else display
    elif option == "pidfile":
        cmdline.pidfile = value
    else:  # -object, -audiodev: accepted, nothing to simulate
        cmdline.ignored.append((option, value))


def parse_command_line(argv: list[str]) -> QemuCommandLine:
    """Parse QEMU's arguments (without argv[0]); :class:`CommandLineError` if invalid."""
    cmdline = QemuCommandLine()
    args = iter(argv)
    for arg in args:
        if not arg.startswith("-") or arg == "-":
            raise CommandLineError(f"{arg}: a disk image is not simulated; use -blockdev")
        option = arg.lstrip("-") if arg.startswith("--") else arg[1:]
        if option in _FLAGS:
            if option == "S":
                cmdline.start_paused = True
            elif option == "no-shutdown":
                cmdline.no_shutdown = True
            elif option == "daemonize":
                cmdline.daemonize = True
            elif option == "no-acpi":
                cmdline.acpi = False
            elif option not in ("no-user-config", "nodefaults", "nographic"):
                cmdline.ignored.append((option, None))
            continue
        if option not in _PARSED and option not in _IGNORED:
            raise CommandLineError(f"{arg}: invalid option")
        value = next(args, None)
        if value is None:
            raise CommandLineError(f"{arg}: requires an argument")
        if option in _IGNORED:
            cmdline.ignored.append((option, value))
        else:
            _apply(cmdline, option, value)
    if not cmdline.monitors:
        raise CommandLineError("no QMP monitor: pass -qmp unix:PATH,server=on,wait=off or "
                               "-chardev socket,id=ID,... -mon chardev=ID,mode=control")
    _check_cpu_count(cmdline)  # after -machine, wherever it came on the line
    for device in cmdline.devices:
        drive = device.props.get("drive")
        if isinstance(drive, str) and drive not in cmdline.blockdevs:
            raise CommandLineError(f"-device {device.driver}: Property 'drive' can't find "
                                   f"value '{drive}'")
    return cmdline
