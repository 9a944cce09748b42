"""Our subscriptions' messages from the wire: whatever the reads' boundaries, each comes
once, whole and in order, and everything else still goes nats-py's way."""

from __future__ import annotations

from typing import Any

import pytest

from qmpevents.fleet.inbound import route, unroute

parser_module = pytest.importorskip("nats.protocol.parser")

WIRE = (b"MSG _I.1 1 5\r\nhello\r\n"
        b"PING\r\n"
        b"MSG _I.2 1 _R.x 0\r\n\r\n"
        b"HMSG qmp.h.v.E 1 $JS.ACK.Q.c.1.2.3.4.0 18 23\r\nNATS/1.0\r\nA: b\r\n\r\n{\"e\"}\r\n"
        b"MSG other 2 3\r\nabc\r\n"
        b"INFO {\"server_id\":\"x\"}\r\n"
        b"+OK\r\n"
        b"HMSG _I.3 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
        b"MSG _I.4 1 7\r\nMSG x\r\n\r\n"
        b"PONG\r\n")
EXPECTED = [
    ("routed", b"_I.1", b"", b"", b"hello"),
    ("ping",),
    ("routed", b"_I.2", b"_R.x", b"", b""),
    ("routed", b"qmp.h.v.E", b"$JS.ACK.Q.c.1.2.3.4.0", b"NATS/1.0\r\nA: b\r\n\r\n", b'{"e"}'),
    ("msg", 2, b"other", b"", b"abc", None),
    ("info", {"server_id": "x"}),
    ("routed", b"_I.3", b"", b"NATS/1.0 503\r\n\r\n", b""),
    ("routed", b"_I.4", b"", b"", b"MSG x\r\n"),
    ("pong",),
]


class FakeClient:
    """What nats-py's parser calls on its client, recorded."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []
        self._ps = parser_module.Parser(self)

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes,
                           headers: bytes) -> None:
        self.seen.append(("msg", sid, bytes(subject), bytes(reply), data, headers))

    async def _process_ping(self) -> None:
        self.seen.append(("ping",))

    async def _process_pong(self) -> None:
        self.seen.append(("pong",))

    async def _process_info(self, info: dict[str, Any]) -> None:
        self.seen.append(("info", info))

    async def _process_err(self, err: str) -> None:
        self.seen.append(("err", err))

    def routed(self, subject: bytes, reply: bytes, headers: bytes, data: bytes) -> None:
        self.seen.append(("routed", subject, reply, headers, data))


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 13, 64, len(WIRE)])
async def test_any_read_boundaries_give_the_same_messages(chunk: int) -> None:
    client = FakeClient()
    assert route(client, 1, client.routed)  # type: ignore[arg-type]
    for offset in range(0, len(WIRE), chunk):
        await client._ps.parse(WIRE[offset:offset + chunk])
    assert client.seen == EXPECTED
    assert not client._ps.buf


async def test_unrouted_messages_go_to_the_subscription_again() -> None:
    client = FakeClient()
    assert route(client, 1, client.routed)  # type: ignore[arg-type]
    unroute(client, 1)  # type: ignore[arg-type]
    await client._ps.parse(b"MSG _I.1 1 5\r\nhello\r\n")
    assert client.seen == [("msg", 1, b"_I.1", b"", b"hello", None)]


def test_another_client_is_left_alone() -> None:
    class Other:
        async def _process_msg(self, sid: int, subject: bytes) -> None: ...

    assert not route(Other(), 1, lambda *message: None)  # type: ignore[arg-type]
