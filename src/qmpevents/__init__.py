"""qmpevents: QEMU Monitor Protocol events, both ends.

* :mod:`qmpevents.catalog` -- typed models of every event, two wire profiles;
* :mod:`qmpevents.codec` -- bytes <-> messages exactly as QEMU does it;
* :mod:`qmpevents.protocol` -- sans-IO server and client state machines;
* :mod:`qmpevents.client` -- the asyncio and blocking QMP clients.
"""

from qmpevents.catalog import (
    PROFILES,
    Event,
    Timestamp,
    UnknownEvent,
    decode_event,
    validate,
)
from qmpevents.client import (
    QMPClient,
    Subscription,
    SyncQMPClient,
    connect,
    connect_sync,
)
from qmpevents.errors import (
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

__version__ = "0.1.0"

__all__ = [
    "PROFILES",
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
