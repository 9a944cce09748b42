"""Listening sockets: Unix (created mode 0600) and TCP, with QEMU's one-client option.

A Unix socket is bound, chmod-ed and only then put in listening state, so
there is no moment when it accepts connections with the umask's wider mode.
A stale socket file left by a crashed server is replaced; a live one (some
process answers on it) is an error rather than being stolen, and a path that
is not a socket is never removed.  On close the socket file is removed if it
is still the one this listener created.

Connections are accepted by the listener's own loop (not ``asyncio.Server``),
so that ``single_client`` can work as a QEMU chardev socket does: while a
monitor is connected, nothing more is accepted.  Further clients wait in the
kernel's listen backlog (bounded by ``BACKLOG``; beyond it the kernel makes
them wait in ``connect()`` or refuses them), costing this process no file
descriptor and no memory; they get no greeting and are not read.  When the
monitor leaves, the next one (in connection order) is accepted, greeted, and
whatever it already sent is read, exactly as QEMU 7.2 does.  A waiting client
that gave up meanwhile is greeted into a closed socket and dropped, as in QEMU.
Closing the listener resets the connections still in the backlog.

``tls`` wraps TCP listeners (only) in TLS, as QEMU's ``tls-creds`` does for a
socket chardev; a peer that does not complete the handshake in
``tls_handshake_timeout`` seconds is dropped and never becomes a monitor (in
one-client mode it holds the slot until then, as a QEMU client would).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import socket
import ssl
import stat
from collections.abc import Callable, Sequence

from qmpevents.addresses import Address, TcpAddress, UnixAddress
from qmpevents.server.monitor import Monitor

_log = logging.getLogger(__name__)

MonitorFactory = Callable[["Listener"], Monitor]

BACKLOG = 100
"""listen() backlog: connections the kernel holds before they are accepted (asyncio's)."""

ACCEPT_RETRY_DELAY = 1.0
"""Seconds without accepting after the process ran out of descriptors (as asyncio)."""

_NO_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


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
        self._inode: tuple[int, int] | None = None
        self._sockets: list[socket.socket] = []
        self._accepting: asyncio.Task[None] | None = None
        self._connecting: set[asyncio.Task[None]] = set()  # accepted, transport being made
        self._active: Monitor | None = None  # one-client mode: who holds the socket
        self._slot_freed = asyncio.Event()

    async def start(self, factory: MonitorFactory) -> None:
        if isinstance(self.address, UnixAddress):
            sockets = [self._bind_unix(self.address.path)]
        else:
            sockets = await self._bind_tcp(self.address)
            self.address = dataclasses.replace(self.address,
                                               port=sockets[0].getsockname()[1])
        self._serve(sockets, factory)

    def _serve(self, sockets: Sequence[socket.socket], factory: MonitorFactory) -> None:
        """Listen on *sockets* (bound, or already listening) and start accepting."""
        for sock in sockets:
            sock.setblocking(False)
            sock.listen(BACKLOG)
        self._sockets = list(sockets)
        self._accepting = asyncio.get_running_loop().create_task(
            self._accept_loop(factory), name=f"accept {self.address}")

    def _bind_unix(self, path: str) -> socket.socket:
        _remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                sock.bind(path)
            except OSError as exc:  # bind's error does not name the path
                if exc.errno is None:  # e.g. "AF_UNIX path too long": its text says why
                    named = type(exc)(f"{exc}: {path!r}")
                    named.strerror = str(exc)  # what went wrong, as with an errno
                    raise named from None
                raise type(exc)(exc.errno, exc.strerror, path) from None
            os.chmod(path, self._socket_mode)  # before listen(): nobody can connect yet
            info = os.stat(path)
            self._inode = (info.st_dev, info.st_ino)
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    async def _bind_tcp(address: TcpAddress) -> list[socket.socket]:
        """One socket per address the host resolves to (as QEMU), all on the same port."""
        infos = await asyncio.get_running_loop().getaddrinfo(
            address.host or None, address.port, type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE)
        sockets: list[socket.socket] = []
        port = address.port
        try:
            for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                where = (sockaddr[0], port, *sockaddr[2:])
                try:
                    sock.bind(where)
                except OSError as exc:
                    raise OSError(exc.errno, f"error while attempting to bind on address "
                                  f"{where!r}: {(exc.strerror or '').lower()}") from None
                port = sock.getsockname()[1]  # tcp:...:0 -- the others take the same port
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return sockets

    # -- accepting -------------------------------------------------------------

    async def _accept_loop(self, factory: MonitorFactory) -> None:
        while True:
            while self.single_client and self._active is not None:
                self._slot_freed.clear()
                await self._slot_freed.wait()  # QEMU accepts nothing while a client is on
            try:
                conn = await _accept_one(self._sockets)
            except OSError as exc:
                if exc.errno not in _NO_RESOURCES:
                    _log.error("QMP %s: accept failed (%s); no longer accepting",
                               self.address, exc)
                    return
                _log.warning("QMP %s: cannot accept (%s); retrying in %.0fs", self.address,
                             exc.strerror, ACCEPT_RETRY_DELAY)
                await asyncio.sleep(ACCEPT_RETRY_DELAY)  # the socket stays readable meanwhile
                continue
            monitor = factory(self)
            if self.single_client:
                self._active = monitor
            task = asyncio.get_running_loop().create_task(self._connect(conn, monitor))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket, monitor: Monitor) -> None:
        """Give *conn* its transport (after the TLS handshake, if any) and *monitor*."""
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: monitor, conn, ssl=self.tls,
                ssl_handshake_timeout=self._tls_timeout if self.tls is not None else None)
        except Exception as exc:  # TLS handshake failed or timed out (OSError), peer reset
            conn.close()
            _log.info("QMP connection on %s dropped before its session: %s",
                      self.address, exc)
            self.release(monitor)
        except asyncio.CancelledError:
            conn.close()  # the listener is closing
            self.release(monitor)
            raise

    def release(self, monitor: Monitor) -> None:
        """*monitor* has gone: in single-client mode, the next connection is accepted."""
        if monitor is self._active:
            self._active = None
            self._slot_freed.set()

    async def close(self) -> None:
        """Stop accepting, reset the connections still in the backlog, remove the socket file.

        Monitors are closed by the server.
        """
        tasks = [task for task in (self._accepting, *self._connecting) if task is not None]
        self._accepting = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        if isinstance(self.address, UnixAddress) and self._inode is not None:
            with contextlib.suppress(OSError):
                info = os.stat(self.address.path)
                if (info.st_dev, info.st_ino) == self._inode:
                    os.unlink(self.address.path)
            self._inode = None


async def _accept_one(sockets: Sequence[socket.socket]) -> socket.socket:
    """The next connection on any of *sockets*: exactly one is accepted, the rest stay queued.

    ``loop.sock_accept`` per socket could accept on two sockets in the same
    iteration; one reader callback per socket that stops after the first
    accept cannot (a QEMU listener on several addresses behaves the same).
    """
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[socket.socket] = loop.create_future()

    def ready(sock: socket.socket) -> None:
        if accepted.done():
            return
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # someone else took it, or the peer reset it in the backlog
        except OSError as exc:
            accepted.set_exception(exc)
        else:
            conn.setblocking(False)
            accepted.set_result(conn)

    for sock in sockets:
        loop.add_reader(sock.fileno(), ready, sock)
    try:
        return await accepted
    except BaseException:
        if accepted.done() and not accepted.cancelled() and accepted.exception() is None:
            accepted.result().close()  # cancelled with a connection in hand
        raise
    finally:
        for sock in sockets:
            loop.remove_reader(sock.fileno())


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
