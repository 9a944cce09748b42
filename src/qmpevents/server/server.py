"""The QMP server: listeners, monitors, the broadcast, and an orderly close.

It knows nothing about virtual machines: it serves a command table
(:class:`~qmpevents.server.monitor.Executor`) and publishes whatever events
it is given.  The simulator (:mod:`qmpevents.sim`) is one user of it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qmpevents.addresses import Address, check_allowed
from qmpevents.codec import DEFAULT_MAX_HELD_INPUT, DEFAULT_MAX_MESSAGE_SIZE, HeldInputBudget
from qmpevents.protocol import QUEUE_DEPTH
from qmpevents.server.broadcaster import Broadcaster
from qmpevents.server.listeners import Listener
from qmpevents.server.monitor import Executor, FlushQueue, Monitor

_log = logging.getLogger(__name__)

DEFAULT_MAX_OUTBOUND = 1 << 20
"""Default bound on one monitor's unsent output (bytes); see :mod:`.monitor`."""


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Policy knobs; the defaults are QEMU's behaviour made safe.

    * *single_client* -- one monitor per listener at a time, as QEMU's chardev;
    * *socket_mode* -- mode of created Unix sockets (0600: the owner only);
    * *allow_remote* -- permit TCP listeners on non-loopback addresses;
    * *max_outbound* -- unsent bytes after which a monitor that does not read
      is disconnected (see :mod:`.monitor`);
    * *queue_depth* -- parsed requests queued per monitor before reading stops;
    * *max_message_size* -- QEMU's JSON token size limit (64 MiB), lower it to
      bound what one message may cost;
    * *max_held_input* -- bytes of unfinished messages all monitors may hold
      together (256 MiB); the message that would go beyond is refused with
      QEMU's size-limit error (see SECURITY.md);
    * *tls* -- a server :class:`ssl.SSLContext` for every TCP listener (Unix
      sockets stay plain: file permissions guard them), as QEMU's
      ``tls-creds-x509``; :func:`qmpevents.tls.server_context` builds
      one from QEMU's credentials directory;
    * *tls_handshake_timeout* -- seconds a TCP peer has to finish the TLS
      handshake before it is dropped.
    """

    single_client: bool = False
    socket_mode: int = 0o600
    allow_remote: bool = False
    max_outbound: int = DEFAULT_MAX_OUTBOUND
    queue_depth: int = QUEUE_DEPTH
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_held_input: int = DEFAULT_MAX_HELD_INPUT
    tls: ssl.SSLContext | None = None
    tls_handshake_timeout: float = 10.0


class QMPServer:
    """Serves *executor* on every address; :meth:`publish` sends an event to all."""

    def __init__(self, addresses: Sequence[Address], executor: Executor, *,
                 version: Mapping[str, Any], options: ServerOptions = ServerOptions()) -> None:
        for address in addresses:
            check_allowed(address, allow_remote=options.allow_remote)
        self._executor = executor
        self._version = dict(version)
        self._options = options
        self.listeners = [Listener(address, single_client=options.single_client,
                                   socket_mode=options.socket_mode, tls=options.tls,
                                   tls_handshake_timeout=options.tls_handshake_timeout)
                          for address in addresses]
        self.broadcaster = Broadcaster()
        self.held_input = HeldInputBudget(options.max_held_input)
        self._monitors: set[Monitor] = set()
        self._flusher: FlushQueue | None = None
        self._all_closed = asyncio.Event()
        self._closing = False

    @property
    def addresses(self) -> list[Address]:
        """The bound addresses (a ``tcp:...:0`` shows its real port once started)."""
        return [listener.address for listener in self.listeners]

    @property
    def monitors(self) -> int:
        return len(self._monitors)

    async def start(self) -> None:
        """Bind every listener; on failure the ones already bound are closed."""
        self._flusher = FlushQueue(asyncio.get_running_loop())
        try:
            for listener in self.listeners:
                await listener.start(self._make_monitor)
                _log.info("QMP listening on %s%s", listener.address,
                          " (TLS)" if listener.tls is not None else "")
        except BaseException:
            await self.close()
            raise

    def publish(self, message: Mapping[str, Any]) -> bytes:
        """Send one event (plain JSON values) to every negotiated monitor, encoded once."""
        return self.broadcaster.publish(message)

    def _make_monitor(self, listener: Listener) -> Monitor:
        assert self._flusher is not None

        def on_open(monitor: Monitor) -> bool:
            if self._closing:
                return False
            self._monitors.add(monitor)
            self._all_closed.clear()
            return True

        def on_close(monitor: Monitor) -> None:
            self._monitors.discard(monitor)
            listener.release(monitor)
            if not self._monitors:
                self._all_closed.set()

        monitor = Monitor(executor=self._executor, broadcaster=self.broadcaster,
                          flusher=self._flusher, version=self._version,
                          max_outbound=self._options.max_outbound,
                          on_open=on_open, on_close=on_close,
                          queue_depth=self._options.queue_depth,
                          max_message_size=self._options.max_message_size,
                          pretty=listener.address.pretty,
                          held_budget=self.held_input)
        return monitor

    async def close(self, timeout: float = 5.0) -> None:
        """Stop listening, flush and close every monitor, remove the socket files."""
        self._closing = True
        for listener in self.listeners:
            await listener.close()
        for monitor in list(self._monitors):
            monitor.close()
        if self._monitors:
            try:
                async with asyncio.timeout(timeout):
                    await self._all_closed.wait()
            except TimeoutError:
                _log.warning("%d QMP monitors did not close in %.1fs (clients not reading): "
                             "aborting them", len(self._monitors), timeout)
                for monitor in list(self._monitors):
                    monitor.abort()
