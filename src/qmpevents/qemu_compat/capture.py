"""Capture real QEMU's replies to the commands libvirt asks and the simulator replays.

libvirt decides what an emulator can do from a fixed set of queries (the
capability probe: ``query-qmp-schema``, ``qom-list-types``,
``device-list-properties`` ..., see ``shared/spec/libvirt/probe-commands.txt``)
and, at domain start, from the CPU's QOM properties.  Their answers describe
QEMU's binary, not a guest, so the simulator answers them with what QEMU 7.2
really said: this module runs the installed ``qemu-system-x86_64`` with
libvirt's own command lines, asks exactly those commands and records each
reply (``return`` or ``error``) in the data file the package ships
(``qemu_compat/data/qemu-7.2-replies.json.gz``).  ``tools/capture-qemu-replies``
calls :func:`main`; a ``qemu``-marked test re-captures and compares.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

DATA_FILE = Path(__file__).parent / "data" / "qemu-7.2-replies.json.gz"

PROBE_ARGS = ["-S", "-no-user-config", "-nodefaults", "-nographic",
              "-machine", "none,accel=tcg"]
"""libvirt's probe command line (TCG: the simulator has no KVM), minus -qmp/-pidfile."""

DOMAIN_ARGS = ["-S", "-no-user-config", "-nodefaults", "-display", "none",
               "-machine", "pc-i440fx-7.2,usb=off,dump-guest-core=off", "-accel", "tcg",
               "-cpu", "qemu64", "-m", "64",
               "-device", '{"driver":"virtio-balloon-pci","id":"balloon0","bus":"pci.0"}']
"""A libvirt TCG domain's machine: the CPU and balloon whose QOM libvirt reads."""

PROBE_DEVICES = [
    "virtio-blk-pci", "virtio-net-pci", "virtio-scsi-pci", "virtio-net-ccw",
    "virtio-scsi-ccw", "vfio-pci", "scsi-hd", "ide-hd", "PIIX4_PM", "usb-redir",
    "usb-storage", "kvm-pit", "VGA", "vmware-svga", "qxl", "virtio-gpu-pci",
    "virtio-gpu-device", "ICH9-LPC", "virtio-balloon-pci", "virtio-balloon-ccw",
    "virtio-balloon-device", "intel-iommu", "mch", "nvdimm", "pcie-root-port", "usb-host",
    "vhost-user-fs-device", "virtio-mem-pci", "virtio-iommu-pci",
]
PROBE_QOM_TYPES = ["memory-backend-file", "memory-backend-memfd", "max-x86_64-cpu",
                   "none-machine"]
CPU_PATH = "/machine/unattached/device[0]"
BALLOON_PATH = "/machine/peripheral/balloon0"

Request = tuple[str, dict[str, Any] | None]


def probe_requests() -> list[Request]:
    """Every command of libvirt 9.0's probe (both passes), with its arguments.

    ``query-version``, ``query-qmp-schema`` and ``query-commands`` are left out:
    the simulator's QEMU 7.2 surface answers them from its own schema capture.
    """
    requests: list[Request] = [(name, None) for name in (
        "query-target", "qom-list-types",
        "query-machines", "query-cpu-definitions", "query-tpm-models", "query-tpm-types",
        "query-command-line-options", "query-migrate-capabilities", "query-sev-capabilities",
        "query-sgx-capabilities")]
    requests += [("device-list-properties", {"typename": name}) for name in PROBE_DEVICES]
    requests += [("qom-list-properties", {"typename": name}) for name in PROBE_QOM_TYPES]
    for model in ("max", "host"):
        requests += [
            ("query-cpu-model-expansion", {"type": "static", "model": {"name": model}}),
            ("query-cpu-model-expansion",
             {"type": "static", "model": {"name": model, "props": {"migratable": False}}}),
            ("query-cpu-model-expansion",
             {"type": "full",
              "model": {"name": model, "props": {"migratable": False,
                                                 "hv-passthrough": True}}}),
        ]
    return requests


def request_key(name: str, arguments: dict[str, Any] | None) -> str:
    """The lookup key of a request: its name and canonical (sorted) arguments."""
    return json.dumps([name, arguments or {}], sort_keys=True, separators=(",", ":"))


class _Monitor:
    """A blocking QMP connection to a QEMU we started (no events expected)."""

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)
        self._file = self._sock.makefile("rb")
        json.loads(self._file.readline())  # greeting
        self.ask("qmp_capabilities", None)

    def ask(self, name: str, arguments: dict[str, Any] | None) -> dict[str, Any]:
        """The reply to one command: ``{"return": ...}`` or ``{"error": ...}``."""
        request: dict[str, Any] = {"execute": name}
        if arguments is not None:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\r\n")
        while True:
            message = json.loads(self._file.readline())
            if "return" in message or "error" in message:
                return {k: v for k, v in message.items() if k in ("return", "error")}

    def close(self) -> None:
        self._file.close()
        self._sock.close()


@contextlib.contextmanager
def _qemu(binary: str, args: Sequence[str]) -> Iterator[_Monitor]:
    workdir = tempfile.mkdtemp(prefix="qmpev-capture-")
    path = os.path.join(workdir, "qmp.sock")
    process = subprocess.Popen([binary, *args, "-qmp", f"unix:{path},server=on,wait=off"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "")})
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(path):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{binary} did not open its QMP socket")
            time.sleep(0.02)
        monitor = _Monitor(path)
        try:
            yield monitor
        finally:
            monitor.close()
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def capture(binary: str) -> dict[str, Any]:
    """Ask a fresh QEMU every recorded request; the data file's content."""
    replies: dict[str, Any] = {}
    with _qemu(binary, PROBE_ARGS) as monitor:
        for name, arguments in probe_requests():
            replies[request_key(name, arguments)] = monitor.ask(name, arguments)
    with _qemu(binary, DOMAIN_ARGS) as monitor:
        domain: list[Request] = [("qom-list", {"path": CPU_PATH}),
                                 ("qom-list", {"path": BALLOON_PATH})]
        cpu_props = monitor.ask("qom-list", {"path": CPU_PATH})["return"]
        domain += [("qom-get", {"path": CPU_PATH, "property": prop["name"]})
                   for prop in cpu_props if not prop["type"].startswith(("child<", "link<"))]
        for name, arguments in domain:
            replies[request_key(name, arguments)] = monitor.ask(name, arguments)
        version = monitor.ask("query-version", None)["return"]
    return {"qemu-version": version, "probe-args": PROBE_ARGS, "domain-args": DOMAIN_ARGS,
            "replies": replies}


def load(path: Path = DATA_FILE) -> dict[str, Any]:
    with gzip.open(path, "rt", encoding="utf-8") as stream:
        data: dict[str, Any] = json.load(stream)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qemu", default="qemu-system-x86_64", help="the QEMU binary")
    parser.add_argument("-o", "--output", type=Path, default=DATA_FILE)
    args = parser.parse_args(argv)
    binary = shutil.which(args.qemu)
    if binary is None:
        sys.stderr.write(f"capture: {args.qemu} not found\n")
        return 1
    data = capture(binary)
    # mtime=0: the same replies give the same bytes, so a re-capture diffs cleanly.
    with open(args.output, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb",
                                                         mtime=0) as out:
        out.write(json.dumps(data, sort_keys=True, indent=0).encode())
    sys.stderr.write(f"capture: {len(data['replies'])} replies written to {args.output}\n")
    return 0
