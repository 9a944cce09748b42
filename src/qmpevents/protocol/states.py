"""QMP's life cycle for each role, as transition tables (h11's ``_state.py``).

Every change of state of :class:`~qmpevents.protocol.ServerConnection` and
:class:`~qmpevents.protocol.ClientConnection` is decided here and nowhere
else: a role *fires* an input, the table gives the next state.  An input the
current state does not list is this side's misuse of the protocol: it raises
:class:`~qmpevents.errors.LocalProtocolError` naming the state and the input,
and the machine goes to ``ERROR``, where nothing is allowed any more.  (What
the *peer* does wrong is never raised: the roles answer it on the wire, as
QEMU does, or hand it out as a ``ProtocolViolation``.)
"""

from __future__ import annotations

from enum import Enum
from typing import Final, Generic, TypeVar

from qmpevents.errors import LocalProtocolError


class Sentinel(Enum):
    """The core's marker values: one style, readable in a ``repr``."""

    NEED_DATA = "NEED_DATA"
    NO_ID = "NO_ID"

    def __repr__(self) -> str:
        return self.value


NEED_DATA: Final = Sentinel.NEED_DATA
"""``next_event()`` has nothing to hand out until more bytes arrive."""

NO_ID: Final = Sentinel.NO_ID
"""A request that carried no ``id`` member (so its reply carries none)."""


class ConnectionClosed:
    """``next_event()`` after the end of input, once everything before it was handed out."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ConnectionClosed()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConnectionClosed)

    def __hash__(self) -> int:
        return hash(ConnectionClosed)


# --- the server role --------------------------------------------------------------------

class ServerState(Enum):
    """Where a monitor is in QMP's life cycle."""

    GREETING = "greeting"          # connected, greeting not sent yet
    NEGOTIATION = "negotiation"    # only qmp_capabilities is accepted
    COMMAND = "command"            # negotiated: commands run, events flow
    CLOSED = "closed"              # input ended and every request was answered, or closed
    ERROR = "error"                # this side misused the protocol


class ServerInput(Enum):
    """What can happen to a monitor."""

    SEND_GREETING = "send the greeting"
    RECEIVE_DATA = "receive data"
    NEXT_EVENT = "take the next request"
    NEGOTIATED = "accept qmp_capabilities"
    SEND_REPLY = "send a reply"
    SEND_EVENT = "send an event"
    END_OF_INPUT = "end of input"
    CLOSE = "close"


_S = ServerState
_SI = ServerInput

SERVER_TRANSITIONS: Final[dict[ServerState, dict[ServerInput, ServerState]]] = {
    _S.GREETING: {
        _SI.SEND_GREETING: _S.NEGOTIATION,
        _SI.RECEIVE_DATA: _S.GREETING,     # an eager client: kept until greeted
        _SI.SEND_EVENT: _S.GREETING,       # dropped: not negotiated
        _SI.END_OF_INPUT: _S.CLOSED,
        _SI.CLOSE: _S.CLOSED,
    },
    _S.NEGOTIATION: {
        _SI.RECEIVE_DATA: _S.NEGOTIATION,
        _SI.NEXT_EVENT: _S.NEGOTIATION,
        _SI.NEGOTIATED: _S.COMMAND,
        _SI.SEND_EVENT: _S.NEGOTIATION,    # dropped: not negotiated
        _SI.END_OF_INPUT: _S.CLOSED,
        _SI.CLOSE: _S.CLOSED,
    },
    _S.COMMAND: {
        _SI.RECEIVE_DATA: _S.COMMAND,
        _SI.NEXT_EVENT: _S.COMMAND,
        _SI.SEND_REPLY: _S.COMMAND,
        _SI.SEND_EVENT: _S.COMMAND,
        _SI.END_OF_INPUT: _S.CLOSED,
        _SI.CLOSE: _S.CLOSED,
    },
    _S.CLOSED: {
        _SI.NEXT_EVENT: _S.CLOSED,         # hands out ConnectionClosed
        _SI.SEND_EVENT: _S.CLOSED,         # dropped: nobody to read it
        _SI.CLOSE: _S.CLOSED,
    },
    _S.ERROR: {},
}

#: States in which an event is written to the peer; in the others it is dropped.
SERVER_EVENT_STATES: Final = frozenset({_S.COMMAND})


# --- the client role --------------------------------------------------------------------

class ClientState(Enum):
    """Where the client is in QMP's life cycle."""

    AWAITING_GREETING = "awaiting-greeting"
    GREETED = "greeted"            # greeting received, qmp_capabilities not sent
    NEGOTIATING = "negotiating"    # qmp_capabilities sent, reply pending
    RESYNCING = "resyncing"        # negotiated; events held until query-status answers
    READY = "ready"                # command mode
    CLOSED = "closed"
    ERROR = "error"


class ClientInput(Enum):
    """What can happen to a client session."""

    RECEIVE_DATA = "receive data"
    GREETING = "receive the greeting"
    SEND_CAPABILITIES = "send qmp_capabilities"
    CAPABILITIES_REFUSED = "receive an error to qmp_capabilities"
    NEGOTIATED = "receive the reply to qmp_capabilities"
    NEGOTIATED_RESYNC = "receive the reply to qmp_capabilities, then resynchronise"
    STATUS_KNOWN = "receive the resynchronising query-status reply"
    SEND_COMMAND = "send a command"
    END_OF_INPUT = "end of input"
    CLOSE = "close"


_C = ClientState
_CI = ClientInput

CLIENT_TRANSITIONS: Final[dict[ClientState, dict[ClientInput, ClientState]]] = {
    _C.AWAITING_GREETING: {
        _CI.RECEIVE_DATA: _C.AWAITING_GREETING,
        _CI.GREETING: _C.GREETED,
        _CI.END_OF_INPUT: _C.CLOSED,
        _CI.CLOSE: _C.CLOSED,
    },
    _C.GREETED: {
        _CI.RECEIVE_DATA: _C.GREETED,
        _CI.SEND_CAPABILITIES: _C.NEGOTIATING,
        _CI.END_OF_INPUT: _C.CLOSED,
        _CI.CLOSE: _C.CLOSED,
    },
    _C.NEGOTIATING: {
        _CI.RECEIVE_DATA: _C.NEGOTIATING,
        _CI.NEGOTIATED: _C.READY,
        _CI.NEGOTIATED_RESYNC: _C.RESYNCING,
        _CI.CAPABILITIES_REFUSED: _C.GREETED,
        _CI.END_OF_INPUT: _C.CLOSED,
        _CI.CLOSE: _C.CLOSED,
    },
    _C.RESYNCING: {
        _CI.RECEIVE_DATA: _C.RESYNCING,
        _CI.STATUS_KNOWN: _C.READY,
        _CI.SEND_COMMAND: _C.RESYNCING,    # queued behind the status, answered in order
        _CI.END_OF_INPUT: _C.CLOSED,
        _CI.CLOSE: _C.CLOSED,
    },
    _C.READY: {
        _CI.RECEIVE_DATA: _C.READY,
        _CI.SEND_COMMAND: _C.READY,
        _CI.END_OF_INPUT: _C.CLOSED,
        _CI.CLOSE: _C.CLOSED,
    },
    _C.CLOSED: {
        _CI.CLOSE: _C.CLOSED,
    },
    _C.ERROR: {},
}

StateT = TypeVar("StateT", bound=Enum)
InputT = TypeVar("InputT", bound=Enum)


class StateMachine(Generic[StateT, InputT]):
    """One role's current state, moved only through its table."""

    __slots__ = ("_error", "_role", "_table", "state")

    def __init__(self, role: str, table: dict[StateT, dict[InputT, StateT]], initial: StateT,
                 error: StateT) -> None:
        self._role = role
        self._table: dict[StateT, dict[InputT, StateT]] = table
        self._error: StateT = error
        self.state: StateT = initial

    def fire(self, event: InputT) -> StateT:
        """Apply *event*; raise LocalProtocolError (and go to ERROR) if not allowed."""
        nxt = self._table[self.state].get(event)
        if nxt is None:
            state = self.state
            self.state = self._error
            raise LocalProtocolError(
                f"{self._role} cannot {event.value} in state {state.name}")
        self.state = nxt
        return nxt
