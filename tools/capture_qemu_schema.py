"""Capture what the installed QEMU answers into the data file the package ships.

Usage::

    python tools/capture_qemu_schema.py [OUT]   # default: src/qmpevents/data/qemu-7.2.json.gz

Runs ``qemu-system-x86_64`` paused, without defaults, on the machine the
simulator models (a ``pc`` machine under TCG, one vCPU, 64 MiB, one null-co
drive on a virtio-blk-pci device and one empty cdrom drive on an ide-cd device,
as ``qmpevents serve --drive drive0 --drive cd0,media=cdrom`` gives) and
records, through one QMP unix socket:

* ``query-qmp-schema``, ``query-commands``, ``query-version``, and ``query-events``'s
  reply (an error: QEMU 7.2 no longer has it; ``query-qmp-schema`` lists the events);
* the reply (``return`` or ``error``) of every ``query-*`` command that needs no
  argument, which the simulator uses as the template of its own answers;
* ``qom-list`` of the machine's main containers, and what HMP prints for the
  ``info`` commands the simulator answers and for ``help`` and ``info`` (the
  lists of HMP commands).

:func:`capture` is importable: the test that checks the shipped file against the
installed QEMU calls it and compares.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).parent.parent / "src/qmpevents/data/qemu-7.2.json.gz"

#: The machine: what the simulator models with ``--name qmpevents-sim --drive drive0
#: --drive cd0,media=cdrom``.
QEMU_ARGS = ("-S", "-nodefaults", "-display", "none", "-machine", "pc,accel=tcg", "-m", "64",
             "-name", "qmpevents-sim",
             "-drive", "if=none,id=drive0,driver=null-co",
             "-device", "virtio-blk-pci,drive=drive0",
             "-drive", "if=none,id=cd0,media=cdrom", "-device", "ide-cd,drive=cd0")
#: The simulator's ``drives`` for that machine.
SIM_DRIVES = ("drive0", "cd0,media=cdrom")

#: The containers, and one device of each kind a drive has (virtio-blk-pci, ide-cd).
QOM_PATHS = ("/", "/machine", "/machine/peripheral", "/machine/peripheral-anon",
             "/machine/unattached", "/chardevs", "/objects",
             "/machine/peripheral-anon/device[0]", "/machine/peripheral-anon/device[1]")
HMP_COMMANDS = ("info status", "info name", "info version", "info block", "info kvm",
                "info cpus", "info chardev", "info vnc", "info mice", "info uuid",
                "help stop", "help", "info")
STARTUP_DEADLINE = 15.0


class QmpSocket:
    """A blocking QMP client: one request at a time, events kept aside."""

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)
        self._file = self._sock.makefile("rb")
        self.greeting = json.loads(self._file.readline())
        self.events: list[dict[str, Any]] = []
        self.execute("qmp_capabilities")

    def execute(self, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """The reply object (``return`` or ``error``) of one command."""
        request: dict[str, Any] = {"execute": name}
        if arguments is not None:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            message = json.loads(self._file.readline())
            if "event" in message:
                self.events.append(message)
                continue
            return dict(message)

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def _wait_for_socket(path: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"QEMU did not create {path} (exit status {proc.poll()})")
        time.sleep(0.02)  # polling an external process's startup, bounded by the deadline


def _no_required_arguments(command: dict[str, Any], types: dict[str, Any]) -> bool:
    arg_type = types.get(command["arg-type"], {})
    return all(member.get("default", 0) is None for member in arg_type.get("members", []))


def capture(binary: str = "qemu-system-x86_64") -> dict[str, Any]:
    """Run QEMU once and return everything this module records, as plain JSON values."""
    workdir = tempfile.mkdtemp(prefix="qmpev-capture-")
    path = os.path.join(workdir, "qmp.sock")
    proc = subprocess.Popen([binary, *QEMU_ARGS, "-qmp", f"unix:{path},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_for_socket(path, proc)
        qmp = QmpSocket(path)
        try:
            return _record(qmp)
        finally:
            qmp.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _record(qmp: QmpSocket) -> dict[str, Any]:
    schema = qmp.execute("query-qmp-schema")["return"]
    types = {entry["name"]: entry for entry in schema}
    commands = qmp.execute("query-commands")["return"]
    queries: dict[str, Any] = {}
    for entry in schema:
        if (entry["meta-type"] == "command" and entry["name"].startswith("query-")
                and _no_required_arguments(entry, types)):
            queries[entry["name"]] = qmp.execute(entry["name"])
    return {
        "qemu-args": list(QEMU_ARGS),
        "greeting": qmp.greeting,
        "query-qmp-schema": schema,
        "query-commands": commands,
        "query-events": qmp.execute("query-events"),
        "query-version": qmp.execute("query-version")["return"],
        "queries": queries,
        "qom-list": {path: qmp.execute("qom-list", {"path": path}) for path in QOM_PATHS},
        "hmp": {line: qmp.execute("human-monitor-command", {"command-line": line})
                for line in HMP_COMMANDS},
    }


def write(data: dict[str, Any], out: Path) -> None:
    """The data file: JSON, one space indent, gzip without a timestamp (reproducible)."""
    text = json.dumps(data, indent=1, sort_keys=False).encode() + b"\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as zipped:
        zipped.write(text)


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    write(capture(), out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
