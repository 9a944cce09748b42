"""qmpevents: QEMU Monitor Protocol events, both ends.

* :mod:`qmpevents.catalog` -- typed models of every event, two wire profiles;
* :mod:`qmpevents.codec` -- bytes <-> messages exactly as QEMU does it;
* :mod:`qmpevents.protocol` -- sans-IO server and client state machines;
* :mod:`qmpevents.client` -- the asyncio and blocking QMP clients.

The client names below are imported on first use, so that ``import
qmpevents.catalog`` (or ``.codec``, ``.protocol``) loads no asyncio, no ssl and
no client: the sans-IO core stays importable on its own.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from qmpevents.catalog import (
    PROFILES,
    Event,
    Timestamp,
    UnknownEvent,
    decode_event,
    validate,
)
from qmpevents.errors import (
    CommandFailure,
    ConnectionLost,
    EventValidationError,
    ExpectationFailed,
    LocalProtocolError,
    MessageTooLarge,
    ProtocolError,
    QMPError,
    QMPEventsError,
    RemoteProtocolError,
)

if TYPE_CHECKING:
    from qmpevents.client import (
        QMPClient,
        Subscription,
        SyncQMPClient,
        connect,
        connect_sync,
    )

__version__ = "0.1.0"

_LAZY = {name: "qmpevents.client" for name in
         ("QMPClient", "Subscription", "SyncQMPClient", "connect", "connect_sync")}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qmpevents' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


__all__ = [
    "PROFILES",
    "CommandFailure",
    "ConnectionLost",
    "Event",
    "EventValidationError",
    "ExpectationFailed",
    "LocalProtocolError",
    "MessageTooLarge",
    "ProtocolError",
    "QMPClient",
    "QMPError",
    "QMPEventsError",
    "RemoteProtocolError",
    "Subscription",
    "SyncQMPClient",
    "Timestamp",
    "UnknownEvent",
    "__version__",
    "connect",
    "connect_sync",
    "decode_event",
    "validate",
]
