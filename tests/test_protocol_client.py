"""The sans-IO client state machine: greeting, negotiation, id matching, typed events."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest

from qmpevents.catalog import BlockIoError, Event, Reset, Stop, Timestamp, UnknownEvent
from qmpevents.errors import LocalProtocolError, MessageTooLarge
from qmpevents.protocol import (
    NEED_DATA,
    ClientConnection,
    ClientState,
    ConnectionClosed,
    ErrorReply,
    Greeting,
    ProtocolViolation,
    Reply,
    Resynced,
)
from qmpevents.protocol.client import FORGOTTEN_LIMIT, HELD_LIMIT

GREETING = (b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, '
            b'"package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}\r\n')
STOP = b'{"timestamp": {"seconds": 1795701760, "microseconds": 257350}, "event": "STOP"}'
RESET = (b'{"timestamp": {"seconds": 1795701761, "microseconds": 263744}, "event": "RESET", '
         b'"data": {"guest": false, "reason": "host-qmp-system-reset"}}')


def drain(conn: ClientConnection) -> list[Any]:
    out = []
    while (item := conn.next_event()) is not NEED_DATA:
        out.append(item)
    return out


def greeted() -> ClientConnection:
    conn = ClientConnection()
    conn.receive_data(GREETING)
    (greeting,) = drain(conn)
    assert isinstance(greeting, Greeting)
    return conn


def ready() -> ClientConnection:
    conn = greeted()
    request_id = conn.send_command("qmp_capabilities")
    conn.receive_data(b'{"return": {}, "id": "' + request_id.encode() + b'"}\r\n')
    drain(conn)
    assert conn.state is ClientState.READY
    return conn


def reply_line(request_id: str, value: Any) -> bytes:
    return json.dumps({"return": value, "id": request_id}).encode() + b"\r\n"


# --- greeting and negotiation -----------------------------------------------------------

def test_greeting_is_parsed() -> None:
    conn = ClientConnection()
    assert conn.state is ClientState.AWAITING_GREETING
    assert conn.next_event() is NEED_DATA
    conn.receive_data(GREETING[:30])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(GREETING[30:])
    greeting = conn.next_event()
    assert isinstance(greeting, Greeting)
    assert greeting.version["qemu"] == {"micro": 22, "minor": 2, "major": 7}
    assert greeting.version["package"] == "Debian 1:7.2+dfsg-7+deb12u18+b3"
    assert greeting.capabilities == ["oob"]
    assert conn.state is ClientState.GREETED  # type: ignore[comparison-overlap]  # the call changed it
    assert conn.greeting == greeting


def test_a_second_greeting_is_a_violation() -> None:
    conn = greeted()
    conn.receive_data(GREETING)
    (item,) = drain(conn)
    assert isinstance(item, ProtocolViolation) and "second greeting" in item.problem


def test_commands_need_negotiation_first() -> None:
    conn = ClientConnection()
    with pytest.raises(LocalProtocolError):
        conn.send_command("qmp_capabilities")  # no greeting yet
    assert conn.state is ClientState.ERROR  # misuse is final, as in h11
    conn = greeted()
    with pytest.raises(LocalProtocolError, match="send a command in state GREETED"):
        conn.send_command("query-status")
    conn = greeted()
    conn.send_command("qmp_capabilities")
    assert conn.state is ClientState.NEGOTIATING
    with pytest.raises(LocalProtocolError, match="send qmp_capabilities in state NEGOTIATING"):
        conn.send_command("qmp_capabilities")
    with pytest.raises(LocalProtocolError, match="in state ERROR"):
        conn.receive_data(GREETING)


def test_negotiation_with_an_event_before_the_reply() -> None:
    conn = greeted()
    request_id = conn.send_command("qmp_capabilities")
    data = conn.data_to_send()
    assert json.loads(data) == {"execute": "qmp_capabilities", "id": request_id}
    assert data.endswith(b"\r\n")
    conn.receive_data(STOP + b"\r\n" + b'{"return": {}, "id": "' + request_id.encode()
                      + b'"}\r\n' + RESET + b"\r\n")
    stop = conn.next_event()
    assert isinstance(stop, Stop) and conn.state is ClientState.NEGOTIATING
    reply = conn.next_event()
    assert reply == Reply("qmp_capabilities", request_id, value={})
    assert conn.state is ClientState.READY  # type: ignore[comparison-overlap]  # the call changed it
    reset = conn.next_event()
    assert isinstance(reset, Reset) and reset.data.reason == "host-qmp-system-reset"
    assert conn.next_event() is NEED_DATA


def test_failed_negotiation_goes_back_to_greeted() -> None:
    conn = greeted()
    request_id = conn.send_command("qmp_capabilities", {"enable": ["bogus"]})
    conn.receive_data(json.dumps({"id": request_id, "error": {
        "class": "GenericError", "desc": "Parameter 'null' does not accept value 'bogus'"}})
        .encode() + b"\r\n")
    (reply,) = drain(conn)
    assert isinstance(reply, Reply) and reply.error is not None
    assert reply.error.error_class == "GenericError"
    assert conn.state is ClientState.GREETED


# --- commands and replies ---------------------------------------------------------------

def test_ids_are_unique_and_arguments_sent() -> None:
    conn = ready()
    ids = [conn.send_command("query-status") for _ in range(50)]
    assert len(set(ids)) == 50
    assert conn.pending == 50
    conn.data_to_send()
    request_id = conn.send_command("human-monitor-command", {"command-line": "info"})
    data = conn.data_to_send()
    assert json.loads(data) == {"execute": "human-monitor-command", "id": request_id,
                                "arguments": {"command-line": "info"}}


def test_replies_matched_by_id_out_of_order() -> None:
    conn = ready()
    first = conn.send_command("query-status")
    second = conn.send_command("stop")
    conn.receive_data(reply_line(second, {}) + STOP + b"\r\n"
                      + reply_line(first, {"status": "running"}))
    replies = drain(conn)
    assert replies[0] == Reply("stop", second, value={})
    assert isinstance(replies[1], Stop)
    assert replies[2] == Reply("query-status", first, value={"status": "running"})
    assert conn.pending == 0


def test_error_reply() -> None:
    conn = ready()
    request_id = conn.send_command("nope")
    conn.receive_data(b'{"id": "' + request_id.encode() + b'", "error": {"class": '
                      b'"CommandNotFound", "desc": "The command nope has not been found"}}\r\n')
    (reply,) = drain(conn)
    assert reply == Reply("nope", request_id, error=ErrorReply(
        "CommandNotFound", "The command nope has not been found", request_id))


def test_reply_to_an_unknown_id_is_a_violation() -> None:
    conn = ready()
    conn.receive_data(b'{"return": {}, "id": "never-sent"}\r\n{"return": {}, "id": 5}\r\n')
    items = drain(conn)
    assert all(isinstance(item, ProtocolViolation) for item in items)
    assert "unknown id 'never-sent'" in items[0].problem
    assert "unknown id 5" in items[1].problem


def test_a_reply_is_matched_once_only() -> None:
    conn = ready()
    request_id = conn.send_command("query-status")
    conn.receive_data(reply_line(request_id, 1) + reply_line(request_id, 2))
    first, second = drain(conn)
    assert isinstance(first, Reply) and first.value == 1
    assert isinstance(second, ProtocolViolation)


def test_error_without_id_is_a_violation() -> None:
    conn = ready()
    conn.receive_data(b'{"error": {"class": "GenericError", "desc": "JSON parse error, '
                      b'expecting value"}}\r\n')
    (item,) = drain(conn)
    assert isinstance(item, ProtocolViolation)
    assert "GenericError: JSON parse error, expecting value" in item.problem


def test_garbage_and_unknown_shapes_are_violations() -> None:
    conn = ready()
    conn.receive_data(b"this is not json\r\n[1, 2]\r\n")
    items = drain(conn)
    assert items and all(isinstance(item, ProtocolViolation) for item in items)
    assert "unparsable" in items[0].problem
    assert "not a QMP message: [1, 2]" in items[-1].problem
    request_id = conn.send_command("query-status")  # still usable afterwards
    conn.receive_data(reply_line(request_id, {}))
    assert drain(conn) == [Reply("query-status", request_id, value={})]


def test_message_too_large() -> None:
    conn = ClientConnection(max_message_size=256)
    conn.receive_data(GREETING)
    drain(conn)
    with pytest.raises(MessageTooLarge) as info:
        conn.receive_data(b'{"return": "' + b"x" * 1000 + b'", "id": "a"}\r\n')
    assert info.value.limit == 256


def test_events_before_a_too_large_message_in_the_same_read_are_kept() -> None:
    """They were dropped with the read when the limit was under its size."""
    conn = ClientConnection(max_message_size=256)
    conn.receive_data(GREETING)
    drain(conn)
    request_id = conn.send_command("qmp_capabilities")
    conn.receive_data(b'{"return": {}, "id": "' + request_id.encode() + b'"}\r\n')
    drain(conn)
    big = b'{"event": "X", "data": "' + b"x" * 1000 + b'", "timestamp": {}}'
    with pytest.raises(MessageTooLarge):
        conn.receive_data(b"\r\n".join([STOP, RESET, big, STOP]) + b"\r\n")
    assert [event.name for event in drain(conn)] == ["STOP", "RESET"]


def test_events_held_for_a_resync_come_out_at_a_too_large_message() -> None:
    """Held until the resync's status reply, which can no longer come: they were lost."""
    conn = ClientConnection(max_message_size=256, resync=True)
    conn.receive_data(GREETING)
    drain(conn)
    request_id = conn.send_command("qmp_capabilities")
    conn.receive_data(b'{"return": {}, "id": "' + request_id.encode() + b'"}\r\n')
    assert [type(item) for item in drain(conn)] == [Reply]
    assert conn.state is ClientState.RESYNCING  # a query-status is on its way
    conn.receive_data(STOP + b"\r\n")  # held: its read before the status
    assert drain(conn) == []
    big = b'{"event": "X", "data": "' + b"x" * 1000 + b'", "timestamp": {}}'
    with pytest.raises(MessageTooLarge):
        conn.receive_data(RESET + b"\r\n" + big + b"\r\n")
    marker, *events = drain(conn)
    assert marker == Resynced(None)  # the status is given up
    assert [event.name for event in events] == ["STOP", "RESET"]


@pytest.mark.parametrize("end", ["too-large", "end-of-input"])
def test_events_held_for_a_resync_come_out_whatever_ends_it_in_the_same_read(
        end: str) -> None:
    """With the negotiation's reply in the same read, a message over the limit
    (or the end of input) left the events held for ever (the attacker's finding)."""
    conn = ClientConnection(max_message_size=256, resync=True)
    conn.receive_data(GREETING)
    drain(conn)
    request_id = conn.send_command("qmp_capabilities")
    reply = b'{"return": {}, "id": "' + request_id.encode() + b'"}\r\n'
    if end == "too-large":
        big = b'{"event": "X", "data": "' + b"x" * 1000 + b'", "timestamp": {}}\r\n'
        with pytest.raises(MessageTooLarge):
            conn.receive_data(reply + STOP + b"\r\n" + RESET + b"\r\n" + big)
    else:
        conn.receive_data(reply + STOP + b"\r\n" + RESET + b"\r\n")
        conn.receive_data(b"")
    items = drain(conn)
    assert isinstance(items[0], Reply) and items[1] == Resynced(None)
    assert [getattr(item, "name", type(item).__name__) for item in items[2:]] == (
        ["STOP", "RESET"] + (["ConnectionClosed"] if end == "end-of-input" else []))


def test_message_too_large_in_small_reads() -> None:
    conn = ClientConnection(max_message_size=256)
    conn.receive_data(GREETING)
    with pytest.raises(MessageTooLarge):
        for _ in range(100):
            conn.receive_data(b'{"return": "' + b"x" * 50)


# --- events -----------------------------------------------------------------------------

def test_events_are_typed_with_raw_lines() -> None:
    conn = ready()
    bio = (b'{"timestamp": {"seconds": 1795701832, "microseconds": 379698}, '
           b'"event": "BLOCK_IO_ERROR", "data": {"device": "d_report", "node-name": "#block290",'
           b' "reason": "Input/output error", "operation": "write", "action": "report"}}')
    new = b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "NEW", "data": {"a": 1}}'
    conn.receive_data(b"\r\n".join([STOP, bio, new]) + b"\r\n")
    stop, block, unknown = drain(conn)
    assert isinstance(stop, Stop) and stop.stamp == Timestamp(1795701760, 257350)
    assert isinstance(block, BlockIoError) and block.data.node_name == "#block290"
    assert isinstance(unknown, UnknownEvent) and unknown.data == {"a": 1}
    assert (stop.raw, block.raw, unknown.raw) == (STOP, bio, new)


def test_events_in_bulk_match_one_by_one() -> None:
    data = GREETING + b"\r\n".join([STOP, RESET, STOP]) + b"\r\n" + b"garbage\r\n"
    one = ClientConnection()
    one.receive_data(data)
    bulk = ClientConnection()
    bulk.receive_data(data)
    assert bulk.next_events() == drain(one)
    assert bulk.next_events() == []


def test_bulk_path_only_for_reads_of_events_alone() -> None:
    """A read the block decoder takes whole is events only; a reply after it is not one."""
    conn = ready()
    request_id = conn.send_command("query-status")
    conn.receive_data(b"\r\n".join([STOP, RESET]) + b"\r\n")
    assert conn.only_events_ready
    conn.receive_data(STOP + b"\r\n" + reply_line(request_id, {"status": "paused"}))
    assert not conn.only_events_ready
    items = conn.next_events()
    assert [type(item) for item in items] == [Stop, Reset, Stop, Reply]
    assert items[-1].value == {"status": "paused"}
    assert conn.only_events_ready and conn.next_events() == []


def test_a_reused_read_buffer_leaves_the_events_raw_alone() -> None:
    conn = ready()
    buffer = bytearray(b"\r\n".join([STOP, RESET]) + b"\r\n")
    conn.receive_data(buffer)  # type: ignore[arg-type]  # what a recv_into loop passes
    events = conn.next_events()
    buffer[:] = b"x" * len(buffer)
    assert [event.raw for event in events if isinstance(event, Event)] == [STOP, RESET]


def test_once_raw_is_read_later_events_keep_only_their_own_text() -> None:
    """A consumer that reads ``raw`` (watch --json, record) gets every text cut at once."""
    lines = [b'{"timestamp": {"seconds": 1, "microseconds": %d}, "event": "STOP"}' % index
             for index in range(800)]
    conn = ready()
    conn.receive_data(b"\r\n".join(lines) + b"\r\n")
    first = [event for event in conn.next_events() if isinstance(event, Event)]
    assert first[5].raw == lines[5]
    tracemalloc.start()
    try:
        conn.receive_data(b"\r\n".join(lines) + b"\r\n")
        second = [event for event in conn.next_events() if isinstance(event, Event)]
        kept = second[400]
        del first, second
        conn.receive_data(STOP + b"\r\n")
        conn.next_events()  # the framer lets go of its last output
        assert tracemalloc.get_traced_memory()[0] < 16 * 1024  # not the 60 KB read
        assert kept.raw == lines[400]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("data", [8, [123, 125, 10]])
def test_only_bytes_like_input_is_taken(data: Any) -> None:
    with pytest.raises(TypeError):
        ready().receive_data(data)


def test_a_pretty_printed_event_alone_in_its_read_is_parsed_as_qemu_does() -> None:
    """Over several lines a message is the exact parser's, alone in its read or not."""
    pretty = (b'{"timestamp": {"seconds": 1, "microseconds": 2},\r\n "event": "RTC_CHANGE",'
              b'\r\n "data": {"offset": 1, "offset": 666}}\r\n')
    alone = ready()
    alone.receive_data(pretty)
    shared = ready()
    shared.receive_data(pretty + STOP + b"\r\n")
    first = alone.next_events()
    assert [type(item).__name__ for item in first] == ["ProtocolViolation"]
    assert [type(item).__name__ for item in shared.next_events()] == [
        "ProtocolViolation", "Stop"]


def test_event_split_over_reads_and_without_newline() -> None:
    conn = ready()
    items: list[Any] = []
    for index in range(0, len(STOP), 7):
        conn.receive_data(STOP[index:index + 7])
        items += drain(conn)
    assert len(items) == 1 and isinstance(items[0], Stop)


def test_pretty_printed_server_output() -> None:
    conn = ClientConnection()
    pretty = (b'{\r\n    "QMP": {\r\n        "version": {\r\n            "qemu": {\r\n'
              b'                "micro": 22,\r\n                "minor": 2,\r\n'
              b'                "major": 7\r\n            },\r\n            "package": ""\r\n'
              b'        },\r\n        "capabilities": [\r\n            "oob"\r\n        ]\r\n'
              b'    }\r\n}\r\n')
    conn.receive_data(pretty)
    (greeting,) = drain(conn)
    assert isinstance(greeting, Greeting) and greeting.capabilities == ["oob"]
    request_id = conn.send_command("qmp_capabilities")
    conn.receive_data(b'{\r\n    "return": {\r\n    },\r\n    "id": "' + request_id.encode()
                      + b'"\r\n}\r\n')
    conn.receive_data(b'{\r\n    "timestamp": {\r\n        "seconds": 5,\r\n'
                      b'        "microseconds": 6\r\n    },\r\n    "event": "STOP"\r\n}\r\n')
    reply, stop = drain(conn)
    assert reply == Reply("qmp_capabilities", request_id, value={})
    assert isinstance(stop, Stop) and stop.stamp == Timestamp(5, 6)
    assert conn.state is ClientState.READY


def test_connection_closed() -> None:
    conn = ready()
    conn.close()
    assert conn.state is ClientState.CLOSED
    with pytest.raises(LocalProtocolError, match="send a command in state CLOSED"):
        conn.send_command("query-status")


# --- rules that live in the core: resync hold, abandoned commands, end of input -----------

def test_resync_holds_events_until_the_status_is_known() -> None:
    conn = ClientConnection(resync=True)
    conn.receive_data(GREETING)
    drain(conn)
    capabilities = conn.send_command("qmp_capabilities")
    conn.data_to_send()
    conn.receive_data(reply_line(capabilities, {}) + STOP + b"\r\n")
    assert drain(conn) == [Reply("qmp_capabilities", capabilities, value={})]
    assert conn.state is ClientState.RESYNCING
    status_request = json.loads(conn.data_to_send())  # sent by the core itself
    assert status_request["execute"] == "query-status"
    conn.receive_data(RESET + b"\r\n" + reply_line(status_request["id"], {"status": "paused"}))
    resynced, stop, reset = drain(conn)
    assert resynced == Resynced({"status": "paused"})
    assert isinstance(stop, Stop) and isinstance(reset, Reset)
    assert conn.state is ClientState.READY  # type: ignore[comparison-overlap]  # the call changed it


def test_resync_hold_is_bounded() -> None:
    conn = ClientConnection(resync=True)
    conn.receive_data(GREETING)
    drain(conn)
    capabilities = conn.send_command("qmp_capabilities")
    conn.receive_data(reply_line(capabilities, {}))
    drain(conn)
    conn.receive_data((STOP + b"\r\n") * HELD_LIMIT)
    items = conn.next_events()
    assert items[0] == Resynced(None) and len(items) == HELD_LIMIT + 1
    assert conn.state is ClientState.READY


def test_a_forgotten_command_leaves_nothing_behind() -> None:
    conn = ready()
    abandoned = conn.send_command("query-status")
    conn.forget(abandoned)
    assert conn.pending == 0
    conn.receive_data(reply_line(abandoned, {}))
    assert drain(conn) == [] and conn.late_replies == 1  # dropped quietly
    conn.receive_data(reply_line(abandoned, {}))
    (violation,) = drain(conn)  # a second reply is the server's fault
    assert isinstance(violation, ProtocolViolation)


def test_forgotten_ids_are_bounded() -> None:
    conn = ready()
    for _ in range(FORGOTTEN_LIMIT * 3):
        conn.forget(conn.send_command("query-status"))
    assert conn.pending == 0 and len(conn._forgotten) == FORGOTTEN_LIMIT


def test_end_of_input_is_an_event_after_everything_received() -> None:
    conn = ready()
    conn.receive_data(STOP + b"\r\n")
    conn.receive_data(b"")
    stop, closed = drain(conn)
    assert isinstance(stop, Stop) and closed == ConnectionClosed()
    assert conn.state is ClientState.CLOSED



def test_end_of_input_hands_out_a_complete_message_held_for_the_next_read() -> None:
    conn = ready()
    request_id = conn.send_command("query-status")
    conn.receive_data(reply_line(request_id, {}).rstrip(b"\r\n") + b' {"ev')
    conn.receive_data(b"")
    items = drain(conn)
    assert items == [Reply("query-status", request_id, value={}), ConnectionClosed()]
