"""The transition tables: the only place a role's state changes, checked exhaustively."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from enum import Enum
from typing import Any

import pytest

from qmpevents.errors import LocalProtocolError
from qmpevents.protocol import (
    NEED_DATA,
    NO_ID,
    ClientConnection,
    ClientState,
    Command,
    ConnectionClosed,
    ServerConnection,
    ServerState,
)
from qmpevents.protocol.states import (
    CLIENT_TRANSITIONS,
    SERVER_TRANSITIONS,
    ClientInput,
    ServerInput,
    StateMachine,
)

VERSION = {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""}


@pytest.mark.parametrize(("table", "states", "inputs", "error"), [
    (SERVER_TRANSITIONS, ServerState, ServerInput, ServerState.ERROR),
    (CLIENT_TRANSITIONS, ClientState, ClientInput, ClientState.ERROR),
])
def test_every_pair_is_either_a_transition_or_a_named_local_error(
        table: dict[Enum, dict[Enum, Enum]], states: type[Enum], inputs: type[Enum],
        error: Enum) -> None:
    assert set(table) == set(states), "every state has a row"
    assert table[error] == {}, "nothing is allowed after a local protocol error"
    for state, event in itertools.product(states, inputs):
        machine: StateMachine[Enum, Enum] = StateMachine("role", table, state, error)
        if event in table[state]:
            assert machine.fire(event) is table[state][event]
        else:
            with pytest.raises(LocalProtocolError) as info:
                machine.fire(event)
            assert state.name in str(info.value) and str(event.value) in str(info.value)
            assert machine.state is error


def test_every_state_is_reachable_and_every_row_leads_somewhere() -> None:
    tables: tuple[tuple[Mapping[Any, Mapping[Any, Any]], Any], ...] = (
        (SERVER_TRANSITIONS, ServerState.GREETING),
        (CLIENT_TRANSITIONS, ClientState.AWAITING_GREETING))
    for table, start in tables:
        seen = {start}
        frontier = [start]
        while frontier:
            for nxt in table[frontier.pop()].values():
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        error = next(state for state in table if state.name == "ERROR")
        assert seen | {error} == set(table)


def test_a_server_that_never_greeted_hands_out_no_command() -> None:
    conn = ServerConnection(version=VERSION)
    conn.receive_data(b'{"execute": "qmp_capabilities"}\n{"execute": "stop"}\n')
    with pytest.raises(LocalProtocolError, match="take the next request in state GREETING"):
        conn.next_event()
    assert conn.state is ServerState.ERROR
    with pytest.raises(LocalProtocolError):
        conn.next_event()


def test_a_closed_client_accepts_no_more_data() -> None:
    greeting = b'{"QMP": {"version": {}, "capabilities": []}}\n'
    conn = ClientConnection()
    conn.receive_data(greeting)
    conn.next_events()
    conn.receive_data(b"")
    assert conn.next_events() == [ConnectionClosed()]
    assert conn.state is ClientState.CLOSED
    with pytest.raises(LocalProtocolError, match="after the end of input"):
        conn.receive_data(greeting)  # not "a second greeting"
    closed = ClientConnection()
    closed.close()
    with pytest.raises(LocalProtocolError, match="receive data in state CLOSED"):
        closed.receive_data(greeting)


def test_sentinels_read_well_in_reprs() -> None:
    assert repr(NEED_DATA) == "NEED_DATA"
    assert repr(Command("stop")) == "Command(name='stop', arguments={}, id=NO_ID, oob=False)"
    assert not Command("stop").has_id and Command("stop", id=None).has_id
    assert Command("stop").id is NO_ID
