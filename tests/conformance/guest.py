"""The slow scenario: guest-driven events from a booted Linux guest.

QEMU boots Debian's kernel (``linux-image-amd64``: ``/boot/vmlinuz-*`` and the
virtio modules from ``/lib/modules``) with a busybox initramfs (``busybox-static``)
built here in pure Python (cpio "newc").  Its ``/init`` does what a guest does:

1. writes to ``d_stop`` (werror=stop) -> BLOCK_IO_ERROR(stop), STOP; we ``cont``;
2. writes to ``d_report`` (report), reads ``d_ignore`` (ignore), writes
   ``d_enospc`` (werror=enospc, ENOSPC) -> three BLOCK_IO_ERROR, STOP; we ``cont``;
3. a burst of five ``hwclock -w`` -> RTC_CHANGE at once, the last one ~1 s later;
4. ``poweroff -f`` under -no-shutdown -> SHUTDOWN(guest-shutdown), STOP.

The errors are QEMU blkdebug ``inject-error`` rules (once, on sector 2048) under a
raw format node.  The simulator gets the same scenario with ``x-sim-*`` commands
(hidden ids, so their replies are not recorded).  QEMU's serial console goes to
``guest-serial.log`` in a temp dir (printed when a wait times out).
"""

from __future__ import annotations

import glob
import os
import stat
import tempfile
from pathlib import Path

from .harness import (
    Recording,
    Scenario,
    Send,
    Setup,
    Step,
    Sync,
    WaitEOF,
    WaitFor,
    Who,
    cmd,
    negotiate,
    record_both,
)

BUSYBOX = "/bin/busybox"
MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
           "virtio_pci", "virtio_blk")
DRIVES: tuple[tuple[str, str, str], ...] = (
    # id, -drive error options, blkdebug rule (event, errno)
    ("d_stop", "werror=stop,rerror=stop", "write_aio 5"),
    ("d_report", "werror=report,rerror=report", "write_aio 5"),
    ("d_ignore", "werror=ignore,rerror=ignore", "read_aio 5"),
    ("d_enospc", "werror=enospc,rerror=report", "write_aio 28"),
)
BOOT_DEADLINE = 150.0

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {modules}; do insmod /lib/modules/$m.ko; done
n=0
while [ ! -b /dev/vdd ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done
echo "conformance: disks $(ls /dev/vd*)"
dd if=/dev/zero of=/dev/vda bs=4096 seek=256 count=1 conv=fsync
echo "conformance: d_stop done"
dd if=/dev/zero of=/dev/vdb bs=4096 seek=256 count=1 conv=fsync
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vdc of=/dev/null bs=4096 skip=256 count=1
dd if=/dev/zero of=/dev/vdd bs=4096 seek=256 count=1 conv=fsync
echo "conformance: io done"
for i in 1 2 3 4 5; do hwclock -w; done
echo "conformance: rtc done"
sleep 3
poweroff -f
"""


def kernel() -> tuple[str, str] | None:
    """(vmlinuz, modules dir) of the newest installed Debian kernel, or None."""
    for path in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True):
        release = os.path.basename(path)[len("vmlinuz-"):]
        modules = f"/lib/modules/{release}/kernel"
        if os.access(path, os.R_OK) and os.path.isdir(modules):
            return path, modules
    return None


def available() -> str | None:
    """Why the guest scenario cannot run here, or None."""
    if kernel() is None:
        return "no /boot/vmlinuz-* (apt-get install linux-image-amd64)"
    if not os.access(BUSYBOX, os.X_OK):
        return "no /bin/busybox (apt-get install busybox-static)"
    return None


def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 1) -> bytes:
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = header + name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4)
    return out + data + b"\0" * (-len(data) % 4)


def build_initramfs(path: Path) -> None:
    """A cpio newc archive: /init, /bin/busybox and the virtio block modules."""
    found = kernel()
    assert found is not None
    _, modules_dir = found
    files: list[tuple[str, int, bytes]] = [
        ("bin", stat.S_IFDIR | 0o755, b""), ("lib", stat.S_IFDIR | 0o755, b""),
        ("lib/modules", stat.S_IFDIR | 0o755, b""),
        ("init", stat.S_IFREG | 0o755, INIT.format(modules=" ".join(MODULES)).encode()),
        ("bin/busybox", stat.S_IFREG | 0o755, Path(BUSYBOX).read_bytes()),
    ]
    for module in MODULES:
        (ko,) = glob.glob(f"{modules_dir}/drivers/**/{module}.ko", recursive=True)
        files.append((f"lib/modules/{module}.ko", stat.S_IFREG | 0o644, Path(ko).read_bytes()))
    blob = b"".join(_cpio_entry(name, mode, data, ino)
                    for ino, (name, mode, data) in enumerate(files, start=1))
    blob += _cpio_entry("TRAILER!!!", 0, b"", 0)
    path.write_bytes(blob)


def qemu_args(workdir: Path) -> tuple[str, ...]:
    """Kernel, initramfs, disks with blkdebug rules, serial log (files under *workdir*)."""
    found = kernel()
    assert found is not None
    build_initramfs(workdir / "initramfs.cpio")
    args = ["-m", "128", "-kernel", found[0], "-initrd", str(workdir / "initramfs.cpio"),
            "-append", "console=ttyS0 quiet panic=-1", "-serial",
            f"file:{workdir / 'guest-serial.log'}", "-no-reboot"]
    for slot, (drive, policy, rule) in enumerate(DRIVES, start=5):
        event, errno = rule.split()
        config = workdir / f"{drive}.blkdebug"
        config.write_text(f'[inject-error]\nevent = "{event}"\nerrno = "{errno}"\n'
                          f'sector = "2048"\nonce = "on"\n')
        image = workdir / f"{drive}.img"
        with open(image, "wb") as out:
            out.truncate(4 << 20)
        args += ["-drive", f"if=none,id={drive},format=raw,{policy},file.driver=blkdebug,"
                 f"file.config={config},file.image.filename={image}",
                 "-device", f"virtio-blk-pci,drive={drive},addr={slot:#x}"]
    return tuple(args)


def _x(number: int, name: str, arguments: str) -> Send:
    """A hidden x-sim-* command: what the guest does, in the simulator only."""
    return Send(f'{{"execute": "{name}", "arguments": {arguments}, "id": "__x{number}"}}\r\n'
                .encode(), only="sim")


def _io(number: int, device: str, operation: str, errno: str = "EIO") -> Send:
    return _x(number, "x-sim-io-error",
              f'{{"device": "{device}", "operation": "{operation}", "errno": "{errno}"}}')


_BLOCK = rb'"event": "BLOCK_IO_ERROR"'
_STOP = rb'"event": "STOP"'

STEPS: tuple[Step, ...] = (
    negotiate(), Sync(),
    cmd("cont", "boot"),
    _io(1, "d_stop", "write"),
    WaitFor(_BLOCK, 1, timeout=BOOT_DEADLINE), WaitFor(_STOP, 1), Sync(),
    cmd("query-status", "io-error"), Sync(),
    cmd("cont", "retry"), Sync(),
    _io(2, "d_report", "write"), _io(3, "d_ignore", "read"),
    _io(4, "d_enospc", "write", "ENOSPC"),
    WaitFor(_BLOCK, 4, timeout=60.0), WaitFor(_STOP, 2), Sync(),
    cmd("cont", "retry2"), Sync(),
    *(_x(10 + i, "x-sim-rtc-change", f'{{"offset": {i}}}') for i in range(5)),
    WaitFor(rb'"event": "RTC_CHANGE"', 2, timeout=60.0),
    _x(20, "x-sim-guest-shutdown", "{}"),
    WaitFor(rb'"event": "SHUTDOWN"', 1, timeout=60.0), WaitFor(_STOP, 3), Sync(),
    cmd("query-status", "after-shutdown"), Sync(),
    Send(b'{"execute": "quit", "id": "quit"}'), WaitEOF(),
)

SIM_DRIVES = tuple(f"{drive},{policy}" for drive, policy, _ in DRIVES)


def make_scenario(workdir: Path | None) -> Scenario:
    """The guest scenario; *workdir* holds QEMU's files (None: a sim-only description)."""
    args = qemu_args(workdir) if workdir is not None else ()
    return Scenario("guest", "a booted Linux guest: BLOCK_IO_ERROR (stop, report, ignore,"
                    " enospc), RTC_CHANGE burst (throttled), guest poweroff (-no-shutdown)",
                    STEPS, Setup(no_shutdown=True, sim_drives=SIM_DRIVES, qemu_args=args,
                                 halt_firmware=False), slow=True)


GUEST = make_scenario(None)


def workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="qmpev-guest-")


async def record_guest() -> dict[Who, Recording]:
    """Boot the guest in QEMU and run the same scenario on the simulator."""
    with workdir() as tmp:
        scenario = make_scenario(Path(tmp))
        try:
            return await record_both(scenario)
        except BaseException:
            log = Path(tmp, "guest-serial.log")
            if log.exists():
                print(log.read_text(errors="replace")[-4000:])
            raise
