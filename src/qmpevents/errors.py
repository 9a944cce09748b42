"""Exception classes.

Every error says whose fault it is (as h11 does): a *local* error is a misuse
of this library, a *remote* error is something the peer sent.  Errors that
travel on the wire carry QMP's error class and description verbatim.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class QMPEventsError(Exception):
    """Base class of every exception raised by qmpevents."""


class AddressError(QMPEventsError, ValueError):
    """An address that cannot be parsed or that the policy forbids."""


class TLSCredsError(QMPEventsError, ValueError):
    """A credentials directory that lacks a file the endpoint needs."""


class QMPError(QMPEventsError):
    """A command got an error reply: carries QMP's ``class`` and ``desc``."""

    def __init__(self, error_class: str, desc: str, *, command: str | None = None,
                 id: Any = None) -> None:
        where = f"{command}: " if command else ""
        super().__init__(f"{where}{error_class}: {desc}")
        self.error_class = error_class
        self.desc = desc
        self.command = command
        self.id = id


ExecuteError = QMPError
"""qemu.qmp's name for an error reply: the same class, for users coming from it."""


class CommandFailure(QMPEventsError):
    """Raised by a server-side command handler: the error reply's QMP class and description."""

    def __init__(self, error_class: str, desc: str) -> None:
        # The text is made when shown, not here: *desc* can name a peer's 20 MiB key.
        super().__init__(error_class, desc)
        self.error_class = error_class
        self.desc = desc

    def __str__(self) -> str:
        return f"{self.error_class}: {self.desc}"


class ProtocolError(QMPEventsError):
    """The conversation broke QMP's rules."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something QMP does not allow (bad greeting, unmatched reply...)."""


class LocalProtocolError(ProtocolError):
    """This side tried something QMP does not allow in the current state."""


class InvalidArguments(LocalProtocolError, TypeError):
    """``execute()`` arguments that are not a JSON object (a mapping with string keys)."""


class FilterError(LocalProtocolError, ValueError):
    """A subscription filter that could never match: an unknown event or ``match`` key."""


class SendQueueFull(LocalProtocolError):
    """The server stopped reading and the unsent output reached its bound.

    Raised by ``execute`` instead of queueing without limit; the connection
    stays up, so a command may succeed once the server reads again.
    """


class MessageTooLarge(RemoteProtocolError):
    """The peer sent a message over the configured size limit.

    Raised rather than silently dropping the connection: a reader that dies
    quietly (as qemu.qmp's does on an 11 MiB line) is worse than a loud one.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of at least {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class ConnectionLost(QMPEventsError):
    """The connection ended: pending commands and event iterators end with this."""


class ConnectError(QMPEventsError, ConnectionError):
    """An address could not be reached: says which, and why in the OS's words.

    A :class:`ConnectionError`, so an :class:`OSError` (``errno`` and
    ``strerror`` are the OS's, the original error is the ``__cause__``): code
    written for the bare OS error still catches it; ``str()`` names the
    address, which the OS's error does not.
    Also raised when a TLS server ends the session before its greeting (it
    refused this client's certificate, or its lack of one).
    """

    def __init__(self, address: str, reason: str, errno: int | None = None) -> None:
        super().__init__(errno, reason)
        self.address = address
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.address}: {self.reason}"


class MonitorBusy(ConnectError):
    """The socket accepted the connection but no greeting came.

    QEMU serves one client per QMP socket: a second client waits in the
    backlog, silently, until the first leaves.  Add another ``-qmp`` socket.
    A :class:`ConnectError`: ``except ConnectError`` covers a busy monitor too.
    """


class SubscriberStalled(QMPEventsError):
    """A subscription stayed full too long and was cut off so that others keep going.

    Raised by its ``get()`` and iteration once the events it had queued are
    read; the connection and every other subscriber carry on.
    """


class EventValidationError(QMPEventsError):
    """An event does not match the catalog of the chosen profile (strict mode)."""

    def __init__(self, event: str, problem: str) -> None:
        super().__init__(f"{event}: {problem}")
        self.event = event
        self.problem = problem


class ExpectationFailed(QMPEventsError):
    """An expected sequence of events did not arrive in time."""

    def __init__(self, expected: list[str], received: list[str],
                 match: Mapping[str, Any] | None = None) -> None:
        got = ", ".join(received) if received else "no events"
        where = (" with " + ", ".join(f"{key}={value!r}" for key, value in match.items())
                 if match else "")
        super().__init__(f"expected {' -> '.join(expected)}{where}; received {got}")
        self.expected = expected
        self.received = received
        #: The ``match=`` every expected event had to pass (None: none).
        self.match = dict(match) if match else None
