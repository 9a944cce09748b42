"""``human-monitor-command``: the HMP commands management tools send, printed as QEMU does.

QEMU's HMP writes with ``\\n``; the monitor turns each into ``\\r\\n`` before
the text becomes the command's return string.  Texts follow QEMU 7.2's
``hmp_info_status``, ``hmp_info_name``, ``hmp_info_version``,
``hmp_info_block`` (``block/qapi.c``) and ``hmp_handle_error``
(``Error: DESC``); the tests compare them with real QEMU's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from qmpevents.protocol import CommandFailure
from qmpevents.qapi import load_capture
from qmpevents.sim.machine import Machine
from qmpevents.sim.runstate import RunState

_ACTIONS: dict[str, Callable[[Machine], None]] = {
    "stop": Machine.stop, "s": Machine.stop,
    "cont": Machine.cont, "c": Machine.cont,
    "system_reset": Machine.system_reset,
    "system_powerdown": Machine.system_powerdown,
    "quit": Machine.quit, "q": Machine.quit,
}


NOT_MODELLED = "The simulated machine does not model the HMP command '{command}'\n"
"""What HMP prints for a command QEMU 7.2's HMP has and the simulator does not model."""


@functools.cache
def _hmp_commands() -> tuple[frozenset[str], frozenset[str]]:
    """QEMU 7.2's HMP command names and ``info`` names (with aliases), from its help."""
    hmp = load_capture()["hmp"]

    def names(text: str, word: int) -> frozenset[str]:
        found: set[str] = set()
        for line in text.splitlines():
            if line and not line[0].isspace() and len(line.split()) > word:
                found.update(line.split()[word].split("|"))
        return frozenset(found)

    return names(hmp["help"]["return"], 0), names(hmp["info"]["return"], 1)


def human_monitor_command(machine: Machine, command_line: str) -> str:
    """What HMP prints for *command_line* (errors are printed, as HMP does)."""
    words = command_line.split()
    if not words:
        return ""
    commands, infos = _hmp_commands()
    if words in (["help"], ["info"]):  # QEMU's own lists of commands
        text: str = load_capture()["hmp"][words[0]]["return"]
        return text
    if words[0] not in commands:
        return _crlf(f"unknown command: '{words[0]}'\n")
    if words[0] in ("info", "i") and len(words) > 1 and words[1] not in infos:
        return _crlf(f"unknown command: '{words[0]} {words[1]}'\n")
    if words[0] in _ACTIONS and len(words) == 1:
        try:
            _ACTIONS[words[0]](machine)
        except CommandFailure as failure:
            return _crlf(f"Error: {failure.desc}\n")
        return ""
    if words[0] in ("info", "i") and len(words) == 2 and words[1] in _INFO:
        return _crlf(_INFO[words[1]](machine))
    return _crlf(NOT_MODELLED.format(command=" ".join(words)))


def _crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


def _info_status(machine: Machine) -> str:
    state = machine.state
    shown = "running" if state.running else "paused"
    detail = "" if state in (RunState.RUNNING, RunState.PAUSED) else f" ({state.value})"
    return f"VM status: {shown}{detail}\n"


def _info_version(machine: Machine) -> str:
    qemu = machine.version["qemu"]
    return f"{qemu['major']}.{qemu['minor']}.{qemu['micro']}{machine.version['package']}\n"


def _info_block(machine: Machine) -> str:
    """``print_block_info`` of QEMU's block/qapi.c for each drive, a blank line between."""
    blocks = []
    for drive in machine.block.drives.values():
        medium = drive.medium
        if medium is None:
            text = f"{drive.config.id}: [not inserted]\n"
        else:
            read_only = ", read-only" if medium.read_only else ""
            text = (f"{drive.config.id} ({medium.node_name}): {medium.filename}"
                    f" ({medium.driver}{read_only})\n")
        text += f"    Attached to:      {drive.attached_to}\n"
        if drive.iostatus_enabled and drive.io_status != "ok":
            text += f"    I/O status:       {drive.io_status}\n"
        if drive.removable:
            tray = "open" if drive.tray_open else "closed"
            text += f"    Removable device: not locked, tray {tray}\n"
        if medium is not None:
            text += "    Cache mode:       writeback\n"
        blocks.append(text)
    return "\n".join(blocks)


_INFO: dict[str, Callable[[Machine], str]] = {
    "status": _info_status,
    "name": lambda machine: f"{machine.name}\n" if machine.name else "",  # as QEMU
    "version": _info_version,
    "block": _info_block,
    "kvm": lambda _machine: "kvm support: disabled\n",
}
