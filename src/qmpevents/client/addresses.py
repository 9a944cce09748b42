"""Where a QMP server listens, parsed from the strings users type.

``unix:PATH``, ``tcp:HOST:PORT`` (``tcp:[::1]:4444`` for IPv6) and a plain
path are accepted: the same spellings QEMU's ``-qmp`` option and the CLI use,
so one string works everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UnixAddress:
    """A unix socket path."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True, slots=True)
class TcpAddress:
    """A TCP host and port."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


Address = UnixAddress | TcpAddress
AddressLike = str | os.PathLike[str] | tuple[str, int] | UnixAddress | TcpAddress


def parse_address(address: AddressLike) -> Address:
    """Parse *address*; raise ValueError with the accepted forms if it is none of them."""
    if isinstance(address, UnixAddress | TcpAddress):
        return address
    if isinstance(address, tuple):
        host, port = address
        return TcpAddress(host, int(port))
    text = os.fspath(address)
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path:
            raise ValueError("unix: needs a socket path, e.g. unix:/run/vm.sock")
        return UnixAddress(path)
    if text.startswith("tcp:"):
        return _parse_tcp(text[len("tcp:"):])
    if not text:
        raise ValueError("empty QMP address; use unix:PATH, tcp:HOST:PORT or a socket path")
    return UnixAddress(text)


def _parse_tcp(rest: str) -> TcpAddress:
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
    else:
        host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad TCP address {'tcp:' + rest!r}; use tcp:HOST:PORT or "
                         "tcp:[IPV6]:PORT")
    return TcpAddress(host, int(port))
