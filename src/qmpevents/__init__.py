"""qmpevents: QEMU Monitor Protocol events, both ends.

* :mod:`qmpevents.catalog` -- typed models of every event, two wire profiles;
* :mod:`qmpevents.codec` -- bytes <-> messages exactly as QEMU does it;
* :mod:`qmpevents.protocol` -- sans-IO server and client state machines.
"""

from qmpevents.catalog import (
    PROFILES,
    Event,
    Timestamp,
    UnknownEvent,
    decode_event,
    validate,
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
    "QMPError",
    "QMPEventsError",
    "RemoteProtocolError",
    "Timestamp",
    "UnknownEvent",
    "__version__",
    "decode_event",
    "validate",
]
