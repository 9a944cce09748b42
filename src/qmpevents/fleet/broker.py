"""Reaching NATS: connection options as NATS users expect, and the stream.

Credentials: a ``.creds`` file (JWT + nkey seed, ``--creds``), an nkey seed
file (``--nkey``), a user/password file (``--user-password-file``: the user
on the first line, the password on the second), TLS with QEMU's
``tls-creds-x509`` layout (``ca-cert.pem``; ``client-cert.pem`` and
``client-key.pem`` when the server verifies clients).  Several servers (a
cluster) may be given: the client fails over between them.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qmpevents.errors import QMPEventsError
from qmpevents.fleet.deps import require
from qmpevents.fleet.headers import install as install_header_parser
from qmpevents.fleet.subjects import STREAM_SUBJECTS

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.js import JetStreamContext

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE = 7 * 24 * 3600.0
DEFAULT_DUPLICATE_WINDOW = 120.0
CONNECT_DEADLINE = 5.0


class BrokerError(QMPEventsError):
    """The broker refused or could not be reached."""


class CredentialsError(ValueError):
    """A credentials file that cannot be used (a usage error)."""


@dataclass(frozen=True)
class BrokerOptions:
    """Where the broker is and how to authenticate."""

    servers: Sequence[str]
    creds: str | None = None
    nkey: str | None = None
    user: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None
    tls_hostname: str | None = None
    name: str = "qmpevents"

    def connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"servers": list(self.servers), "name": self.name}
        if self.creds is not None:
            kwargs["user_credentials"] = self.creds
        if self.nkey is not None:
            kwargs["nkeys_seed"] = self.nkey
        if self.user is not None:
            kwargs["user"] = self.user
            kwargs["password"] = self.password
        if self.tls is not None:
            kwargs["tls"] = self.tls
            if self.tls_hostname is not None:
                kwargs["tls_hostname"] = self.tls_hostname
        return kwargs


def read_user_password(path: str) -> tuple[str, str]:
    """A user/password file: the user on the first line, the password on the second."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise CredentialsError(f"{path}: {exc.strerror or exc}") from None
    if len(lines) < 2 or not lines[0]:
        raise CredentialsError(f"{path}: expected the user on line 1 and the password on line 2")
    return lines[0], lines[1]


async def connect(options: BrokerOptions, *, deadline: float | None = CONNECT_DEADLINE,
                  on_disconnect: Callable[[], None] | None = None,
                  on_reconnect: Callable[[], None] | None = None,
                  on_error: Callable[[str], None] | None = None) -> NATS:
    """Connect to one of the servers; the client then reconnects by itself, forever.

    A first connection not made within *deadline* seconds raises
    :class:`BrokerError` with the last reason; with ``deadline=None`` (the
    agent, which spools meanwhile) it is retried until it succeeds.
    *on_error* is told each connection failure's reason once in a row.
    """
    nats = require("nats")
    last_error = ["timed out"]

    async def disconnected() -> None:
        if on_disconnect is not None:
            on_disconnect()

    async def reconnected() -> None:
        if on_reconnect is not None:
            on_reconnect()

    async def error(exc: Exception) -> None:
        reason = describe(exc)
        log.debug("nats: %s", reason)
        if reason != last_error[0] and on_error is not None:
            on_error(reason)
        # The broker's refusal explains the resets that follow it: the error said at
        # the deadline stays the refusal (a reset can beat its -ERR line to us).
        if not _is_refusal(last_error[0]) or _is_refusal(reason):
            last_error[0] = reason

    connecting = nats.connect(
        **options.connect_kwargs(), allow_reconnect=True, max_reconnect_attempts=-1,
        reconnect_time_wait=0.5, connect_timeout=2, disconnected_cb=disconnected,
        reconnected_cb=reconnected, error_cb=error)
    try:
        async with asyncio.timeout(deadline):
            client: NATS = await connecting
    except TimeoutError:
        raise BrokerError(f"cannot connect to {', '.join(options.servers)}: "
                          f"{last_error[0]}") from None
    install_header_parser(client)
    return client


def _is_refusal(reason: str) -> bool:
    """Whether *reason* is the broker refusing this client's credentials."""
    return "authorization" in reason.lower() or "authentication" in reason.lower()


def describe(exc: BaseException) -> str:
    """A broker error in a few words."""
    text = str(exc).removeprefix("nats: ")
    return text or type(exc).__name__


@dataclass(frozen=True)
class StreamSettings:
    """The stream the agent creates when it is missing."""

    name: str
    max_age: float = DEFAULT_MAX_AGE
    replicas: int = 1
    duplicate_window: float = DEFAULT_DUPLICATE_WINDOW


async def ensure_stream(js: JetStreamContext, settings: StreamSettings) -> bool:
    """Create the stream (subjects ``qmp.>``, file storage) unless it exists; True if created."""
    nats_js = require("nats.js")
    api = nats_js.api
    try:
        await js.stream_info(settings.name)
        return False
    except nats_js.errors.NotFoundError:
        pass
    config = api.StreamConfig(
        name=settings.name, subjects=[STREAM_SUBJECTS], storage=api.StorageType.FILE,
        max_age=settings.max_age, num_replicas=settings.replicas,
        duplicate_window=settings.duplicate_window)
    try:
        await js.add_stream(config)
    except nats_js.errors.BadRequestError:
        await js.stream_info(settings.name)  # created meanwhile by another agent
        return False
    log.info("created stream %s (%s, max age %g s, %d replicas)", settings.name,
             STREAM_SUBJECTS, settings.max_age, settings.replicas)
    return True
