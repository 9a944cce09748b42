"""Listening sockets: Unix (created mode 0600) and TCP, with QEMU's one-client option.

A Unix socket is bound, chmod-ed and only then put in listening state, so
there is no moment when it accepts connections with the umask's wider mode.
A stale socket file left by a crashed server is replaced; a live one (some
process answers on it) is an error rather than being stolen, and a path that
is not a socket is never removed.  On close the socket file is removed if it
is still the one this listener created.

``single_client`` mimics a QEMU chardev socket: the kernel accepts further
connections, but they get no greeting and are not read until the monitor
before them has gone; then the next one (in connection order) is greeted and
whatever it already sent is read, exactly as QEMU 7.2 does.  A waiting client
that gave up meanwhile is greeted into a closed socket and dropped, as in QEMU.

``tls`` wraps TCP listeners (only) in TLS, as QEMU's ``tls-creds`` does for a
socket chardev; a peer that does not complete the handshake in
``tls_handshake_timeout`` seconds is dropped and never becomes a monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import ssl
import stat
from collections import deque
from collections.abc import Callable

from qmpevents.addresses import Address, TcpAddress, UnixAddress
from qmpevents.server.monitor import Monitor

MonitorFactory = Callable[["Listener"], Monitor]


class Listener:
    """One listening address and the monitors accepted on it."""

    def __init__(self, address: Address, *, single_client: bool = False,
                 socket_mode: int = 0o600, tls: ssl.SSLContext | None = None,
                 tls_handshake_timeout: float = 10.0) -> None:
        self.tls = tls if isinstance(address, TcpAddress) else None
        self._tls_timeout = tls_handshake_timeout
        self.address: Address = address  # the bound address (real port for tcp:...:0)
        self.single_client = single_client
        self._socket_mode = socket_mode
        self._server: asyncio.Server | None = None
        self._inode: tuple[int, int] | None = None
        self._active: Monitor | None = None
        self._waiting: deque[Monitor] = deque()

    async def start(self, factory: MonitorFactory) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(self.address, UnixAddress):
            sock = self._bind_unix(self.address.path)
            self._server = await loop.create_unix_server(lambda: factory(self), sock=sock)
        else:
            self._server = await loop.create_server(
                lambda: factory(self), self.address.host, self.address.port,
                reuse_address=True, ssl=self.tls,
                ssl_handshake_timeout=self._tls_timeout if self.tls is not None else None)
            bound = self._server.sockets[0].getsockname()
            self.address = dataclasses.replace(self.address, port=bound[1])

    def _bind_unix(self, path: str) -> socket.socket:
        _remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, self._socket_mode)  # before listen(): nobody can connect yet
            info = os.stat(path)
            self._inode = (info.st_dev, info.st_ino)
        except BaseException:
            sock.close()
            raise
        return sock

    # -- one client at a time ------------------------------------------------

    def admit(self, monitor: Monitor) -> bool:
        """Whether *monitor* may start now; otherwise it waits its turn."""
        if not self.single_client:
            return True
        if self._active is None:
            self._active = monitor
            return True
        self._waiting.append(monitor)
        return False

    def release(self, monitor: Monitor) -> None:
        """*monitor* has gone: in single-client mode, the next waiting one starts."""
        if not self.single_client:
            return
        if monitor is not self._active:
            with contextlib.suppress(ValueError):
                self._waiting.remove(monitor)
            return
        self._active = None
        while self._waiting:
            candidate = self._waiting.popleft()
            if not candidate.closed:
                self._active = candidate
                candidate.admit()
                return

    async def close(self) -> None:
        """Stop accepting and remove the socket file (monitors are closed by the server)."""
        if self._server is None:
            return
        self._server.close()
        self._server = None
        if isinstance(self.address, UnixAddress) and self._inode is not None:
            with contextlib.suppress(OSError):
                info = os.stat(self.address.path)
                if (info.st_dev, info.st_ino) == self._inode:
                    os.unlink(self.address.path)
            self._inode = None


def _remove_stale(path: str) -> None:
    """Remove a socket file nobody listens on; refuse a live socket or a non-socket."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"{path}: another process is listening on it")
