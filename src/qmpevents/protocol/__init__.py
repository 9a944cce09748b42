"""QMP's two roles as sans-IO state machines: bytes in, bytes out, no sockets.

Both roles follow one convention: ``receive_data(bytes)`` (``b""`` is the end
of input), ``next_event()`` until :data:`NEED_DATA`, ``send_*()`` to act, and
``data_to_send()`` for every byte owed to the peer, in order.  Their states
and transitions are the tables of :mod:`qmpevents.protocol.states`.
"""

from qmpevents.errors import CommandFailure
from qmpevents.protocol.client import (
    ClientConnection,
    ClientEvent,
    ProtocolViolation,
    Reply,
    Resynced,
    only_events,
)
from qmpevents.protocol.messages import EVENT_CLASSES, ErrorReply, Greeting, Return, Unrecognized
from qmpevents.protocol.server import (
    INPUT_SLICE,
    QUEUE_DEPTH,
    Command,
    ServerConnection,
    ServerEvent,
)
from qmpevents.protocol.states import (
    NEED_DATA,
    NO_ID,
    ClientState,
    ConnectionClosed,
    Sentinel,
    ServerState,
)

__all__ = [
    "EVENT_CLASSES",
    "INPUT_SLICE",
    "NEED_DATA",
    "NO_ID",
    "QUEUE_DEPTH",
    "ClientConnection",
    "ClientEvent",
    "ClientState",
    "Command",
    "CommandFailure",
    "ConnectionClosed",
    "ErrorReply",
    "Greeting",
    "ProtocolViolation",
    "Reply",
    "Resynced",
    "Return",
    "Sentinel",
    "ServerConnection",
    "ServerEvent",
    "ServerState",
    "Unrecognized",
    "only_events",
]
