"""Where the VMs are: QMP addresses given on the command line.

A target is ``unix:PATH``, ``tcp:HOST:PORT``, a plain socket path, or a
directory / glob of sockets.  Directories and globs are *re-scanned*: a VM
whose socket appears later is attached, as a host-wide watcher (Proxmox's
qmeventd) must do.
"""

from __future__ import annotations

import argparse
import glob
import os
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qmpevents.addresses import AddressError, TcpAddress, parse_address
from qmpevents.tls import TLSCredsError, client_context


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
    if spec.startswith(("tcp:", "unix:")):
        try:
            address = parse_address(spec)
        except AddressError as exc:
            raise TargetError(str(exc)) from None
        if isinstance(address, TcpAddress):
            return [Target(spec, f"{address.host}:{address.port}")]
        return [Target(spec, _vm_name(address.path))]
    if os.path.isdir(spec):
        paths = sorted(os.path.join(spec, entry) for entry in os.listdir(spec))
        return [Target(f"unix:{p}", _vm_name(p)) for p in paths if _is_socket(p)]
    if glob.has_magic(spec):
        return [Target(f"unix:{p}", _vm_name(p)) for p in sorted(glob.glob(spec))
                if _is_socket(p)]
    return [Target(f"unix:{spec}", _vm_name(spec))]


def describe_error(exc: BaseException) -> str:
    """Why a connection failed, in a few words (``No such file or directory``)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tls-creds DIR`` / ``--tls-hostname NAME`` for ``tcp:`` targets."""
    parser.add_argument("--tls-creds", metavar="DIR",
                        help="talk TLS to tcp: targets with QEMU's tls-creds-x509 files in DIR "
                             "(ca-cert.pem; client-cert.pem/client-key.pem if the server "
                             "verifies peers)")
    parser.add_argument("--tls-hostname", metavar="NAME",
                        help="the name the server certificate must carry (default: the host)")


def client_options(args: argparse.Namespace) -> ClientOptions:
    """How to reach targets: TLS settings for ``tcp:`` targets (a usage error if broken)."""
    if args.tls_creds is None:
        if args.tls_hostname is not None:
            raise TargetError("--tls-hostname needs --tls-creds")
        return ClientOptions()
    try:
        context = client_context(args.tls_creds)
    except (TLSCredsError, ssl.SSLError) as exc:
        raise TargetError(str(exc)) from None
    return ClientOptions(context, args.tls_hostname)


@dataclass(frozen=True)
class ClientOptions:
    """TLS settings; applied to ``tcp:`` targets only (unix sockets are never TLS)."""

    ssl: ssl.SSLContext | None = None
    server_hostname: str | None = None

    def for_address(self, address: str) -> dict[str, Any]:
        if self.ssl is None or not address.startswith("tcp:"):
            return {}
        return {"ssl": self.ssl, "server_hostname": self.server_hostname}
