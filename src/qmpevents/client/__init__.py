"""The QMP client: typed, race-free, bounded event consumption.

* :func:`connect` / :class:`QMPClient` -- asyncio;
* :func:`connect_sync` / :class:`SyncQMPClient` -- the blocking facade;
* :class:`Subscription` -- a bounded queue with an overflow policy;
* :class:`ConnectionResumed` (name :data:`RECONNECTED`) -- the reconnect marker.
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
from qmpevents.client.sync import SyncQMPClient, SyncSubscription, connect_sync

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
    "TcpAddress",
    "UnixAddress",
    "connect",
    "connect_sync",
    "parse_address",
]
