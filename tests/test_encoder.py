"""Output byte-exact with QEMU 7.2 (``qobject/qjson.c``), checked against the wire doc."""

from __future__ import annotations

import json
import random
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmpevents.codec import encode_json, encode_message, qdict_order, value_framer

SURROGATES: tuple[Literal["Cs"]] = ("Cs",)  # no lone surrogates: not UTF-8


def reversed_dict(value: dict[str, Any]) -> dict[str, Any]:
    return dict(reversed(value.items()))


# --- key order: QDict's hash order, whatever the insertion order -----------------------

@pytest.mark.parametrize(("value", "expected"), [
    ({"id": 1, "return": {}}, '{"return": {}, "id": 1}'),
    ({"error": {"desc": "d", "class": "GenericError"}, "id": "x"},
     '{"id": "x", "error": {"class": "GenericError", "desc": "d"}}'),
    ({"event": "STOP", "timestamp": {"microseconds": 257350, "seconds": 1795701760}},
     '{"timestamp": {"seconds": 1795701760, "microseconds": 257350}, "event": "STOP"}'),
    ({"data": {}, "event": "X", "timestamp": {"seconds": 1, "microseconds": 2}},
     '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "X", "data": {}}'),
    ({"reason": "guest-reset", "guest": True}, '{"guest": true, "reason": "guest-reset"}'),
    ({"qom-path": "/machine/unattached/device[9]", "offset": 97754175},
     '{"offset": 97754175, "qom-path": "/machine/unattached/device[9]"}'),
])
def test_qemu_key_order(value: dict[str, Any], expected: str) -> None:
    assert encode_json(value) == expected
    assert encode_json(reversed_dict(value)) == expected


def test_query_status_order_in_schema_insertion_order() -> None:
    # "status" and "singlestep" share a QDict bucket: the newest comes first, so
    # QEMU's output follows from inserting in the QAPI schema's member order.
    from qmpevents.codec.encoder import qdict_bucket
    assert qdict_bucket("status") == qdict_bucket("singlestep")
    value = {"running": False, "singlestep": False, "status": "prelaunch"}
    assert encode_json(value) == '{"status": "prelaunch", "singlestep": false, "running": false}'


WIRE_EVENT_LINES = [
    '{"timestamp": {"seconds": 1795701831, "microseconds": 867401}, "event": "BLOCK_IO_ERROR", '
    '"data": {"device": "", "nospace": false, "node-name": "d_stop-fmt", '
    '"reason": "Input/output error", "operation": "write", "action": "stop"}}',
    '{"timestamp": {"seconds": 1795701832, "microseconds": 379698}, "event": "BLOCK_IO_ERROR", '
    '"data": {"device": "d_report", "node-name": "#block290", "reason": "Input/output error", '
    '"operation": "write", "action": "report"}}',
    '{"timestamp": {"seconds": 1795701768, "microseconds": 625917}, "event": "VNC_CONNECTED", '
    '"data": {"server": {"auth": "none", "family": "ipv4", "service": "5910", '
    '"host": "127.0.0.1", "websocket": false}, "client": {"family": "ipv4", '
    '"service": "44302", "host": "127.0.0.1", "websocket": false}}}',
    '{"timestamp": {"seconds": 1795701761, "microseconds": 263744}, "event": "RESET", '
    '"data": {"guest": false, "reason": "host-qmp-system-reset"}}',
    '{"timestamp": {"seconds": 1795701825, "microseconds": 592898}, "event": "RTC_CHANGE", '
    '"data": {"offset": 97754175, "qom-path": "/machine/unattached/device[9]"}}',
    '{"timestamp": {"seconds": 1795701763, "microseconds": 852441}, "event": "POWERDOWN"}',
]


def sorted_deep(value: Any) -> Any:
    """The same value with every dict's keys in alphabetical insertion order."""
    if isinstance(value, dict):
        return {key: sorted_deep(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [sorted_deep(item) for item in value]
    return value


@pytest.mark.parametrize("line", WIRE_EVENT_LINES)
def test_wire_doc_event_lines_are_reproduced_byte_for_byte(line: str) -> None:
    value = sorted_deep(json.loads(line))
    assert encode_message(value) == line.encode() + b"\r\n"


def test_spec_vnc_example_order_with_sasl_username() -> None:
    # The spec document's VNC_DISCONNECTED example (QDict order, same hash).
    client = {"sasl_username": "luiz", "host": "127.0.0.1", "service": "58425",
              "family": "ipv4"}
    assert encode_json(client) == ('{"family": "ipv4", "service": "58425", '
                                   '"host": "127.0.0.1", "sasl_username": "luiz"}')
    server = {"host": "0.0.0.0", "service": "5901", "family": "ipv4", "auth": "sasl"}
    assert encode_json(server) == ('{"auth": "sasl", "family": "ipv4", "service": "5901", '
                                   '"host": "0.0.0.0"}')


def test_greeting_bytes() -> None:
    greeting = {"QMP": {"capabilities": ["oob"], "version": {
        "package": "Debian 1:7.2+dfsg-7+deb12u18+b3",
        "qemu": {"major": 7, "minor": 2, "micro": 22}}}}
    assert encode_message(greeting) == (
        b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, '
        b'"package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}\r\n')


def test_qdict_order_breaks_bucket_ties_newest_first() -> None:
    # Keys of one bucket come out newest first (QLIST_INSERT_HEAD).
    from qmpevents.codec.encoder import qdict_bucket
    seen: dict[int, str] = {}
    pair = None
    for index in range(5000):
        key = f"k{index}"
        bucket = qdict_bucket(key)
        if bucket in seen:
            pair = (seen[bucket], key)
            break
        seen[bucket] = key
    assert pair is not None
    assert qdict_order(list(pair)) == [pair[1], pair[0]]
    assert qdict_order([pair[1], pair[0]]) == [pair[0], pair[1]]


# --- lines, separators, escapes ---------------------------------------------------------

def test_crlf_line_and_separators() -> None:
    line = encode_message({"return": [1, {"a": None}], "id": 3})
    assert line == b'{"return": [1, {"a": null}], "id": 3}\r\n'
    assert line.count(b"\r\n") == 1 and line.endswith(b"\r\n")


def test_empty_containers() -> None:
    assert encode_json({}) == "{}"
    assert encode_json([]) == "[]"
    assert encode_message({"return": {}}) == b'{"return": {}}\r\n'
    assert encode_json({"return": [[], {}]}) == '{"return": [[], {}]}'


@pytest.mark.parametrize(("text", "expected"), [
    ("\u00e9\u2603\U0001F600", '"\\u00E9\\u2603\\uD83D\\uDE00"'),
    ("\x7f", '"\\u007F"'),
    ("\x00\x01\x1f", '"\\u0000\\u0001\\u001F"'),
    ("a/b", '"a/b"'),
    ('"\\\t\n\r\b\f', '"\\"\\\\\\t\\n\\r\\b\\f"'),
    ("\ud800", '"\\uFFFD"'),
    ("\uffff", '"\\uFFFF"'),
    ("plain ~ text", '"plain ~ text"'),
])
def test_string_escapes(text: str, expected: str) -> None:
    assert encode_json(text) == expected
    assert encode_message(text).isascii()


@pytest.mark.parametrize(("number", "expected"), [
    (1.0, "1"),
    (1.5, "1.5"),
    (-2.5, "-2.5"),
    (0.1, "0.10000000000000001"),
    (18446744073709551616.0, "1.8446744073709552e+19"),
    (1e-7, "9.9999999999999995e-08"),
    (0.0, "0"),
    (42, "42"),
    (-(2**63), "-9223372036854775808"),
    (2**64 - 1, "18446744073709551615"),
])
def test_numbers(number: float, expected: str) -> None:
    assert encode_json(number) == expected


def test_keywords_and_tuples() -> None:
    assert encode_json([True, False, None, (1, 2)]) == "[true, false, null, [1, 2]]"


def test_unencodable_type_is_refused() -> None:
    with pytest.raises(TypeError):
        encode_json({"a": {1, 2}})


# --- round trip through QEMU's parser ----------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=SURROGATES), max_size=10),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=15,
)


def _qemu_text(value: Any) -> bool:
    """Strings QEMU's parser accepts back (no noncharacters)."""
    if isinstance(value, str):
        return all(not (0xFDD0 <= ord(c) <= 0xFDEF or (ord(c) & 0xFFFE) == 0xFFFE)
                   for c in value)
    if isinstance(value, list):
        return all(_qemu_text(item) for item in value)
    if isinstance(value, dict):
        return all(_qemu_text(key) and _qemu_text(item) for key, item in value.items())
    return True


@pytest.mark.fuzz
@settings(max_examples=400, deadline=None)
@given(json_values)
def test_encoded_line_is_ascii_and_parses_back(value: Any) -> None:
    line = encode_message(value)
    assert line.isascii()
    assert line.endswith(b"\r\n") and b"\n" not in line[:-2] and b"\r" not in line[:-2]
    if not _qemu_text(value):
        return
    out = value_framer().feed(line)
    assert out == [value]
    # Python's json agrees on the value (it is real JSON).
    assert json.loads(line) == value


# --- a peer's huge strings and keys --------------------------------------------------------

def _tdb_hash_bucket(key: str) -> int:
    """QEMU's tdb_hash as written (util/qdict.c), byte by byte, modulo the buckets,
    over the key as QEMU holds it: U+0000 as C0 80 (witnessed against real QEMU in
    test_robust_replies)."""
    data = key.encode("utf-8", "surrogatepass").replace(b"\x00", b"\xc0\x80")
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, byte in enumerate(data):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return ((1103515243 * value + 12345) & 0xFFFFFFFF) % 512


def _random_text(rng: random.Random, size: int) -> str:
    pools = [(0x20, 0x7E), (0x00, 0x1F), (0x7F, 0xFF), (0x100, 0xD7FF), (0xD800, 0xDFFF),
             (0xE000, 0xFFFF), (0x10000, 0x10FFFF)]
    chars = []
    for _ in range(size):
        low, high = rng.choice(pools)
        chars.append(chr(rng.randint(low, high)))
    return "".join(chars)


def test_a_keys_bucket_at_any_length_is_tdb_hashs() -> None:
    from qmpevents.codec.encoder import qdict_bucket
    rng = random.Random(5)
    for size in [*range(60), 255, 256, 257, 1000, 5000]:
        key = _random_text(rng, size)
        assert qdict_bucket(key) == _tdb_hash_bucket(key), size
