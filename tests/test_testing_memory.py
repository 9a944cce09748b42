"""The in-memory client/server pair: both sans-IO roles, no sockets, any split."""

from __future__ import annotations

from typing import Any

import pytest

from qmpevents.catalog import Stop
from qmpevents.errors import CommandFailure, QMPError
from qmpevents.protocol import Command, ConnectionClosed, Greeting, Reply, Resynced
from qmpevents.testing.memory import MemoryQMP


class Machine:
    """A tiny application: stop emits STOP before its reply, status reports it."""

    def __init__(self) -> None:
        self.running = True
        self.pair = MemoryQMP(self.handle, chunk_size=3, clock=lambda: 1.25)

    def handle(self, command: Command) -> Any:
        if command.name == "stop":
            self.running = False
            self.pair.emit("STOP")
            return {}
        if command.name == "query-status":
            return {"status": "running" if self.running else "paused"}
        raise CommandFailure("CommandNotFound", f"The command {command.name} has not been found")


def test_negotiation_command_event_order_byte_by_three() -> None:
    machine = Machine()
    pair = machine.pair
    assert not pair.emit("STOP")  # not negotiated yet: dropped
    pair.negotiate()
    assert isinstance(pair.received[0], Greeting)
    request_id = pair.client.send_command("stop")
    stop, reply = pair.pump()
    assert isinstance(stop, Stop) and stop.timestamp == 1.25
    assert reply == Reply("stop", request_id, value={})
    assert pair.execute("query-status") == {"status": "paused"}
    with pytest.raises(QMPError) as info:
        pair.execute("nope")
    assert info.value.error_class == "CommandNotFound"


def test_resync_through_both_roles() -> None:
    pair = MemoryQMP(lambda command: {"status": "running"}, resync=True)
    pair.negotiate()
    assert any(isinstance(item, Resynced) and item.status == {"status": "running"}
               for item in pair.received)


def test_half_close_gets_every_reply_then_the_end() -> None:
    machine = Machine()
    pair = machine.pair
    pair.negotiate()
    first = pair.client.send_command("query-status")
    second = pair.client.send_command("stop")
    pair.server.receive_data(pair.client.data_to_send())
    items = pair.close_client_output()
    replies = [item.id for item in items if isinstance(item, Reply)]
    assert replies == [first, second] and items[-1] == ConnectionClosed()
