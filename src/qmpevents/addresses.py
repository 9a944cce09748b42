"""QMP addresses as users type them: ``unix:PATH``, ``tcp:HOST:PORT``, a plain path.

The same spellings as QEMU's ``-qmp`` option, for the server's listeners, the
client and every CLI command, so one string works everywhere.  Parsing is
separate from binding or connecting so that a bad address is a one-line
usage error before anything is opened.  The loopback rule lives here too: a
QMP monitor can stop, reset or kill the machine and has no authentication,
so listening beyond this host must be asked for.
"""

from __future__ import annotations

import ipaddress
import os
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
    """A TCP host and port; port 0 makes a listener pick a free one."""

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
AddressLike = str | os.PathLike[str] | tuple[str, int] | UnixAddress | TcpAddress


def parse_address(address: AddressLike) -> Address:
    """Parse *address*; :class:`AddressError` names the accepted forms otherwise."""
    if isinstance(address, UnixAddress | TcpAddress):
        return address
    if isinstance(address, tuple):
        host, port = address
        return TcpAddress(host, int(port))
    text = os.fspath(address)
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path:
            raise AddressError(f"{text!r}: empty socket path; use unix:PATH")
        return UnixAddress(path)
    if text.startswith("tcp:"):
        return _parse_tcp(text)
    scheme, sep, _ = text.partition(":")
    if not text or (sep and scheme.isalpha()):
        raise AddressError(f"{text!r}: expected unix:PATH or tcp:HOST:PORT (or a socket path)")
    return UnixAddress(text)


def _parse_tcp(text: str) -> TcpAddress:
    rest = text[len("tcp:"):]
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
    else:
        host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise AddressError(f"{text!r}: expected tcp:HOST:PORT (tcp:[IPV6]:PORT) "
                           "with a port 0-65535")
    return TcpAddress(host, int(port))


def check_allowed(address: Address, *, allow_remote: bool,
                  why: str = "QMP has no authentication") -> None:
    """A listener's policy: an IP literal or localhost, loopback unless *allow_remote*.

    *why* says in the error what a remote peer could do (QMP's by default).
    """
    if not isinstance(address, TcpAddress):
        return
    if address.host != "localhost":
        try:
            ipaddress.ip_address(address.host)
        except ValueError:
            raise AddressError(
                f"{address}: a listener's HOST must be an IP address or localhost") from None
    if not address.is_loopback and not allow_remote:
        raise AddressError(
            f"{address}: refusing to listen on a non-loopback address "
            f"({why}); pass --allow-remote to do it anyway")
