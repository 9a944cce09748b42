"""A consumer of libvirt's own event API (Debian's python3-libvirt), run by the system python.

Usage: ``/usr/bin/python3 libvirt_event_consumer.py URI``.  Prints one line per domain
event in ``virsh event``'s format (``event 'lifecycle' for domain 'NAME': Suspended
Paused``) so a test can compare the two clients line for line.  Prints ``ready`` once
every callback is registered; ends on SIGINT/SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading

import libvirt  # type: ignore[import-not-found]

LIFECYCLE = {
    0: ("Defined", ["Added", "Updated", "Renamed", "Snapshot"]),
    1: ("Undefined", ["Removed", "Renamed"]),
    2: ("Started", ["Booted", "Migrated", "Restored", "Snapshot", "Event wakeup"]),
    3: ("Suspended", ["Paused", "Migrated", "I/O Error", "Watchdog", "Restored", "Snapshot",
                      "API error", "Post-copy", "Post-copy Error"]),
    4: ("Resumed", ["Unpaused", "Migrated", "Snapshot", "Post-copy", "Post-copy Error"]),
    5: ("Stopped", ["Shutdown", "Destroyed", "Crashed", "Migrated", "Saved", "Failed",
                    "Snapshot"]),
    6: ("Shutdown", ["Finished", "Finished after guest request",
                     "Finished after host request"]),
}
IO_ACTIONS = ["none", "pause", "report"]
GRAPHICS_PHASES = ["connect", "initialize", "disconnect"]
FAMILIES = ["IPv4", "IPv6", "UNIX"]


def emit(kind: str, dom: libvirt.virDomain, text: str | None = None) -> None:
    suffix = f": {text}" if text is not None else ""
    sys.stdout.write(f"event '{kind}' for domain '{dom.name()}'{suffix}\n")
    sys.stdout.flush()


def lifecycle(_conn: object, dom: libvirt.virDomain, event: int, detail: int,
              _opaque: object) -> None:
    name, details = LIFECYCLE.get(event, (str(event), []))
    emit("lifecycle", dom, f"{name} {details[detail] if detail < len(details) else detail}")


def address(addr: dict[str, str]) -> str:
    return f"{FAMILIES[int(addr['family'])]} {addr['node']} {addr['service']}"


def main() -> int:
    uri = sys.argv[1]
    libvirt.virEventRegisterDefaultImpl()
    conn = libvirt.open(uri)
    ids = libvirt
    callbacks = {
        ids.VIR_DOMAIN_EVENT_ID_LIFECYCLE: lifecycle,
        ids.VIR_DOMAIN_EVENT_ID_REBOOT: lambda _c, d, _o: emit("reboot", d),
        ids.VIR_DOMAIN_EVENT_ID_RTC_CHANGE: lambda _c, d, off, _o: emit("rtc-change", d,
                                                                      str(off)),
        ids.VIR_DOMAIN_EVENT_ID_IO_ERROR: lambda _c, d, path, alias, action, _o: emit(
            "io-error", d, f"{path} ({alias}) {IO_ACTIONS[action]}"),
        ids.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON: lambda _c, d, path, alias, action, why, _o:
            emit("io-error-reason", d, f"{path} ({alias}) {IO_ACTIONS[action]} due to {why}"),
        ids.VIR_DOMAIN_EVENT_ID_GRAPHICS: lambda _c, d, phase, local, remote, auth, _s, _o:
            emit("graphics", d, f"{GRAPHICS_PHASES[phase]} local[{address(local)}] "
                                f"remote[{address(remote)}] {auth}"),
        ids.VIR_DOMAIN_EVENT_ID_PMWAKEUP: lambda _c, d, _r, _o: emit("pm-wakeup", d),
        ids.VIR_DOMAIN_EVENT_ID_PMSUSPEND: lambda _c, d, _r, _o: emit("pm-suspend", d),
        ids.VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE: lambda _c, d, actual, _o: emit(
            "balloon-change", d, str(actual)),
    }
    for event_id, callback in callbacks.items():
        conn.domainEventRegisterAny(None, event_id, callback, None)
    libvirt.virEventAddTimeout(200, lambda *_: None, None)  # wake up to notice a signal
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while not stop.is_set():
        libvirt.virEventRunDefaultImpl()
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
