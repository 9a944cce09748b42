"""The server side of QMP as a state machine, without I/O (h11 style).

Feed it bytes with :meth:`ServerConnection.receive_data`, take requests with
:meth:`~ServerConnection.next_event`, answer them with
:meth:`~ServerConnection.send_return` / :meth:`~ServerConnection.send_error`,
and write out :meth:`~ServerConnection.data_to_send`.  Negotiation,
malformed input and request-shape errors are answered here, in order, with
QEMU 7.2's texts, so the layer above only ever sees well-formed commands of a
negotiated session.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

from qmpevents.codec import (
    DEFAULT_MAX_MESSAGE_SIZE,
    ParseError,
    encode_message,
    qdict_order,
    value_framer,
)
from qmpevents.errors import LocalProtocolError


class ServerState(Enum):
    """Where a monitor is in QMP's life cycle."""

    GREETING = "greeting"          # connected, greeting not sent yet
    NEGOTIATION = "negotiation"    # only qmp_capabilities is accepted
    COMMAND = "command"            # negotiated: commands run, events flow
    CLOSED = "closed"


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""Returned by ``next_event`` when more bytes are needed."""

_NO_ID: Final = object()


@dataclass(frozen=True, slots=True)
class Command:
    """A well-formed request of a negotiated session, for the server to run."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: Any = _NO_ID
    oob: bool = False

    @property
    def has_id(self) -> bool:
        return self.id is not _NO_ID


class CommandFailure(Exception):
    """Raise from a command handler: QMP error class and description."""

    def __init__(self, error_class: str, desc: str) -> None:
        super().__init__(f"{error_class}: {desc}")
        self.error_class = error_class
        self.desc = desc


_CAPABILITY_VALUES: Final = ("oob",)


class ServerConnection:
    """One QMP monitor's protocol state."""

    def __init__(self, *, version: Mapping[str, Any], capabilities: Sequence[str] = ("oob",),
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.state = ServerState.GREETING
        self._version = dict(version)
        self._capabilities = list(capabilities)
        self._framer = value_framer(max_message_size=max_message_size)
        self._inbox: deque[Any] = deque()
        self._out: list[bytes] = []
        self._outstanding: Command | None = None
        self.oob_enabled = False

    # -- output -------------------------------------------------------------

    def greeting(self) -> bytes:
        """The greeting QEMU sends on connect; moves to negotiation."""
        if self.state is not ServerState.GREETING:
            raise LocalProtocolError("the greeting is sent once, first")
        self.state = ServerState.NEGOTIATION
        return encode_message({"QMP": {"version": self._version,
                                       "capabilities": self._capabilities}})

    @property
    def accepts_events(self) -> bool:
        """Events go only to a negotiated monitor, and are never queued for later."""
        return self.state is ServerState.COMMAND

    def data_to_send(self) -> bytes:
        """Replies produced so far, in order; empties the buffer."""
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def send_return(self, command: Command, value: Any) -> None:
        """Answer *command* with ``{"return": value}``."""
        self._finish(command)
        self._reply({"return": value}, command.id)

    def send_error(self, command: Command, error_class: str, desc: str) -> None:
        """Answer *command* with an error reply."""
        self._finish(command)
        self._error(error_class, desc, command.id)

    def close(self) -> None:
        self.state = ServerState.CLOSED

    # -- input --------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the peer (any split: partial or several messages)."""
        if self.state is ServerState.CLOSED:
            return
        self._inbox.extend(self._framer.feed(data))

    @property
    def pending_requests(self) -> int:
        """Messages received and not yet processed (QEMU queues 8 per monitor)."""
        return len(self._inbox)

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete message held by the framer."""
        return self._framer.buffered

    def next_event(self) -> Command | _NeedData:
        """The next command to run, answering everything else on the way."""
        if self._outstanding is not None:
            raise LocalProtocolError(
                f"answer {self._outstanding.name!r} before taking the next command")
        while self._inbox:
            command = self._check(self._inbox.popleft())
            if command is not None:
                self._outstanding = command
                return command
        return NEED_DATA

    def _check(self, message: Any) -> Command | None:
        """Validate one request as ``qmp_dispatch`` does; answer it if it fails."""
        if isinstance(message, ParseError):
            self._error("GenericError", message.desc, _NO_ID)
            return None
        if not isinstance(message, dict):
            self._error("GenericError", "QMP input must be a JSON object", _NO_ID)
            return None
        request_id = message.get("id", _NO_ID)
        problem = self._shape_problem(message)
        if problem is not None:
            self._error("GenericError", problem, request_id)
            return None
        oob = "exec-oob" in message
        name = message["exec-oob"] if oob else message["execute"]
        arguments = message.get("arguments", {})
        if self.state is ServerState.NEGOTIATION:
            if name != "qmp_capabilities":
                self._error("CommandNotFound",
                            "Expecting capabilities negotiation with 'qmp_capabilities'",
                            request_id)
                return None
            self._negotiate(arguments, request_id)
            return None
        if name == "qmp_capabilities":
            # QEMU checks the arguments before its handler says it is too late.
            problem = self._capabilities_problem(arguments)
            if problem is not None:
                self._error("GenericError", problem, request_id)
            else:
                self._error("CommandNotFound",
                            "Capabilities negotiation is already complete, command ignored",
                            request_id)
            return None
        return Command(name, arguments, request_id, oob)

    def _shape_problem(self, message: dict[str, Any]) -> str | None:
        """QEMU's ``qmp_dispatch_check_obj``; members checked in QDict order."""

        exec_key: str | None = None
        for key in qdict_order(list(message)):
            value = message[key]
            if key == "execute" or (key == "exec-oob" and self.oob_enabled):
                if not isinstance(value, str):
                    return f"QMP input member '{key}' must be a string"
                if exec_key is not None:
                    return f"QMP input member '{key}' clashes with '{exec_key}'"
                exec_key = key
            elif key == "arguments":
                if not isinstance(value, dict):
                    return "QMP input member 'arguments' must be an object"
            elif key != "id":
                return f"QMP input member '{key}' is unexpected"
        if exec_key is None:
            return "QMP input lacks member 'execute'"
        return None

    def _capabilities_problem(self, arguments: dict[str, Any]) -> str | None:
        """QEMU's argument check of ``qmp_capabilities``: its error text, or None."""
        for key in arguments:
            if key != "enable":
                return f"Parameter '{key}' is unexpected"
        enable = arguments.get("enable", [])
        if not isinstance(enable, list):
            return "Invalid parameter type for 'enable', expected: array"
        for index, item in enumerate(enable):
            if not isinstance(item, str):
                return f"Invalid parameter type for 'enable[{index}]', expected: string"
            if item not in _CAPABILITY_VALUES or item not in self._capabilities:
                return f"Parameter 'null' does not accept value '{item}'"
        return None

    def _negotiate(self, arguments: dict[str, Any], request_id: Any) -> None:
        problem = self._capabilities_problem(arguments)
        if problem is not None:
            self._error("GenericError", problem, request_id)
            return
        self.oob_enabled = "oob" in arguments.get("enable", [])
        self.state = ServerState.COMMAND
        self._reply({"return": {}}, request_id)

    def _finish(self, command: Command) -> None:
        if command is not self._outstanding:
            raise LocalProtocolError(f"{command.name!r} is not the command being answered")
        self._outstanding = None

    def _reply(self, body: dict[str, Any], request_id: Any) -> None:
        if request_id is not _NO_ID:
            body["id"] = request_id
        self._out.append(encode_message(body))

    def _error(self, error_class: str, desc: str, request_id: Any) -> None:
        self._reply({"error": {"class": error_class, "desc": desc}}, request_id)
