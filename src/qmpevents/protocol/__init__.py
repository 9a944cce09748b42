"""QMP's two roles as sans-IO state machines: bytes in, bytes out, no sockets."""

from qmpevents.protocol.client import ClientConnection, ClientState, ProtocolViolation, Reply
from qmpevents.protocol.messages import ErrorReply, Greeting, Return, Unrecognized
from qmpevents.protocol.server import (
    NEED_DATA,
    Command,
    CommandFailure,
    ServerConnection,
    ServerState,
)

__all__ = [
    "NEED_DATA",
    "ClientConnection",
    "ClientState",
    "Command",
    "CommandFailure",
    "ErrorReply",
    "Greeting",
    "ProtocolViolation",
    "Reply",
    "Return",
    "ServerConnection",
    "ServerState",
    "Unrecognized",
]
