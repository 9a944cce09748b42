"""Where the VMs are: target strings, the QMP addresses they name now, and VM names.

A target is ``unix:PATH``, ``tcp:HOST:PORT``, a plain socket path, or a
directory / glob of sockets, optionally named: ``NAME=ADDRESS``.  Directories
(a trailing ``/`` means one, even one that does not exist yet) and globs are
*re-scanned* by their users (:class:`~qmpevents.client.vms.VMs`, ``qmpevents
watch``): a VM whose socket appears later is attached, as a host-wide watcher
(Proxmox's qmeventd) must do.

A VM is shown under, in order: the explicit NAME, the VM's own name
(``query-name``, see :func:`display_name`), else the distinguishing part of
its path -- the socket's stem (``/run/qemu-server/101.qmp`` -> ``101``), or
for a generic stem such as ``monitor`` the directory's name, without
libvirt's ``domain-N-`` prefix (``.../domain-3-web1/monitor.sock`` -> ``web1``).

A path found by scanning a directory or glob, or given plain (not
``unix:``), is the socket's path as it is: a file named
``vm1.sock,pretty=on`` is that file, never ``vm1.sock`` with an option
(:attr:`Target.connect_address`).
"""

from __future__ import annotations

import glob
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from qmpevents.addresses import Address, AddressError, TcpAddress, UnixAddress, parse_address
from qmpevents.errors import QMPEventsError

if TYPE_CHECKING:
    from qmpevents.client.connection import QMPClient

GENERIC_STEMS: Final = frozenset({"monitor", "qmp-monitor", "monitor-qmp", "mon"})
"""Socket stems that say nothing about the VM (libvirt's ``monitor``): its directory
names it instead."""
_LIBVIRT_DIR: Final = re.compile(r"^domain-\d+-(.+)$")
_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
_EXTENSION: Final = re.compile(r"^(\.[A-Za-z0-9_-]*)?$")


class TargetError(AddressError):
    """A target that cannot be understood (a usage error on the command line)."""


@dataclass(frozen=True)
class Target:
    """One VM's QMP address and the name it is shown under (*explicit*: NAME=ADDRESS).

    *path* is set for a socket found by a scan or given as a plain path: the
    file's exact name, which :attr:`connect_address` does not parse.
    """

    address: str
    name: str
    explicit: bool = False
    path: str | None = None

    @property
    def connect_address(self) -> Address:
        """What to connect to: *path* as it is, else *address* parsed."""
        return UnixAddress(self.path) if self.path is not None else parse_address(self.address)


def _socket_target(path: str) -> Target:
    """A socket file's target, its path kept literal."""
    return Target(f"unix:{path}", _vm_name(path), path=path)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _vm_name(path: str) -> str:
    """The distinguishing part of a socket path (see the module docstring)."""
    pure = Path(path)
    # An extension is letters and digits (.sock, .qmp); "vm1.sock,pretty=on" is a name
    # of its own, not vm1's.
    stem = pure.stem if _EXTENSION.match(pure.suffix) else pure.name
    if stem.lower() in GENERIC_STEMS and pure.parent.name:
        directory = pure.parent.name
        libvirt = _LIBVIRT_DIR.match(directory)
        return libvirt.group(1) if libvirt else directory
    return stem or path


def split_name(spec: str) -> tuple[str | None, str]:
    """``web1=/run/x.sock`` -> ("web1", "/run/x.sock"); a spec without a name -> (None, spec).

    NAME is letters, digits and ``_.@-``, so a path that merely contains ``=``
    (``/tmp/a=b/qmp.sock``) is not split."""
    name, sep, rest = spec.partition("=")
    if sep and rest and _NAME.match(name):
        return name, rest
    return None, spec


def is_pattern(spec: str) -> bool:
    """True for a directory or glob, which is re-scanned for new sockets."""
    spec = split_name(spec)[1]
    if spec.startswith(("unix:", "tcp:")):
        return False
    return spec.endswith("/") or os.path.isdir(spec) or glob.has_magic(spec)


LIBVIRT_MONITOR: Final = "monitor.sock"
"""The QMP socket in each of libvirt's domain directories (``.../qemu/domain-N-NAME/``)."""


def expand(spec: str) -> list[Target]:
    """The VMs *spec* names right now (none yet for a directory that does not exist)."""
    name, spec = split_name(spec)
    if name is not None:
        if is_pattern(spec):
            raise TargetError(f"{name}={spec}: a NAME is for one VM, not a directory or glob")
        return [Target(target.address, name, explicit=True, path=target.path)
                for target in expand(spec)]
    if spec.startswith(("tcp:", "unix:")):
        try:
            address = parse_address(spec)
        except AddressError as exc:
            raise TargetError(str(exc)) from None
        if isinstance(address, TcpAddress):
            return [Target(spec, f"{address.host}:{address.port}")]
        return [Target(spec, _vm_name(address.path))]
    if spec.endswith("/") or os.path.isdir(spec):
        try:
            entries = os.listdir(spec)
        except OSError:
            return []  # not there yet: re-scanned
        # Its sockets, and libvirt's layout: DIR/domain-N-NAME/monitor.sock.
        paths = [os.path.join(spec, entry) for entry in entries]
        paths += [os.path.join(p, LIBVIRT_MONITOR) for p in paths if os.path.isdir(p)]
        return [_socket_target(p) for p in sorted(paths) if _is_socket(p)]
    if glob.has_magic(spec):
        return [_socket_target(p) for p in sorted(glob.glob(spec)) if _is_socket(p)]
    return [_socket_target(spec)]


async def display_name(client: QMPClient, target: Target) -> str:
    """The name to show a connected VM under: explicit, else its ``query-name``, else
    the target's (path-derived) name.  A VM without a name, or an error, keeps the latter."""
    if target.explicit:
        return target.name
    try:
        reply = await client.execute("query-name", timeout=5)
    except (OSError, TimeoutError, QMPEventsError):
        return target.name
    name = reply.get("name") if isinstance(reply, dict) else None
    return name if isinstance(name, str) and name else target.name
