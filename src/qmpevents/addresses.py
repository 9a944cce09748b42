"""QMP addresses as users type them: ``unix:PATH``, ``tcp:HOST:PORT``, a plain path.

The same spellings as QEMU's ``-qmp`` option, for the server's listeners, the
client and every CLI command, so one string works everywhere.  Parsing is
separate from binding or connecting so that a bad address is a one-line
usage error before anything is opened.  The loopback rule lives here too: a
QMP monitor can stop, reset or kill the machine and has no authentication,
so listening beyond this host must be asked for.

A listener may carry options after the address, comma-separated as in QEMU's
chardev syntax: ``unix:PATH,pretty=on`` (or ``tcp:HOST:PORT,pretty=on``)
writes QEMU's pretty-printed JSON, as ``-mon chardev=...,pretty=on`` (or
``-qmp-pretty``) does.  Only known ``KEY=VALUE`` tails are options, so a
socket path that merely contains a comma keeps working.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from qmpevents.errors import AddressError as AddressError  # re-exported: its old home


@dataclass(frozen=True, slots=True)
class UnixAddress:
    """A Unix domain socket path."""

    path: str
    pretty: bool = False  # a listener writing QEMU's pretty-printed JSON

    def __str__(self) -> str:
        return f"unix:{self.path}" + _options(self.pretty)


@dataclass(frozen=True, slots=True)
class TcpAddress:
    """A TCP host and port; port 0 makes a listener pick a free one."""

    host: str
    port: int
    pretty: bool = False  # a listener writing QEMU's pretty-printed JSON

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}" + _options(self.pretty)

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
        path, pretty = _split_options(text[len("unix:"):], text)
        if not path:
            raise AddressError(f"{text!r}: empty socket path; use unix:PATH")
        return UnixAddress(path, pretty)
    if text.startswith("tcp:"):
        rest, pretty = _split_options(text[len("tcp:"):], text)
        return _parse_tcp(rest, text, pretty)
    scheme, sep, _ = text.partition(":")
    if not text or (sep and scheme.isalpha()):
        raise AddressError(f"{text!r}: expected unix:PATH or tcp:HOST:PORT (or a socket path)")
    return UnixAddress(text)


_BOOLEANS = {"on": True, "off": False}


def _split_options(rest: str, text: str) -> tuple[str, bool]:
    """Strip trailing ``,pretty=on|off`` options; returns (address part, pretty).

    Read from the right, so the last one given wins (as in QEMU's option parser).
    """
    pretty: bool | None = None
    while True:
        head, sep, option = rest.rpartition(",")
        key, eq, value = option.partition("=")
        if not sep or not eq or key != "pretty":
            return rest, bool(pretty)
        if value not in _BOOLEANS:
            raise AddressError(f"{text!r}: pretty={value!r}: expected pretty=on or pretty=off")
        if pretty is None:
            pretty = _BOOLEANS[value]
        rest = head


def _options(pretty: bool) -> str:
    return ",pretty=on" if pretty else ""


def _parse_tcp(rest: str, text: str, pretty: bool) -> TcpAddress:
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
    else:
        host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise AddressError(f"{text!r}: expected tcp:HOST:PORT (tcp:[IPV6]:PORT) "
                           "with a port 0-65535")
    return TcpAddress(host, int(port), pretty)


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
