"""Deep, multi-line and non-QMP server messages on the client side (attacker findings).

QEMU's parser takes values nested up to 1024 levels, beyond Python's recursion
limit (1000): every step from the bytes to what the user sees (the exact
parser, the typed model, reports, rendering, records, ``exec``'s output) must
work without recursion per level.  A message QEMU lays out over lines
(``pretty=on``) takes the exact path and keeps its exact text as ``raw``.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qemu_support import QemuProcess, requires_qemu

import qmpevents
from qmpevents.addresses import parse_address
from qmpevents.catalog import (
    BlockIoError,
    Event,
    Stop,
    Timestamp,
    UnknownEvent,
    decode_event,
    event_from_value,
    validate,
)
from qmpevents.cli import exec as exec_cli
from qmpevents.cli import render
from qmpevents.cli.record import Recorder
from qmpevents.client.filters import EventFilter
from qmpevents.codec import MAX_NESTING, Framer, ParseError, ParseErrorKind, encode_json
from qmpevents.errors import EventValidationError, MessageTooLarge
from qmpevents.fleet.spool import SpoolRecord
from qmpevents.protocol import NEED_DATA, ClientConnection, ProtocolViolation, Reply
from qmpevents.protocol.client import EXCERPT_LIMIT
from qmpevents.protocol.messages import decode_line, from_value
from qmpevents.recording import RecordingWriter, decode_with_message, read_recording

GREETING = (b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, '
            b'"package": ""}, "capabilities": ["oob"]}}\r\n')
STOP = b'{"event": "STOP", "timestamp": {"seconds": 1700000000, "microseconds": 5}}'
# QEMU's pretty=on layout, with a member a newer QEMU added.
PRETTY = (b'{\r\n    "timestamp": {\r\n        "seconds": 1700000000,\r\n'
          b'        "microseconds": 2\r\n    },\r\n    "event": "BLOCK_IO_ERROR",\r\n'
          b'    "data": {\r\n        "device": "ide0-hd0",\r\n        "node-name": "#block123",\r\n'
          b'        "operation": "write",\r\n        "action": "stop",\r\n'
          b'        "reason": "No space left",\r\n        "new-member-in-qemu-9": "important"\r\n'
          b'    }\r\n}')


@pytest.fixture(autouse=True)
def default_recursion_limit() -> Iterator[None]:
    """Python's default limit, whatever ran before (the CLI's main raises it): nothing
    here may depend on the limit, so these tests run below the depths they use."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    yield
    sys.setrecursionlimit(before)


def deep(levels: int) -> bytes:
    """A list nested *levels* deep."""
    return b"[" * levels + b"]" * levels


def deep_value(levels: int) -> list[Any]:
    """The value of :func:`deep` (json.loads would recurse too deep)."""
    outer: list[Any] = []
    inner = outer
    for _ in range(levels - 1):
        inner.append([])
        inner = inner[0]
    return outer


# The data's list brings the message to QEMU's limit: {event {data {x [...]}}}.
DEEP_EVENT = (b'{"event": "SHUTDOWN", "timestamp": {"seconds": 1700000000, "microseconds": 5}, '
              b'"data": {"x": ' + deep(MAX_NESTING - 2) + b'}}')


def drain(conn: ClientConnection) -> list[Any]:
    out = []
    while (item := conn.next_event()) is not NEED_DATA:
        out.append(item)
    return out


def ready(max_message_size: int = 64 << 20) -> ClientConnection:
    conn = ClientConnection(max_message_size=max_message_size)
    conn.receive_data(GREETING)
    drain(conn)
    request_id = conn.send_command("qmp_capabilities")
    conn.receive_data(b'{"return": {}, "id": "' + request_id.encode() + b'"}\r\n')
    drain(conn)
    return conn


def receive(data: bytes, *, chunk: int | None = None, budget: int | None = None) -> list[Any]:
    """What a negotiated client hands out for *data*, fed in chunks, parsed in slices."""
    conn = ready()
    step = chunk or len(data)
    for at in range(0, len(data), step):
        conn.receive_data(data[at:at + step], budget=budget)
        while conn.parse_pending:
            conn.continue_parsing(budget)
    return drain(conn)


def depth_of(value: Any) -> int:
    levels = 0
    while isinstance(value, list | dict):
        levels += 1
        value = value[0] if isinstance(value, list) else next(iter(value.values()), None)
        if value == []:
            return levels + 1
    return levels


# --- the exact path gives each message its exact text ---------------------------------


@pytest.mark.parametrize("chunk", [None, 1, 7, 64])
def test_a_pretty_event_keeps_its_exact_text_and_every_member(chunk: int | None) -> None:
    (event,) = receive(PRETTY + b"\r\n", chunk=chunk, budget=5 if chunk else None)
    assert isinstance(event, BlockIoError)
    assert event.raw == PRETTY
    assert json.loads(event.raw)["data"]["new-member-in-qemu-9"] == "important"


@pytest.mark.parametrize("before", [
    b"  \r\n",                      # blanks
    b'"a string with { and ["\r\n',  # a scalar message holding brackets
    b'{"a": "\x01"}\r\n',           # a message cut by a stray byte, then what recovery skips
    b"xyz 'q\r\n",                  # garbage
    b"1",                           # a number ended by the event's first byte
    b'["unfinished", \x01]\r\n',
])
def test_what_came_before_is_not_part_of_an_events_text(before: bytes) -> None:
    items = receive(before + PRETTY + b"\r\n" + STOP + b"\r\n")
    assert [type(item) for item in items][-2:] == [BlockIoError, Stop]
    assert items[-2].raw == PRETTY
    assert items[-1].raw == STOP
    assert all(isinstance(item, ProtocolViolation) for item in items[:-2])


def test_several_messages_on_a_line_each_keep_their_text() -> None:
    one = b'{"event": "X", "timestamp": {"seconds": 1, "microseconds": 2}}'
    items = receive(one + b" " + STOP + b"  " + one + b"\r\n", chunk=3, budget=2)
    assert [item.raw for item in items] == [one, STOP, one]


# --- QEMU's syntax that is not JSON: no raw, so nothing passes it on as JSON ----------

STAMP = b"'timestamp': {'seconds': 1, 'microseconds': 2}"
NOT_JSON = [  # what QEMU's parser takes, and so may a server send
    (b"{'event': 'STOP', " + STAMP + b"}", {}),
    (b'{"event": "X", "data": {"s": "a\xc0\x80b"}, ' + STAMP.replace(b"'", b'"') + b"}",
     {"data": {"s": "a\0b"}}),
    (b'{"event": "X", "data": {"s": "it\\\'s"}, ' + STAMP.replace(b"'", b'"') + b"}",
     {"data": {"s": "it's"}}),
]


def not_json_event(text: bytes) -> Event | UnknownEvent:
    (event,) = receive(text + b"\r\n")
    assert isinstance(event, Event | UnknownEvent)
    return event


def wire(text: bytes, members: dict[str, Any]) -> dict[str, Any]:
    name = "STOP" if b"STOP" in text else "X"
    return {"event": name, "timestamp": {"seconds": 1, "microseconds": 2}, **members}


@pytest.mark.parametrize(("text", "members"), NOT_JSON)
def test_an_event_sent_in_qemus_syntax_has_no_raw_and_renders_as_json(
        text: bytes, members: dict[str, Any]) -> None:
    """``watch --json`` printed the single quotes as sent, and failed on ``C0 80``."""
    event = not_json_event(text)
    assert event.raw is None
    assert json.loads(render.json_line("vm1", event)) == {"vm": "vm1", **wire(text, members)}
    assert json.loads(render.event_json(event)) == wire(text, members)


def test_an_apostrophe_in_a_json_string_keeps_the_raw_of_an_exact_path_event() -> None:
    text = PRETTY.replace(b"No space left", b"it's full")
    (event,) = receive(text + b"\r\n")
    assert event.raw == text


@pytest.mark.parametrize(("text", "members"), NOT_JSON)
async def test_exec_wait_prints_an_event_sent_in_qemus_syntax_as_json(
        text: bytes, members: dict[str, Any], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``exec --wait`` ended with a UnicodeDecodeError traceback on ``C0 80``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        for sent in range(2):  # qmp_capabilities, then the command
            request_id = json.dumps(json.loads(await reader.readline())["id"]).encode()
            if sent:
                writer.write(text + b"\r\n")
            writer.write(b'{"return": {}, "id": ' + request_id + b"}\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    path = str(tmp_path / "qmp.sock")
    async with await asyncio.start_unix_server(serve, path):
        name = wire(text, members)["event"]
        status = await exec_cli._exec(parse_address(f"unix:{path}"), "cont", {}, 5.0, {}, name)
    assert status == 0
    reply, event = capsys.readouterr().out.splitlines()
    assert json.loads(reply) == {}
    assert json.loads(event) == wire(text, members)


@pytest.mark.parametrize(("text", "members"), NOT_JSON)
async def test_record_stores_an_event_sent_in_qemus_syntax_as_its_object(
        text: bytes, members: dict[str, Any], tmp_path: Path) -> None:
    """It was stored as one JSON string of the text received."""
    path = tmp_path / "rec.jsonl"
    writer = RecordingWriter(str(path), fsync="never")
    await Recorder(writer).on_event("vm1", not_json_event(text))
    writer.close()
    (record,) = read_recording(str(path))
    assert record.message_value() == wire(text, members)


# --- nested to QEMU's limit: delivered, with their bytes ------------------------------


@pytest.mark.parametrize("chunk", [None, 100])
def test_an_event_nested_to_qemus_limit_is_delivered_with_its_raw(chunk: int | None) -> None:
    items = receive(DEEP_EVENT + b"\r\n" + STOP + b"\r\n", chunk=chunk, budget=64)
    assert [type(item) for item in items] == [UnknownEvent, Stop]  # SHUTDOWN lacks its members
    event = items[0]
    assert event.raw == DEEP_EVENT
    assert depth_of(event.data["x"]) == MAX_NESTING - 2
    wire = event.to_wire()  # no recursion per level either
    assert encode_json(wire).count("[") == MAX_NESTING - 2


def test_a_reply_nested_to_qemus_limit_is_delivered() -> None:
    conn = ready()
    request_id = conn.send_command("query-status")
    conn.receive_data(b'{"return": ' + deep(MAX_NESTING - 1) + b', "id": "'
                      + request_id.encode() + b'"}\r\n')
    (reply,) = drain(conn)
    assert isinstance(reply, Reply)
    assert depth_of(reply.value) == MAX_NESTING - 1


def test_a_deep_non_qmp_message_is_one_bounded_violation_and_reading_goes_on() -> None:
    items = receive(deep(1000) + b"\r\n" + STOP + b"\r\n")
    assert [type(item) for item in items] == [ProtocolViolation, Stop]
    problem = items[0].problem
    assert problem.startswith("not a QMP message: [[[")
    assert "\n" not in problem and len(problem) < EXCERPT_LIMIT + 50


async def test_the_reader_survives_a_deep_non_qmp_message(tmp_path: Path) -> None:
    """The asyncio reader logged a 'Fatal error' traceback and dropped the connection."""
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        for _ in range(2):  # qmp_capabilities, then the test's command
            request_id = json.dumps(json.loads(await reader.readline())["id"]).encode()
            if _:  # the test listens by now
                writer.write(deep(1000) + b"\r\n" + DEEP_EVENT + b"\r\n" + STOP + b"\r\n")
            writer.write(b'{"return": {}, "id": ' + request_id + b"}\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    path = str(tmp_path / "qmp.sock")
    server = await asyncio.start_unix_server(serve, path)
    async with server, qmpevents.connect(f"unix:{path}") as qmp:
        stopped = qmp.wait_for(Stop, timeout=5)
        async with qmp.listen("SHUTDOWN") as shutdowns:
            assert await qmp.execute("query-status", timeout=5) == {}
            shutdown = await shutdowns.get(timeout=5)
        assert (await stopped).raw == STOP
        assert shutdown.raw == DEEP_EVENT
        assert qmp.warnings.counts.get("protocol") == 1
    assert errors == []


# --- what the CLI makes of deep events and replies ------------------------------------


def deep_event() -> UnknownEvent:
    (event,) = receive(DEEP_EVENT + b"\r\n")
    assert isinstance(event, UnknownEvent)
    return event


def test_watch_renders_a_deep_event() -> None:
    event = deep_event()
    line = render.text_line("vm1", event, colour=False)
    assert line.endswith(" vm1 SHUTDOWN x=" + deep(MAX_NESTING - 2).decode())
    assert render.json_line("vm1", event) == '{"vm": "vm1", ' + DEEP_EVENT[1:].decode()


def test_watch_renders_data_objects_nested_deeper_than_python_recurses() -> None:
    data: dict[str, Any] = {"leaf": 1}
    for _ in range(MAX_NESTING - 2):
        data = {"a": data}
    event = event_from_value({"event": "X", "timestamp": {"seconds": 1, "microseconds": 0},
                              "data": data})
    assert render.summary(event) == "a." * (MAX_NESTING - 2) + "leaf=1"


def test_match_and_render_typed_data_with_a_deep_member() -> None:
    info = deep_value(MAX_NESTING - 2)
    event = event_from_value({"event": "GUEST_PANICKED",
                              "timestamp": {"seconds": 1, "microseconds": 0},
                              "data": {"action": "pause", "info": info}})
    assert not isinstance(event, UnknownEvent)  # typed: its info member is Any
    assert EventFilter(("GUEST_PANICKED",), match={"data.action": "pause"})(event)
    assert not EventFilter(("GUEST_PANICKED",), match={"data.info": []})(event)
    assert render.summary(event) == "action=pause info=" + deep(MAX_NESTING - 2).decode()


def test_json_lines_keep_a_pretty_event_on_one_line() -> None:
    (event,) = receive(PRETTY + b"\r\n")
    line = render.json_line("vm1", event)
    assert "\n" not in line and "\r" not in line
    assert json.loads(line) == {"vm": "vm1", **json.loads(PRETTY)}


def test_records_hold_deep_and_pretty_events_exactly(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    writer = RecordingWriter(str(path), fsync="never")
    for event in (deep_event(), *receive(PRETTY + b"\r\n")):
        assert event.raw is not None
        writer.write("vm1", event.raw)
    writer.close()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 2
    first, second = read_recording(str(path))
    assert first.message_bytes() == DEEP_EVENT
    replayed = decode_event(first.message_bytes())  # what replay does with it
    assert isinstance(replayed, UnknownEvent) and replayed.raw == DEEP_EVENT
    assert json.loads(second.message_bytes()) == json.loads(PRETTY)  # line breaks aside


@pytest.mark.parametrize("tty", [False, True])
def test_exec_prints_a_deep_reply(tty: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    levels = MAX_NESTING - 1
    out = io.StringIO()
    monkeypatch.setattr(out, "isatty", lambda: tty)
    with redirect_stdout(out):
        exec_cli._print_reply({"r": deep_value(levels)})
    text = out.getvalue()
    if tty:  # json.dumps's layout: one bracket per line
        assert text.split() == ["{", '"r":', *["["] * (levels - 1), "[]", *["]"] * (levels - 1),
                                "}"]
    else:
        assert text == '{"r":' + deep(levels).decode() + "}\n"


def test_to_wire_of_a_local_event_with_deep_data() -> None:
    event = Stop(stamp=Timestamp(1, 2), data={"x": deep_value(MAX_NESTING - 2)})
    assert encode_json(event.to_wire()).count("[") == MAX_NESTING - 2


def test_a_spool_record_of_a_deep_event_reads_back() -> None:
    record = SpoolRecord("vm1", 1.5, "event", msgspec.Raw(DEEP_EVENT), "host1", 7, "id-7")
    line = msgspec.json.encode(record) + b"\n"
    back = decode_with_message(msgspec.json.Decoder(SpoolRecord), line)
    assert (back.vm, back.seq, back.id, bytes(back.message)) == ("vm1", 7, "id-7", DEEP_EVENT)
    with pytest.raises(msgspec.DecodeError):
        decode_with_message(msgspec.json.Decoder(SpoolRecord), line.replace(b'"id-7"', b"7"))


# --- over the size limit: refused as soon as it is passed -----------------------------

LIMIT = 1 << 20
CHUNK = 64 * 1024


@pytest.mark.parametrize("negotiated", [False, True])
def test_a_message_over_the_limit_is_refused_when_it_passes_it(negotiated: bool) -> None:
    """A 70 MiB greeting took 40 s of byte-by-byte lexing before MessageTooLarge."""
    conn = ready(LIMIT) if negotiated else ClientConnection(max_message_size=LIMIT)
    start = (b'{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}, "data": {"x": "'
             if negotiated else b'{"QMP": {"version": {"x": "')
    data = start + b"a" * (LIMIT + 4 * CHUNK) + b'"}}}\r\n'
    fed = 0
    with pytest.raises(MessageTooLarge) as refused:
        for at in range(0, len(data), CHUNK):
            conn.receive_data(data[at:at + CHUNK], budget=4096)
            fed += CHUNK
            assert not conn.parse_pending  # nothing left to lex byte by byte
    assert fed <= LIMIT + CHUNK
    assert refused.value.limit == LIMIT


def test_a_framer_skips_a_message_over_the_limit_and_goes_on() -> None:
    """What a client's framer (not QEMU-exact: the recorder's too) gives after it."""
    big = b'{"event": "X", "timestamp": {"seconds": 1, "microseconds": 2}, "data": "' \
        + b"a" * 5000 + b'"}'
    for chunk in (100, len(big) + 10):
        framer: Framer[Any] = Framer(decode_line, from_value, max_message_size=1000)
        data = big + b"\r\n" + STOP + b"\r\n"
        items = [item for at in range(0, len(data), chunk)
                 for item in framer.feed(data[at:at + chunk], budget=64)]
        error, stop = items
        assert isinstance(error, ParseError) and error.kind is ParseErrorKind.TOO_LARGE
        assert isinstance(stop, Stop) and stop.raw == STOP


_MEMBERS = st.dictionaries(st.sampled_from(["a", "b", "new-member", "x y", "{"]),
                           st.one_of(st.integers(), st.text(max_size=5),
                                     st.lists(st.integers(), max_size=3)), max_size=3)
_BEFORE = st.sampled_from([b"", b" ", b"\r\n", b"1 ", b'"{[" ', b"xyz\r\n", b'{"a": "\x01"}\r\n'])


@given(st.lists(st.tuples(_BEFORE, _MEMBERS, st.booleans()), min_size=1, max_size=4),
       st.lists(st.integers(1, 400), max_size=6), st.sampled_from([None, 3, 50]))
@settings(max_examples=150, deadline=None)
def test_every_event_keeps_its_exact_text_whatever_the_splits(
        messages: list[tuple[bytes, dict[str, Any], bool]], cuts: list[int],
        budget: int | None) -> None:
    texts = []
    stream = b""
    for before, data, pretty in messages:
        value = {"event": "X", "timestamp": {"seconds": 1, "microseconds": 2}, "data": data}
        text = json.dumps(value, indent=4 if pretty else None).replace("\n", "\r\n").encode()
        texts.append(text)
        stream += before + text + b"\r\n"
    conn = ready()
    at = 0
    for cut in [*sorted(min(cut, len(stream)) for cut in cuts), len(stream)]:
        if cut > at:
            conn.receive_data(stream[at:cut], budget=budget)
            at = cut
        while conn.parse_pending:
            conn.continue_parsing(budget)
    events = [item for item in drain(conn) if isinstance(item, UnknownEvent)]
    assert [event.raw for event in events] == texts


def test_validate_says_what_is_wrong_with_a_deep_event() -> None:
    with pytest.raises(EventValidationError) as wrong:
        validate(DEEP_EVENT, "qemu-7.2")
    assert "SHUTDOWN" in str(wrong.value)
    info = b'{"event": "GUEST_PANICKED", "timestamp": {"seconds": 1, "microseconds": 2}, ' \
        b'"data": {"action": "pause", "info": ' + deep(MAX_NESTING - 2) + b"}}"
    with pytest.raises(EventValidationError, match=r"\$\.data\.info"):
        validate(info, "qemu-7.2")  # an object of QEMU's schema, not a list


def test_a_reply_to_a_deep_unknown_id_is_one_bounded_violation() -> None:
    items = receive(b'{"return": {}, "id": ' + deep(MAX_NESTING - 1) + b"}\r\n" + STOP + b"\r\n")
    assert [type(item) for item in items] == [ProtocolViolation, Stop]
    assert items[0].problem.startswith("reply to unknown id [[[")
    assert len(items[0].problem) < 100


# --- the witness: real QEMU 7.2 with pretty=on ----------------------------------------


@pytest.mark.qemu
@requires_qemu
async def test_real_qemu_pretty_events_keep_their_exact_bytes() -> None:
    received = bytearray()

    def trace(direction: str, data: bytes) -> None:
        if direction == "in":
            received.extend(data)

    async with QemuProcess(pretty=True) as qemu, \
            qmpevents.connect(f"unix:{qemu.socket_path}", trace=trace) as qmp:
        resumed = qmp.wait_for("RESUME", timeout=10)
        await qmp.execute("cont", timeout=10)
        event = await resumed
        stopped = qmp.wait_for("STOP", timeout=10)
        await qmp.execute("stop", timeout=10)
        stop = await stopped
    for got in (event, stop):
        assert got.raw is not None and b"\r\n    " in got.raw  # laid out over lines
        assert bytes(received).count(got.raw + b"\r\n") == 1  # exactly as QEMU wrote it
    assert (stop.raw or b"").endswith(b'"event": "STOP"\r\n}')
