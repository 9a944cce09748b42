"""Reading the wire as nats-py reads it, faster: header blocks and ack subjects."""

from __future__ import annotations

import pytest

from qmpevents.fleet.headers import install, parse_header_lines
from qmpevents.fleet.subjects import message_headers

nats_client = pytest.importorskip("nats.aio.client")
reference = nats_client.Client._parse_header_lines

BLOCKS = [
    b"",
    b"\r\n",
    b"Qmp-Host: h\xc3\xa9te\r\nQmp-Vm: web.1\r\nNats-Msg-Id: h/web.1/1.000002/E/3\r\n\r\n",
    b"A:b\r\nA:  c  \r\n",  # the last one wins, spaces around the value go
    b"No colon here\r\nKey:\tTabbed\r\n",
    b"Bad Key: x\r\nBad\x1cKey: y\r\n\x1cLead: z\r\nTrail\x0b: w\r\n",  # whitespace in names
    b"N\xc3\xa4me: non-ASCII name\r\nOk: \xff\xfe bytes\r\n",
    b": empty name\r\n:\r\nx:\r\n",
    b"Status: 100\r\nDescription: Idle Heartbeat\r\nNats-Last-Consumer: 10\r\n\r\n",
    # The agent's layout (one regex match), with odd values: the same result.
    b"Qmp-Host:  h\xc3\xa9 \x0b\r\nQmp-Vm:\x1cvm\xa0\r\nQmp-Received: \xff1.5\r\n"
    b"Qmp-Seq:\t7\x0c\r\nNats-Msg-Id: a/b\x85/1.000000/E/7\r\nNats-Expected-Stream: QMP\r\n\r\n",
    b"Qmp-Host: h\r\nQmp-Vm: v\r\nQmp-Received: 1\r\nQmp-Seq: 2\r\nNats-Msg-Id: x\r\n",
    b"Qmp-Host: h\r\nQmp-Vm: v\nQmp-Received: 1\r\nQmp-Seq: 2\r\nNats-Msg-Id: x\r\n",
]


@pytest.mark.parametrize("block", BLOCKS)
def test_same_result_as_nats_py(block: bytes) -> None:
    assert parse_header_lines(block) == reference(block)


@pytest.mark.parametrize("block", BLOCKS)
def test_with_the_status_line_as_the_wire_has_it(block: bytes) -> None:
    """The consumer parses whole blocks (``NATS/1.0`` first): that line adds nothing."""
    assert parse_header_lines(b"NATS/1.0\r\n" + block) == reference(block)


def test_the_agents_headers_round_trip() -> None:
    headers = message_headers("hôte", "web.1", 1764600000.25, 7, "hôte/web.1/1.000000/E/7",
                              "QMP")
    block = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n"
    assert parse_header_lines(block) == reference(block) == headers


def test_installed_on_one_client_only() -> None:
    ours, other = nats_client.Client(), nats_client.Client()
    assert install(ours)
    assert ours._parse_header_lines is parse_header_lines
    assert other._parse_header_lines is reference


@pytest.mark.parametrize("reply", [
    "$JS.ACK.QMP.ordered.1.4711.12.1764600000000000000.5",
    "$JS.ACK.hub.ACCHASH.QMP.dur.1.4712.12.1764600000000000000.5.rand",  # with a domain
    "$JS.ACK.hub.ACCHASH.QMP.dur.1.4713.12.1764600000000000000.5",
])
def test_stream_sequence_as_nats_py_reads_it(reply: str) -> None:
    from nats.aio.msg import Msg

    from qmpevents.fleet.consumer import _stream_sequence

    msg = Msg(_client=None, subject="qmp.h.v.E", reply=reply)  # type: ignore[arg-type]
    assert _stream_sequence(msg) == msg.metadata.sequence.stream
