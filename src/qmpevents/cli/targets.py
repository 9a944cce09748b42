"""Where the VMs are: QMP addresses given on the command line.

A target is ``unix:PATH``, ``tcp:HOST:PORT``, a plain socket path, or a
directory / glob of sockets.  Directories and globs are *re-scanned*: a VM
whose socket appears later is attached, as a host-wide watcher (Proxmox's
qmeventd) must do.
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass
from pathlib import Path


class TargetError(ValueError):
    """A target that cannot be understood (a usage error)."""


@dataclass(frozen=True)
class Target:
    """One VM's QMP address and the name it is shown under."""

    address: str
    name: str


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _vm_name(path: str) -> str:
    """``/run/qemu-server/101.qmp`` -> ``101``: the socket's stem names the VM."""
    return Path(path).stem or path


def is_pattern(spec: str) -> bool:
    """True for a directory or glob, which is re-scanned for new sockets."""
    if spec.startswith(("unix:", "tcp:")):
        return False
    return os.path.isdir(spec) or glob.has_magic(spec)


def expand(spec: str) -> list[Target]:
    """The VMs *spec* names right now."""
    if spec.startswith("tcp:"):
        host, sep, port = spec[4:].rpartition(":")
        if not sep or not host or not port.isdigit():
            raise TargetError(f"bad target {spec!r}: expected tcp:HOST:PORT")
        return [Target(spec, f"{host.strip('[]')}:{port}")]
    if spec.startswith("unix:"):
        path = spec[5:]
        if not path:
            raise TargetError(f"bad target {spec!r}: expected unix:PATH")
        return [Target(spec, _vm_name(path))]
    if os.path.isdir(spec):
        paths = sorted(os.path.join(spec, entry) for entry in os.listdir(spec))
        return [Target(f"unix:{p}", _vm_name(p)) for p in paths if _is_socket(p)]
    if glob.has_magic(spec):
        return [Target(f"unix:{p}", _vm_name(p)) for p in sorted(glob.glob(spec))
                if _is_socket(p)]
    return [Target(f"unix:{spec}", _vm_name(spec))]
