"""The QMP client: typed, race-free, bounded event consumption.

* :func:`connect` / :class:`QMPClient` -- asyncio;
* :func:`connect_sync` / :class:`SyncQMPClient` -- the blocking facade;
* :class:`Subscription` -- a bounded queue with an overflow policy;
* :class:`ConnectionResumed` (name :data:`RECONNECTED`) -- the reconnect marker;
* :func:`watch_vms` / :class:`VMs` -- many VMs, directories and reconnects at once.
"""

from qmpevents.addresses import TcpAddress, UnixAddress, parse_address
from qmpevents.client.connection import QMPClient, connect
from qmpevents.client.expect import Expectation
from qmpevents.client.filters import EventFilter, QMPEvent
from qmpevents.client.subscriptions import (
    DEFAULT_MAXSIZE,
    RECONNECTED,
    ConnectionResumed,
    Overflow,
    Subscription,
)
from qmpevents.client.sync import SyncQMPClient, SyncSubscription, SyncWaiter, connect_sync
from qmpevents.client.targets import Target
from qmpevents.client.vms import Unreachable, VMEvent, VMs, VMState, watch_vms

__all__ = [
    "DEFAULT_MAXSIZE",
    "RECONNECTED",
    "ConnectionResumed",
    "EventFilter",
    "Expectation",
    "Overflow",
    "QMPClient",
    "QMPEvent",
    "Subscription",
    "SyncQMPClient",
    "SyncSubscription",
    "SyncWaiter",
    "Target",
    "TcpAddress",
    "UnixAddress",
    "Unreachable",
    "VMEvent",
    "VMState",
    "VMs",
    "connect",
    "connect_sync",
    "parse_address",
    "watch_vms",
]
