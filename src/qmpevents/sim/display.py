"""The display commands of QMP on the simulated VNC: passwords, their expiry, screendump.

QEMU 7.2's ``qmp_set_password``/``qmp_expire_password`` (ui/ui-qmp-cmds.c) for
the ``vnc`` protocol and ``qmp_screendump`` (ui/console.c), with their error
texts.  An expired password makes every VNC authentication fail, as in QEMU
(the listener is given an empty password, which nothing matches).  The
screendump is a binary PPM (``P6``) of what the VNC framebuffer shows, which
is what QEMU writes for its console.
"""

from __future__ import annotations

import os
from typing import Any

from qmpevents.protocol import CommandFailure
from qmpevents.sim.clock import Timer
from qmpevents.sim.machine import Machine

_NO_CONSOLE = "There is no console to take a screendump from"


class Display:
    """VNC password state of a machine (password and expiry), and its screendumps."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._expired = False
        self._timer: Timer | None = None

    def _password_auth(self) -> bool:
        vnc = self.machine.vnc
        return vnc is not None and vnc.query().get("auth") == "vnc"

    def set_password(self, arguments: dict[str, Any]) -> dict[str, Any]:
        if arguments["protocol"] != "vnc":
            raise CommandFailure("DeviceNotActive", "SPICE is not in use")
        if arguments.get("connected", "keep") != "keep":
            raise CommandFailure("GenericError", "Invalid parameter 'connected'")
        if not self._password_auth():
            raise CommandFailure("GenericError", "Could not set password")
        assert self.machine.vnc is not None
        self.machine.vnc.set_password("" if self._expired else arguments["password"])
        return {}

    def expire_password(self, arguments: dict[str, Any]) -> dict[str, Any]:
        if arguments["protocol"] != "vnc":
            raise CommandFailure("DeviceNotActive", "SPICE is not in use")
        if self.machine.vnc is None:
            raise CommandFailure("GenericError", "Could not set password expire time")
        delay = _expiry_delay(arguments["time"], self.machine.clock.time())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._expired = False
        if delay is not None:
            self._timer = self.machine.clock.call_later(delay, self._expire)
        return {}

    def _expire(self) -> None:
        self._timer = None
        self._expired = True
        if self._password_auth():
            assert self.machine.vnc is not None
            self.machine.vnc.set_password("")

    def screendump(self, arguments: dict[str, Any]) -> dict[str, Any]:
        vnc = self.machine.vnc
        if vnc is None:
            raise CommandFailure("GenericError", _NO_CONSOLE)
        if arguments.get("format", "ppm") != "ppm":
            raise CommandFailure("GenericError", "The simulated machine does not model the"
                                                 " command screendump with format png")
        width, height, pixels = vnc.framebuffer_rgb()
        filename = arguments["filename"]
        try:
            with open(filename, "wb") as out:
                out.write(b"P6\n%d %d\n255\n" % (width, height) + pixels)
        except OSError as error:
            raise CommandFailure("GenericError", f"failed to open file '{filename}':"
                                                 f" {os.strerror(error.errno or 0)}") from None
        return {}


def _expiry_delay(when: str, now: float) -> float | None:
    """Seconds until expiry for QEMU's ``now``/``never``/``+SECONDS``/``EPOCH``; None: never."""
    if when == "never":
        return None
    if when == "now":
        return 0.0
    digits = when[1:] if when.startswith("+") else when
    number = int(digits) if digits.isdigit() else 0  # QEMU's strtoull: garbage is 0
    return float(number) if when.startswith("+") else max(0.0, number - now)
