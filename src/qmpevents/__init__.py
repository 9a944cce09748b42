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
    BlockIoError,
    Event,
    Powerdown,
    Reset,
    Resume,
    RtcChange,
    Shutdown,
    Stop,
    Timestamp,
    UnknownEvent,
    VncConnected,
    VncDisconnected,
    VncInitialized,
    decode_event,
    validate,
)
from qmpevents.errors import (
    AddressError,
    CommandFailure,
    ConnectError,
    ConnectionLost,
    EventValidationError,
    ExecuteError,
    ExpectationFailed,
    FilterError,
    InvalidArguments,
    LocalProtocolError,
    MessageTooLarge,
    MonitorBusy,
    ProtocolError,
    QMPError,
    QMPEventsError,
    RemoteProtocolError,
    SendQueueFull,
    SubscriberStalled,
    TLSCredsError,
)

if TYPE_CHECKING:
    from qmpevents.client import (
        ConnectionResumed,
        QMPClient,
        Subscription,
        SyncQMPClient,
        Unreachable,
        VMs,
        VMState,
        connect,
        connect_sync,
        watch_vms,
    )
    from qmpevents.clock import ManualClock

__version__ = "0.1.0"

_LAZY = {name: "qmpevents.client" for name in
         ("ConnectionResumed", "QMPClient", "Subscription", "SyncQMPClient", "Unreachable",
          "VMState", "VMs", "connect", "connect_sync", "watch_vms")}
_LAZY["ManualClock"] = "qmpevents.clock"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qmpevents' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


__all__ = [
    "PROFILES",
    "AddressError",
    "BlockIoError",
    "CommandFailure",
    "ConnectError",
    "ConnectionLost",
    "ConnectionResumed",
    "Event",
    "EventValidationError",
    "ExecuteError",
    "ExpectationFailed",
    "FilterError",
    "InvalidArguments",
    "LocalProtocolError",
    "ManualClock",
    "MessageTooLarge",
    "MonitorBusy",
    "Powerdown",
    "ProtocolError",
    "QMPClient",
    "QMPError",
    "QMPEventsError",
    "RemoteProtocolError",
    "Reset",
    "Resume",
    "RtcChange",
    "SendQueueFull",
    "Shutdown",
    "Stop",
    "SubscriberStalled",
    "Subscription",
    "SyncQMPClient",
    "TLSCredsError",
    "Timestamp",
    "UnknownEvent",
    "Unreachable",
    "VMState",
    "VMs",
    "VncConnected",
    "VncDisconnected",
    "VncInitialized",
    "__version__",
    "connect",
    "connect_sync",
    "decode_event",
    "validate",
    "watch_vms",
]
