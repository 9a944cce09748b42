"""The event catalog: typed decoding, tolerance, strict validation, profiles, docs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmpevents import catalog
from qmpevents.catalog import (
    EVENT_TYPES,
    HAND_EVENTS,
    PROFILE_FIELDS,
    PROFILES,
    SPEC_EVENTS,
    BlockIoError,
    Event,
    Reset,
    RtcChange,
    Shutdown,
    Stop,
    Timestamp,
    UnknownEvent,
    VncConnected,
    VncDisconnected,
    VncInitialized,
    build_event,
    catalog_markdown,
    decode_event,
    shape_data,
    validate,
)
from qmpevents.codec import encode_message
from qmpevents.errors import EventValidationError
from qmpevents.qapi import qemu72_schema

T = TypeVar("T", bound=Event)

# The spec documents live in shared/spec beside the repository (as in CI).
SPEC_DIR = Path(__file__).resolve().parents[2] / "shared" / "spec"
SPEC = SPEC_DIR / "qmp-events.txt"
WIRE = SPEC_DIR / "qemu-7.2-wire.md"


def spec_examples() -> dict[str, bytes]:
    """Every ``Example:`` of the spec, keyed by its section, as one compact line."""
    text = SPEC.read_text()
    examples: dict[str, bytes] = {}
    for match in re.finditer(r"^([A-Z_]+)\n-+\n(.*?)(?=^[A-Z_]+\n-+\n|\Z)", text, re.M | re.S):
        name, body = match.groups()
        example = body.split("Example:", 1)[1]
        start = example.index("{")
        value, _ = json.JSONDecoder().raw_decode(example[start:])
        if name == "STOP":  # the spec's erratum: its STOP example says SHUTDOWN
            assert value["event"] == "SHUTDOWN"
            value["event"] = "STOP"
        examples[name] = json.dumps(value).encode()
    return examples


def wire_lines() -> list[bytes]:
    lines = [line for line in WIRE.read_text().splitlines()
             if line.startswith('{"timestamp"')]
    return [line.encode() for line in lines]


EXAMPLES = spec_examples()
WIRE_LINES = wire_lines()


def test_spec_has_the_eight_events() -> None:
    assert sorted(EXAMPLES) == sorted(SPEC_EVENTS)
    assert len(WIRE_LINES) == 15


# --- decoding: typed, with the right values ---------------------------------------------

def test_spec_examples_decode_to_typed_events() -> None:
    got = {name: decode_event(line) for name, line in EXAMPLES.items()}
    bio = got["BLOCK_IO_ERROR"]
    assert isinstance(bio, BlockIoError)
    assert (bio.data.device, bio.data.operation, bio.data.action) == ("ide0-hd1", "write", "stop")
    assert bio.data.node_name is None and bio.data.nospace is None
    assert bio.stamp == Timestamp(1265044230, 450486)
    assert bio.timestamp == pytest.approx(1265044230.450486)
    reset = got["RESET"]
    assert isinstance(reset, Reset) and reset.data is None
    assert reset.stamp == Timestamp(1267041653, 9518)
    rtc = got["RTC_CHANGE"]
    assert isinstance(rtc, RtcChange) and rtc.data.offset == 78 and rtc.data.qom_path is None
    assert isinstance(got["SHUTDOWN"], Shutdown) and got["SHUTDOWN"].data is None
    stop = got["STOP"]
    assert isinstance(stop, Stop) and stop.name == "STOP"
    assert stop.stamp == Timestamp(1267041730, 281295)
    conn = got["VNC_CONNECTED"]
    assert isinstance(conn, VncConnected)
    assert conn.data.server.auth == "sasl" and conn.data.server.host == "0.0.0.0"
    assert conn.data.server.service == "5901" and conn.data.client.service == "58425"
    assert conn.data.client.family == "ipv4" and conn.data.client.sasl_username is None
    disc = got["VNC_DISCONNECTED"]
    assert isinstance(disc, VncDisconnected) and disc.data.client.sasl_username == "luiz"
    init = got["VNC_INITIALIZED"]
    assert isinstance(init, VncInitialized) and init.data.client.service == "46089"
    assert init.stamp == Timestamp(1263475302, 150772)
    for name, event in got.items():
        assert event.name == name
        assert event.raw == EXAMPLES[name]


@pytest.mark.parametrize("name", SPEC_EVENTS)
def test_spec_examples_validate_in_the_seed_profile(name: str) -> None:
    validate(EXAMPLES[name], "seed")
    validate(decode_event(EXAMPLES[name]), "seed")


def _typed(event: Event | UnknownEvent, cls: type[T]) -> T:
    """*event*, checked to be of *cls* (for the type checker: no cast)."""
    assert isinstance(event, cls)
    return event


def test_wire_doc_lines_decode_to_typed_events() -> None:
    events = [decode_event(line) for line in WIRE_LINES]
    names = [event.name for event in events]
    assert names == ["RESUME", "STOP", "RESET", "RESET", "POWERDOWN", "SHUTDOWN", "SHUTDOWN",
                     "RTC_CHANGE", "BLOCK_IO_ERROR", "BLOCK_IO_ERROR", "BLOCK_IO_ERROR",
                     "BLOCK_IO_ERROR", "VNC_CONNECTED", "VNC_INITIALIZED", "VNC_DISCONNECTED"]
    for event in events:
        assert type(event) is EVENT_TYPES[event.name]
    resume, stop, powerdown = events[0], events[1], events[4]
    assert resume.data is None and powerdown.data is None and stop.data is None
    reset_host, reset_guest = _typed(events[2], Reset), _typed(events[3], Reset)
    quit_, guest_off = _typed(events[5], Shutdown), _typed(events[6], Shutdown)
    assert reset_host.data is not None and reset_guest.data is not None
    assert quit_.data is not None and guest_off.data is not None
    rtc = _typed(events[7], RtcChange)
    assert stop.stamp == Timestamp(1795701760, 257350)
    assert (reset_host.data.guest, reset_host.data.reason) == (False, "host-qmp-system-reset")
    assert (reset_guest.data.guest, reset_guest.data.reason) == (True, "guest-reset")
    assert (quit_.data.guest, quit_.data.reason) == (False, "host-qmp-quit")
    assert (guest_off.data.guest, guest_off.data.reason) == (True, "guest-shutdown")
    assert (rtc.data.offset, rtc.data.qom_path) == (97754175, "/machine/unattached/device[9]")
    stop_fmt, report, ignore, enospc = (_typed(event, BlockIoError) for event in events[8:12])
    assert stop_fmt.data == catalog.BlockIoErrorData(
        device="", operation="write", action="stop", node_name="d_stop-fmt",
        reason="Input/output error", nospace=False)
    assert (report.data.device, report.data.node_name, report.data.action,
            report.data.nospace) == ("d_report", "#block290", "report", None)
    assert (ignore.data.operation, ignore.data.action) == ("read", "ignore")
    assert enospc.data.nospace is True and enospc.data.reason == "No space left on device"
    conn = _typed(events[12], VncConnected)
    assert conn.data.server == catalog.VncServerInfo(
        host="127.0.0.1", service="5910", family="ipv4", auth="none", websocket=False)
    assert conn.data.client == catalog.VncClientInfo(
        host="127.0.0.1", service="44302", family="ipv4", websocket=False)
    assert all(event.raw == line for event, line in zip(events, WIRE_LINES, strict=True))


@pytest.mark.parametrize("index", range(15))
def test_wire_doc_lines_validate_in_the_qemu72_profile(index: int) -> None:
    validate(WIRE_LINES[index], "qemu-7.2")


def test_wire_doc_lines_are_not_seed_lines() -> None:
    for line in WIRE_LINES:
        if b'"STOP"' in line:
            validate(line, "seed")
            continue
        with pytest.raises(EventValidationError):
            validate(line, "seed")


# --- tolerance --------------------------------------------------------------------------

TS = b'"timestamp": {"seconds": 5, "microseconds": 6}'


def test_unknown_field_keeps_the_typed_class_and_the_raw_line() -> None:
    line = (b'{' + TS + b', "event": "RTC_CHANGE", "data": {"offset": -3, "new": [1, {}]},'
            b' "top": true}')
    event = decode_event(line)
    assert isinstance(event, RtcChange)
    assert event.data.offset == -3
    assert event.raw == line
    assert json.loads(event.raw)["data"]["new"] == [1, {}]


def test_unknown_event_keeps_raw_data() -> None:
    line = b'{' + TS + b', "event": "MEMORY_FAILURE", "data": {"action": "ignore", "n": [1]}}'
    event = decode_event(line)
    assert isinstance(event, UnknownEvent)
    assert event.name == "MEMORY_FAILURE"
    assert event.data == {"action": "ignore", "n": [1]}
    assert event.stamp == Timestamp(5, 6) and event.raw == line
    no_data = decode_event(b'{' + TS + b', "event": "NEW"}')
    assert isinstance(no_data, UnknownEvent) and no_data.data is None


def test_known_event_of_unexpected_shape_is_unknown_not_an_error() -> None:
    line = b'{' + TS + b', "event": "RESET", "data": {"guest": "yes", "reason": 1}}'
    event = decode_event(line)
    assert isinstance(event, UnknownEvent) and event.name == "RESET"
    assert event.data == {"guest": "yes", "reason": 1}


def test_not_an_event_at_all_raises_decode_error() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_event(b"[1, 2]")
    with pytest.raises(msgspec.DecodeError):
        decode_event(b"{not json")


def test_event_from_value_matches_decode_event() -> None:
    for line in [*WIRE_LINES, *EXAMPLES.values()]:
        assert catalog.event_from_value(json.loads(line)) == decode_event(line)
    unknown = {"event": "X", "timestamp": {"seconds": 1, "microseconds": 0}}
    assert isinstance(catalog.event_from_value(unknown, raw=b"r"), UnknownEvent)
    assert catalog.event_from_value(unknown, raw=b"r").raw == b"r"


def test_timestamp_float_conversion() -> None:
    stamp = Timestamp.from_float(1267041653.009518)
    assert stamp == Timestamp(1267041653, 9518)
    assert stamp.as_float == pytest.approx(1267041653.009518)


def test_to_wire_omits_absent_data() -> None:
    stop = decode_event(EXAMPLES["STOP"])
    assert "data" not in stop.to_wire()
    line = WIRE_LINES[1]
    assert encode_message(decode_event(line).to_wire()) == line + b"\r\n"


# --- strict validation ------------------------------------------------------------------

def problem(line: bytes, profile: catalog.Profile) -> str:
    with pytest.raises(EventValidationError) as info:
        validate(line, profile)
    return str(info.value)


def bio(data: bytes) -> bytes:
    return b'{' + TS + b', "event": "BLOCK_IO_ERROR", "data": ' + data + b'}'


def test_validate_missing_member() -> None:
    line = bio(b'{"device": "d", "operation": "write"}')
    assert problem(line, "seed") == (
        "BLOCK_IO_ERROR: Object missing required field `action` - at `$.data`")
    assert "missing required field `node-name` - at `$.data`" in problem(line, "qemu-7.2")


def test_validate_unknown_member_with_path() -> None:
    line = bio(b'{"device": "d", "operation": "write", "action": "stop", "nospace": true}')
    assert problem(line, "seed") == (
        "BLOCK_IO_ERROR: Object contains unknown field `nospace` - at `$.data`")
    vnc = (b'{' + TS + b', "event": "VNC_CONNECTED", "data": {"server": {"host": "h", '
           b'"service": "1", "family": "ipv4", "bogus": 1}, "client": {"host": "h", '
           b'"service": "2", "family": "ipv4"}}}')
    assert problem(vnc, "seed") == (
        "VNC_CONNECTED: Object contains unknown field `bogus` - at `$.data.server`")


def test_validate_wrong_type_and_bad_enum() -> None:
    rtc = b'{' + TS + b', "event": "RTC_CHANGE", "data": {"offset": "x"}}'
    assert problem(rtc, "seed") == "RTC_CHANGE: Expected `int`, got `str` - at `$.data.offset`"
    line = bio(b'{"device": "d", "operation": "wrote", "action": "stop"}')
    assert problem(line, "seed") == (
        "BLOCK_IO_ERROR: Invalid enum value 'wrote' - at `$.data.operation`")


def test_validate_event_not_in_profile() -> None:
    resume = b'{' + TS + b', "event": "RESUME"}'
    assert problem(resume, "seed") == "RESUME: not an event of the seed profile"
    validate(resume, "qemu-7.2")
    unknown = b'{' + TS + b', "event": "NEW_EVENT"}'
    assert problem(unknown, "qemu-7.2") == "NEW_EVENT: not an event of the qemu-7.2 profile"


def test_validate_data_where_none_is_allowed() -> None:
    reset = b'{' + TS + b', "event": "RESET", "data": {"guest": true, "reason": "x"}}'
    assert problem(reset, "seed") == "RESET: Object contains unknown field `data`"
    assert "missing required field `data`" in problem(b'{' + TS + b', "event": "RESET"}',
                                                      "qemu-7.2")


def test_validate_not_an_event() -> None:
    assert problem(b"[1]", "seed") == "?: not a JSON object"
    assert problem(b'{"event": "STOP"}', "seed") == (
        "STOP: Object missing required field `timestamp`")


def test_validate_a_locally_built_event() -> None:
    event = catalog.event_from_value(json.loads(WIRE_LINES[0]))
    validate(event, "qemu-7.2")
    with pytest.raises(EventValidationError, match="not an event of the seed profile"):
        validate(event, "seed")


# --- profiles, shaping, round trip ------------------------------------------------------

RICH: dict[str, dict[str, Any]] = {
    "BLOCK_IO_ERROR": {"device": "d", "node-name": "n", "operation": "read", "action": "report",
                       "reason": "r", "nospace": True},
    "RESET": {"guest": True, "reason": "guest-reset"},
    "RTC_CHANGE": {"offset": 5, "qom-path": "/machine/rtc"},
}


def test_shape_data_drops_what_a_profile_lacks() -> None:
    assert shape_data("BLOCK_IO_ERROR", RICH["BLOCK_IO_ERROR"], "seed") == {
        "device": "d", "operation": "read", "action": "report"}
    assert shape_data("BLOCK_IO_ERROR", RICH["BLOCK_IO_ERROR"], "qemu-7.2") == RICH[
        "BLOCK_IO_ERROR"]
    no_nospace = {**RICH["BLOCK_IO_ERROR"], "nospace": None}
    assert "nospace" not in shape_data("BLOCK_IO_ERROR", no_nospace, "qemu-7.2")
    assert shape_data("RESET", RICH["RESET"], "seed") is None
    assert shape_data("RESET", RICH["RESET"], "qemu-7.2") == RICH["RESET"]
    assert shape_data("RTC_CHANGE", RICH["RTC_CHANGE"], "seed") == {"offset": 5}
    vnc = {"server": {"host": "h", "service": "1", "family": "ipv4", "websocket": False,
                      "auth": "none"},
           "client": {"host": "c", "service": "2", "family": "ipv6", "websocket": True,
                      "sasl_username": "u"}}
    assert shape_data("VNC_CONNECTED", vnc, "seed") == {
        "server": {"host": "h", "service": "1", "family": "ipv4", "auth": "none"},
        "client": {"host": "c", "service": "2", "family": "ipv6"}}
    assert shape_data("VNC_INITIALIZED", vnc, "seed")["client"]["sasl_username"] == "u"
    with pytest.raises(KeyError):
        shape_data("RESUME", None, "seed")


def test_profiles_list_their_events() -> None:
    assert set(catalog.events_of("seed")) == set(SPEC_EVENTS)
    # every event of QEMU 7.2's schema, as introspected from the installed QEMU
    assert set(catalog.events_of("qemu-7.2")) == set(qemu72_schema().event_names())
    assert {*SPEC_EVENTS, "RESUME", "POWERDOWN"} <= set(catalog.events_of("qemu-7.2"))
    assert set(EVENT_TYPES) == set(catalog.events_of("qemu-7.2"))


def test_catalog_markdown_lists_every_event() -> None:
    table = catalog_markdown()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert sorted(names) == sorted(str(cls.__struct_config__.tag) for cls in HAND_EVENTS)
    schema_events = table.split("from QEMU's schema (members as the schema defines them): ")[1]
    assert sorted([*names, *schema_events.strip().rstrip(".").split(", ")]) == sorted(EVENT_TYPES)
    assert f"{len(EVENT_TYPES)} of QEMU 7.2's {len(qemu72_schema().event_names())}" in table
    assert names[:len(SPEC_EVENTS)] == sorted(SPEC_EVENTS)
    resume = next(row for row in rows if row.startswith("| RESUME "))
    assert "(not emitted)" in resume
    assert "`nospace`?" in next(row for row in rows if row.startswith("| BLOCK_IO_ERROR "))


_texts = st.text(max_size=12)
_vnc_server = st.fixed_dictionaries(
    {"host": _texts, "service": st.integers(0, 65535).map(str),
     "family": st.sampled_from(catalog.ENUMS["family"]), "websocket": st.booleans()},
    optional={"auth": st.sampled_from(["none", "vnc", "sasl"])})
_vnc_client = st.fixed_dictionaries(
    {"host": _texts, "service": st.integers(0, 65535).map(str),
     "family": st.sampled_from(catalog.ENUMS["family"]), "websocket": st.booleans()},
    optional={"x509_dname": _texts, "sasl_username": _texts})
_guest = st.fixed_dictionaries({"guest": st.booleans(), "reason": _texts})
DATA: dict[str, st.SearchStrategy[Any]] = {
    "BLOCK_IO_ERROR": st.fixed_dictionaries(
        {"device": _texts, "node-name": _texts, "reason": _texts,
         "operation": st.sampled_from(catalog.ENUMS["operation"]),
         "action": st.sampled_from(catalog.ENUMS["action"])},
        optional={"nospace": st.booleans()}),
    "RESET": _guest, "SHUTDOWN": _guest,
    "RTC_CHANGE": st.fixed_dictionaries({"offset": st.integers(-(2**63), 2**63 - 1),
                                         "qom-path": _texts}),
    "STOP": st.none(), "RESUME": st.none(), "POWERDOWN": st.none(),
    "VNC_CONNECTED": st.fixed_dictionaries({"server": _vnc_server, "client": _vnc_client}),
    "VNC_INITIALIZED": st.fixed_dictionaries({"server": _vnc_server, "client": _vnc_client}),
    "VNC_DISCONNECTED": st.fixed_dictionaries({"server": _vnc_server, "client": _vnc_client}),
}


@st.composite
def events(draw: st.DrawFn) -> tuple[str, Any, Timestamp, catalog.Profile]:
    profile = draw(st.sampled_from(PROFILES))
    # the hand-checked events; the schema's are checked against real QEMU's (test_catalog_qemu)
    name = draw(st.sampled_from([n for n in catalog.events_of(profile) if n in DATA]))
    stamp = Timestamp(draw(st.integers(0, 2**40)), draw(st.integers(0, 999_999)))
    return name, draw(DATA[name]), stamp, profile


@pytest.mark.fuzz
@settings(max_examples=500, deadline=None)
@given(events())
def test_encode_decode_round_trip(case: tuple[str, Any, Timestamp, catalog.Profile]) -> None:
    name, data, stamp, profile = case
    wire = build_event(name, data, stamp, profile)
    line = encode_message(wire)
    assert line.endswith(b"\r\n") and line.isascii()
    body = line[:-2]
    validate(body, profile)
    event = decode_event(body)
    assert type(event) is EVENT_TYPES[name]
    assert isinstance(event, Event)
    assert event.stamp == stamp and event.raw == body
    assert event.to_wire() == wire
    assert encode_message(event.to_wire()) == line
    validate(event, profile)
    shaped = shape_data(name, data, profile)
    if shaped is None:
        assert event.data is None and b'"data"' not in body
    else:
        assert msgspec.to_builtins(event.data) == shaped
    if profile == "seed" and PROFILE_FIELDS["seed"][name] != PROFILE_FIELDS["qemu-7.2"][name]:
        with pytest.raises(EventValidationError):
            validate(body, "qemu-7.2")


def _schema_table(type_name: str) -> dict[str, Any]:
    schema = qemu72_schema()
    table: dict[str, Any] = {}
    for member in schema.members(type_name):
        entry = schema[member.type]
        nested = entry["meta-type"] == "object" and "variants" not in entry
        table[member.name] = _schema_table(member.type) if nested else not member.optional
    return table


#: Where the hand-checked qemu-7.2 shape is stricter than the schema: members the
#: schema calls optional that QEMU 7.2 always sends (tests/data/qemu72_wire_events.txt).
ALWAYS_SENT = {("BLOCK_IO_ERROR", "node-name")}


@pytest.mark.parametrize("name", [str(cls.__struct_config__.tag) for cls in HAND_EVENTS])
def test_hand_checked_shapes_agree_with_qemus_schema(name: str) -> None:
    data_type = qemu72_schema().event_data_type(name)
    hand = PROFILE_FIELDS["qemu-7.2"][name]
    if data_type is None:
        assert hand is None
        return
    schema_table = _schema_table(data_type)
    for event, member in ALWAYS_SENT:
        if event == name:
            schema_table[member] = True
    assert hand == schema_table


def test_raw_is_no_part_of_equality_repr_or_encoding_and_cannot_be_reassigned() -> None:
    """Two servers' spellings of one event are the same event; raw tells them apart."""
    compact = b'{"timestamp":{"seconds":5,"microseconds":6},"event":"STOP"}'
    spaced = b'{"event": "STOP", "timestamp": {"seconds": 5, "microseconds": 6}}'
    first, second = decode_event(compact), decode_event(spaced)
    assert first == second and hash(first) == hash(second) and repr(first) == repr(second)
    assert (first.raw, second.raw) == (compact, spaced)
    assert b"raw" not in msgspec.json.encode(first) and "raw" not in first.to_wire()
    with pytest.raises(AttributeError):
        first.raw = spaced  # type: ignore[misc]
    with pytest.raises(AttributeError):
        first._raw = spaced
    assert first.raw == compact
    assert msgspec.structs.replace(first).raw is None  # a copy is not what was received
