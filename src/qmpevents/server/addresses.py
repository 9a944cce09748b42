"""Listen addresses: ``unix:PATH`` and ``tcp:HOST:PORT``, as QEMU's ``-qmp`` spells them.

Parsing is separate from binding so that the command line can reject a bad
address with a one-line usage error before anything is opened.  The loopback
rule lives here too: a QMP monitor can stop, reset or kill the machine and
has no authentication, so listening beyond this host must be asked for.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


class AddressError(ValueError):
    """An address that cannot be parsed or that the policy forbids."""


@dataclass(frozen=True, slots=True)
class UnixAddress:
    """A Unix domain socket path."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True, slots=True)
class TcpAddress:
    """A TCP host (IP literal or ``localhost``) and port; port 0 picks a free one."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


Address = UnixAddress | TcpAddress


def parse_address(text: str) -> Address:
    """``unix:PATH`` or ``tcp:HOST:PORT`` (IPv6 hosts in brackets) to an :data:`Address`."""
    kind, sep, rest = text.partition(":")
    if not sep or kind not in ("unix", "tcp"):
        raise AddressError(f"{text!r}: expected unix:PATH or tcp:HOST:PORT")
    if kind == "unix":
        if not rest:
            raise AddressError(f"{text!r}: empty socket path")
        return UnixAddress(rest)
    host, sep, port_text = rest.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise AddressError(f"{text!r}: expected tcp:HOST:PORT with a port 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise AddressError(f"{text!r}: HOST must be an IP address or localhost") from None
    return TcpAddress(host, int(port_text))


def check_allowed(address: Address, *, allow_remote: bool) -> None:
    """Refuse a non-loopback TCP address unless *allow_remote* (QMP has no authentication)."""
    if isinstance(address, TcpAddress) and not address.is_loopback and not allow_remote:
        raise AddressError(
            f"{address}: refusing to listen on a non-loopback address "
            "(QMP has no authentication); pass --allow-remote to do it anyway")
