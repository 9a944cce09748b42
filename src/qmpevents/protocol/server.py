"""The server side of QMP as a state machine, without I/O (h11 style).

Feed it bytes with :meth:`ServerConnection.receive_data` (``b""`` for the end
of input), take requests with :meth:`~ServerConnection.next_event`, answer
them with :meth:`~ServerConnection.send_return` /
:meth:`~ServerConnection.send_error`, send events with
:meth:`~ServerConnection.send_event`, and write out
:meth:`~ServerConnection.data_to_send`: every byte the monitor owes its peer
goes through that one buffer, in the order it was produced.  That order is
QMP's: an event a command causes is sent while the command runs, so it is
written before the command's reply.

A reply is encoded as it is taken: ordinary ones when made, one that echoes
a huge value (a peer's ``id``) a bounded step per ``data_to_send(one_step=True)``
(:attr:`~ServerConnection.output_pending` says more is due).

Negotiation, malformed input and request-shape errors are answered here, in
order, with QEMU 7.2's texts, so the layer above only ever sees well-formed
commands of a negotiated session.  QEMU's input rules are here too:

* at most *queue_depth* (``QMP_REQ_QUEUE_LEN_MAX``, 8) parsed requests wait;
  the rest of the input waits unparsed, and :attr:`~ServerConnection.wants_data`
  turns False until the queue is drained, so the adapter stops reading its
  socket and the kernel pushes back on the client;
* input is parsed *input_slice* bytes at a time, so one burst of garbage
  costs a bounded amount of work (and of error replies) per request taken,
  and at most *exact_slice* bytes per refill go through the byte-by-byte
  (exact) parser: a big message on that path is parsed over many calls, each
  a few milliseconds, so an adapter serving many peers stays responsive;
* after the end of input every request already received is still handed out
  and answered (a half-closed client gets all its replies), then
  :class:`ConnectionClosed`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from qmpevents.codec import (
    DEFAULT_MAX_MESSAGE_SIZE,
    HeldInputBudget,
    ParseError,
    encode_message,
    qdict_order,
    value_framer,
)
from qmpevents.codec.encoder import STEP_WORK, MessageSteps
from qmpevents.errors import CommandFailure, LocalProtocolError
from qmpevents.protocol.outbox import SteppedOutbox
from qmpevents.protocol.states import (
    NEED_DATA,
    NO_ID,
    SERVER_EVENT_STATES,
    SERVER_TRANSITIONS,
    ConnectionClosed,
    Sentinel,
    ServerInput,
    ServerState,
    StateMachine,
)
from qmpevents.protocol.unexpected import LongKeys, first_unexpected

QUEUE_DEPTH: Final = 8
"""QEMU's ``QMP_REQ_QUEUE_LEN_MAX``: requests parsed but not yet run, per monitor."""

INPUT_SLICE: Final = 8 * 1024
"""Bytes parsed at a time: bounds the replies one burst of garbage produces at once."""

EXACT_SLICE: Final = 4 * 1024
"""Bytes of the exact (byte-by-byte) parser's work per refill, about 5 ms (10 ms on a
slow 2-core VM)."""

READ_AHEAD: Final = INPUT_SLICE
"""Bytes received but not parsed beyond which reading stops while a parse is under way."""

FIRST_REPLY_STEP: Final = STEP_WORK // 8
"""Encoding work done when a reply is made (the rest as it is taken): about 1 ms."""

_CAPABILITY_VALUES: Final = ("oob",)
_CLOSED: Final = ConnectionClosed()


@dataclass(frozen=True, slots=True)
class Command:
    """A well-formed request of a negotiated session, for the server to run."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: Any = NO_ID
    oob: bool = False

    @property
    def has_id(self) -> bool:
        return self.id is not NO_ID


ServerEvent = Command | ConnectionClosed


class ServerConnection:
    """One QMP monitor's protocol state."""

    def __init__(self, *, version: Mapping[str, Any], capabilities: Sequence[str] = ("oob",),
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 queue_depth: int = QUEUE_DEPTH, input_slice: int = INPUT_SLICE,
                 exact_slice: int | None = EXACT_SLICE,
                 held_budget: HeldInputBudget | None = None) -> None:
        self._machine: StateMachine[ServerState, ServerInput] = StateMachine(
            "the server", SERVER_TRANSITIONS, ServerState.GREETING, ServerState.ERROR)
        self._version = dict(version)
        self._capabilities = list(capabilities)
        self._framer = value_framer(max_message_size=max_message_size, held_budget=held_budget)
        self._queue_depth = queue_depth
        self._slice = input_slice
        self._exact_slice = exact_slice
        self._inbox: deque[Any] = deque()
        self._backlog = bytearray()  # received, not parsed yet (the queue is full)
        self._backlog_pos = 0
        self._input_ended = False
        self._framer_ended = False
        self._reading = True
        self._out = SteppedOutbox()
        self._outstanding: Command | None = None
        self.oob_enabled = False

    @property
    def state(self) -> ServerState:
        return self._machine.state

    @property
    def accepts_events(self) -> bool:
        """Events go only to a negotiated monitor, and are never queued for later."""
        return self._machine.state in SERVER_EVENT_STATES

    # -- output -------------------------------------------------------------

    def send_greeting(self) -> None:
        """The greeting QEMU sends on connect; moves to negotiation."""
        self._machine.fire(ServerInput.SEND_GREETING)
        self._append(encode_message({"QMP": {"version": self._version,
                                             "capabilities": self._capabilities}}))

    def send_return(self, command: Command, value: Any) -> None:
        """Answer *command* with ``{"return": value}``.

        A big *value* is encoded as :meth:`data_to_send` takes it, in steps:
        it must not change meanwhile.
        """
        self._finish(command)
        self._reply({"return": value}, command.id)

    def send_error(self, command: Command, error_class: str, desc: str) -> None:
        """Answer *command* with an error reply."""
        self._finish(command)
        self._error(error_class, desc, command.id)

    def send_failure(self, command: Command, failure: CommandFailure) -> None:
        """Answer *command* with the error a handler raised."""
        self.send_error(command, failure.error_class, failure.desc)

    def send_event(self, line: bytes) -> bool:
        """Queue one encoded event line; False (dropped) unless negotiated, as QEMU."""
        machine = self._machine
        machine.fire(ServerInput.SEND_EVENT)
        if machine.state not in SERVER_EVENT_STATES:
            return False
        self._out.append(line)
        return True

    def data_to_send(self, *, one_step: bool = False) -> bytes:
        """Everything produced so far, in order; empties the buffer.

        A reply that echoes a huge value is encoded as it is taken: with
        *one_step*, at most one bounded step of it (a few ms) is done, and
        :attr:`output_pending` says that more is due: call again, after
        yielding to other peers and once the peer has read what was written.
        """
        return self._out.take(one_step)

    @property
    def output_size(self) -> int:
        """Bytes waiting in :meth:`data_to_send` (not counting what is still to be encoded)."""
        return self._out.size

    @property
    def output_pending(self) -> bool:
        """A reply is still being encoded: :meth:`data_to_send` has more to give."""
        return self._out.pending

    def close(self) -> None:
        """This side ends the session: no more input is taken, events are dropped."""
        self._machine.fire(ServerInput.CLOSE)
        self.discard_input()

    # -- input --------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the peer (any split); ``b""`` means the input ended."""
        if self._input_ended:
            raise LocalProtocolError("the server cannot receive data after the end of input")
        self._machine.fire(ServerInput.RECEIVE_DATA)
        if not data:
            self._input_ended = True
            self._fill()
            return
        if self._backlog_pos:
            del self._backlog[:self._backlog_pos]
            self._backlog_pos = 0
        self._backlog += data
        if self._framer.pending:
            # A parse is under way: the data waits its turn (next_event goes on with
            # it), and reading stops once a slice of it is waiting.
            self._reading = (len(self._backlog) < READ_AHEAD
                             and len(self._inbox) < self._queue_depth)
            return
        self._fill()

    @property
    def wants_data(self) -> bool:
        """Whether the adapter should read its socket (False while QEMU's queue is full)."""
        return self._reading and not self._input_ended

    @property
    def pending_requests(self) -> int:
        """Messages parsed and not yet processed (QEMU queues 8 per monitor)."""
        return len(self._inbox)

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for input not parsed into messages yet (the framer's memory included)."""
        return self._framer.held + len(self._backlog) - self._backlog_pos

    @property
    def has_unparsed_input(self) -> bool:
        """Input is waiting to be parsed: call :meth:`next_event` again, no new data needed.

        Each call parses at most one queue's worth, so an adapter serving many
        peers yields between calls and one peer's burst cannot stall the rest.
        """
        return bool(self._inbox) or self._backlog_pos < len(self._backlog) or (
            self._framer.pending > 0) or (self._input_ended and not self._framer_ended)

    @property
    def parsing(self) -> bool:
        """A message is being parsed over several calls (the byte-by-byte parser's
        slices): :meth:`next_event` goes on with it."""
        return self._framer.pending > 0

    @property
    def unfinished_at_end(self) -> int:
        """Bytes of an unfinished request that the end of input cut off."""
        return self._framer.dropped_at_end

    def next_event(self) -> ServerEvent | Sentinel:
        """The next command to run, answering everything else on the way.

        :data:`NEED_DATA` when more input is needed, :class:`ConnectionClosed`
        once the input ended and every request before the end was handed out.
        """
        self._machine.fire(ServerInput.NEXT_EVENT)
        if self._machine.state is ServerState.CLOSED:
            return _CLOSED
        if self._outstanding is not None:
            raise LocalProtocolError(
                f"answer {self._outstanding.name!r} before taking the next command")
        refilled = False
        while True:
            while self._inbox:
                command = self._check(self._inbox.popleft())
                if command is not None:
                    self._outstanding = command
                    return command
            if refilled or not self._fill():
                break
            refilled = True  # one refill per call: the work of a call stays bounded
        if self.has_unparsed_input:
            return NEED_DATA  # more to parse: call again (after yielding to other peers)
        self._reading = True
        if self._input_ended:
            self._machine.fire(ServerInput.END_OF_INPUT)
            self.discard_input()
            return _CLOSED
        return NEED_DATA

    def commands(self) -> Iterator[Command]:
        """Every command received so far, for code that needs no yielding (tests, tools).

        :meth:`next_event` until only :data:`NEED_DATA` is left or the input
        ended; answer each command in the loop's body before the next one.
        """
        while True:
            event = self.next_event()
            if isinstance(event, Command):
                yield event
            elif event is NEED_DATA and self.has_unparsed_input:
                continue
            else:
                return

    def _fill(self) -> bool:
        """Parse backlog slices until the queue holds *queue_depth*; whether any was parsed."""
        backlog = self._backlog
        framer = self._framer
        parsed = False
        budget = self._exact_slice  # the exact parser's work for this refill, in all
        if framer.pending:
            self._inbox.extend(framer.feed(b"", budget=budget))
            budget = 0 if budget is not None else None
            parsed = True
        while (not framer.pending and self._backlog_pos < len(backlog)
               and len(self._inbox) < self._queue_depth):
            start = self._backlog_pos
            end = min(start + self._slice, len(backlog))
            self._inbox.extend(framer.feed(bytes(backlog[start:end]), budget=budget))
            budget = 0 if budget is not None else None
            self._backlog_pos = end
            parsed = True
        if framer.pending:
            # Read on while little waits: the end of input (a client that left) is
            # seen during a long parse, not after it.
            self._reading = len(backlog) - self._backlog_pos < READ_AHEAD
        elif self._backlog_pos >= len(backlog):
            backlog.clear()
            self._backlog_pos = 0
            if self._input_ended and not self._framer_ended:
                self._framer_ended = True  # what the framer held is complete or dropped
                self._inbox.extend(self._framer.end())
                parsed = True
        else:
            self._reading = False
        if len(self._inbox) >= self._queue_depth:
            self._reading = False
        return parsed

    def drop_unparsed(self) -> int:
        """The peer is gone (not just half-closed): nobody will read the replies to
        input not parsed yet, so drop it now, with its share of a held-input budget,
        instead of parsing it; requests already parsed are still handed out.
        Returns the bytes dropped."""
        dropped = self.buffered_bytes
        self._backlog.clear()
        self._backlog_pos = 0
        self._framer.close()
        return dropped

    def discard_input(self) -> None:
        """Drop the input not handed out yet, and what the framer holds (and its share
        of a held-input budget): for a connection that is gone."""
        self._inbox.clear()
        self._backlog.clear()
        self._backlog_pos = 0
        self._framer.close()

    def _check(self, message: Any) -> Command | None:
        """Validate one request as ``qmp_dispatch`` does; answer it if it fails."""
        if isinstance(message, ParseError):
            self._error("GenericError", message.desc, NO_ID)
            return None
        if not isinstance(message, dict):
            self._error("GenericError", "QMP input must be a JSON object", NO_ID)
            return None
        request_id = message.get("id", NO_ID)
        problem = self._shape_problem(message)
        if problem is not None:
            self._error("GenericError", problem, request_id)
            return None
        oob = "exec-oob" in message
        name = message["exec-oob"] if oob else message["execute"]
        arguments = message.get("arguments", {})
        if self._machine.state is ServerState.NEGOTIATION:
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
        """QEMU's argument check of ``qmp_capabilities``: its error text, or None.

        As QEMU's visitor: ``enable`` first, then the unexpected member it names
        (several: the one first in its hash table's layout, see
        :mod:`~qmpevents.protocol.unexpected`)."""
        enable = arguments.get("enable", [])
        if not isinstance(enable, list):
            return "Invalid parameter type for 'enable', expected: array"
        for index, item in enumerate(enable):
            if not isinstance(item, str):
                return f"Invalid parameter type for 'enable[{index}]', expected: string"
            if item not in _CAPABILITY_VALUES or item not in self._capabilities:
                return f"Parameter 'null' does not accept value '{item}'"
        keys = list(arguments)
        visited = ["enable"] if "enable" in arguments else []
        try:
            unexpected = first_unexpected(keys, visited)
        except LongKeys as long_keys:  # keys over 64 KiB: hashed here, in one go
            long_keys.hash_now()
            try:
                unexpected = first_unexpected(keys, visited)
            finally:
                long_keys.release()
        return None if unexpected is None else f"Parameter '{unexpected}' is unexpected"

    def _negotiate(self, arguments: dict[str, Any], request_id: Any) -> None:
        problem = self._capabilities_problem(arguments)
        if problem is not None:
            self._error("GenericError", problem, request_id)
            return
        self.oob_enabled = "oob" in arguments.get("enable", [])
        self._machine.fire(ServerInput.NEGOTIATED)
        self._reply({"return": {}}, request_id)

    def _finish(self, command: Command) -> None:
        self._machine.fire(ServerInput.SEND_REPLY)
        if command is not self._outstanding:
            raise LocalProtocolError(f"{command.name!r} is not the command being answered")
        self._outstanding = None

    def _reply(self, body: dict[str, Any], request_id: Any) -> None:
        if request_id is not NO_ID:
            body["id"] = request_id
        # A short first step now (the whole of an ordinary reply, under 1 ms); a
        # reply that echoes a huge value goes on as it is taken, in order.
        steps = MessageSteps(body)
        self._append(steps.next_piece(FIRST_REPLY_STEP))
        if not steps.done:
            self._out.append_steps(steps)

    def _error(self, error_class: str, desc: str, request_id: Any) -> None:
        self._reply({"error": {"class": error_class, "desc": desc}}, request_id)

    def _append(self, data: bytes) -> None:
        self._out.append(data)


__all__ = ["EXACT_SLICE", "INPUT_SLICE", "NEED_DATA", "QUEUE_DEPTH", "Command", "CommandFailure",
           "ConnectionClosed", "ServerConnection", "ServerEvent", "ServerState"]
