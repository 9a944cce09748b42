"""Fuzzing the codec and both QMP state machines against QEMU's exact algorithm.

For every input -- hypothesis-generated (malformed JSON, truncated messages,
invalid UTF-8, huge numbers, deep nesting) and a seeded mutation fuzzer of
valid QMP messages for volume -- fed in random splits or one byte at a time:

* no exception escapes the server or the client state machine;
* the server answers exactly the messages QEMU's lexer/streamer/parser finds,
  each with the reply QEMU gives (parse errors with QEMU's texts);
* after the input, a valid command gets its normal reply (the monitor works).

The number of inputs tried is reported as a figure.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from robust_support import (
    COMMAND_SEEDS,
    SERVER_SEEDS,
    TRAILER,
    Mutator,
    answer_all,
    expected_replies,
    feed_split,
    reference,
    server,
)

from qmpevents.codec import ParseError, value_framer
from qmpevents.protocol import ClientConnection, ClientState

pytestmark = pytest.mark.fuzz

COUNTS: Counter[str] = Counter()
MUTATION_SERVER_INPUTS = 60_000
MUTATION_CLIENT_INPUTS = 25_000
FUZZ = settings(max_examples=1500, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

AFTER = b'{"return": {}, "id": "after"}\r\n'


def check_server(data: bytes, cuts: list[int], *, negotiated: bool = True,
                 byte_by_byte: bool = False) -> None:
    """One input through a fresh monitor; replies compared with the reference."""
    stream = data + TRAILER
    conn = server(negotiated)
    if byte_by_byte:
        for index in range(len(stream)):
            conn.receive_data(stream[index:index + 1])
    else:
        feed_split(conn.receive_data, stream, cuts)
    got = answer_all(conn)
    want = expected_replies(reference(stream), negotiated)
    assert got == want, (data, cuts)
    if negotiated:
        assert got[-1] == AFTER
    assert b'"id": "after"' in got[-1]
    assert conn.buffered_bytes == 0 and conn.pending_requests == 0
    COUNTS["server runs"] += 1


def ready_client() -> ClientConnection:
    client = ClientConnection()
    client.receive_data(SERVER_SEEDS[0] + b"\r\n")
    client.next_events()
    request_id = client.send_command("qmp_capabilities")
    client.receive_data(b'{"return": {}, "id": "%s"}\r\n' % request_id.encode())
    client.next_events()
    assert client.state is ClientState.READY
    return client


CLIENT_TRAILER = (b'\n\xff\n{"timestamp": {"seconds": 1, "microseconds": 2}, '
                  b'"event": "RESUME"}\r\n')


def check_client(data: bytes, cuts: list[int]) -> None:
    """One input from a hostile server: one client item per message, then an event."""
    stream = data + CLIENT_TRAILER
    client = ready_client()
    items: list[object] = []

    def feed(chunk: bytes) -> None:
        client.receive_data(chunk)
        items.extend(client.next_events())

    feed_split(feed, stream, cuts)
    messages = reference(stream)
    # The client is lenient where QEMU is strict (msgspec takes "0e0", duplicate
    # keys, lone surrogates: things QEMU never sends), so a message QEMU's
    # parser rejects may be one item here.  Valid input must match exactly.
    if not any(isinstance(message, ParseError) for message in messages):
        assert len(items) == len(messages), (data, cuts, items, messages)
    else:
        assert 1 <= len(items) <= len(messages), (data, cuts, items, messages)
    last = items[-1]
    assert getattr(last, "name", None) == "RESUME", last
    COUNTS["client runs"] += 1


# -- hypothesis: shapes of bad input -----------------------------------------

JSONISH = st.text(alphabet="{}[]:,\"'\\ \n\t0123456789-+.eEtrufalsnx", max_size=60).map(
    str.encode)
cut_lists = st.lists(st.integers(0, 400), max_size=4)


@FUZZ
@given(data=st.one_of(JSONISH, st.binary(max_size=60)), cuts=cut_lists,
       negotiated=st.booleans())
def test_malformed_json_and_raw_bytes(data: bytes, cuts: list[int], negotiated: bool) -> None:
    COUNTS["hypothesis"] += 1
    check_server(data, cuts, negotiated=negotiated)
    check_client(data, cuts)


@FUZZ
@given(seed=st.sampled_from(COMMAND_SEEDS), at=st.integers(0, 200), cuts=cut_lists)
def test_truncated_messages(seed: bytes, at: int, cuts: list[int]) -> None:
    COUNTS["hypothesis"] += 1
    check_server(seed[:at], cuts)
    check_server(seed[:at] + b"\n", cuts)


@FUZZ
@given(junk=st.binary(min_size=1, max_size=12), where=st.sampled_from(["key", "value", "id"]),
       cuts=cut_lists)
def test_invalid_utf8_in_strings(junk: bytes, where: str, cuts: list[int]) -> None:
    COUNTS["hypothesis"] += 1
    text = b'"x' + junk.replace(b'"', b"") .replace(b"\\", b"") + b'"'
    data = {"key": b'{"execute": "stop", ' + text + b": 1}",
            "value": b'{"execute": ' + text + b"}",
            "id": b'{"execute": "stop", "id": ' + text + b"}"}[where] + b"\n"
    check_server(data, cuts)
    check_client(data, cuts)


NUMBERS = st.one_of(
    st.integers(-(10**40), 10**40).map(lambda n: str(n).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: repr(f).encode()),
    st.from_regex(rb"\A-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,4})?\Z"),
)


@pytest.mark.slow
@FUZZ
@given(number=NUMBERS, cuts=cut_lists)
def test_huge_numbers_as_id_and_argument(number: bytes, cuts: list[int]) -> None:
    COUNTS["hypothesis"] += 1
    check_server(b'{"execute": "stop", "id": ' + number + b"}\n", cuts)
    check_server(b'{"execute": "x", "arguments": {"n": ' + number + b"}}", cuts)
    check_client(b'{"return": ' + number + b', "id": "qe9"}\n', cuts)


def test_integers_past_pythons_digit_limit() -> None:
    """Once a ValueError escaping the parser (Python's 4300-digit int() limit)."""
    for number in (b"9" * 4301, b"-" + b"1" * 20000, b"1" * 5000 + b".5e-3"):
        check_server(b'{"execute": "stop", "id": ' + number + b"}\n", [17, 4000])
        check_client(b'{"return": ' + number + b', "id": "qe9"}\n', [30])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(depth=st.integers(1015, 1035), kind=st.sampled_from([b"[]", b"{}", b"mix"]),
       closed=st.booleans())
def test_deep_nesting_around_the_limit(depth: int, kind: bytes, closed: bool) -> None:
    COUNTS["hypothesis"] += 1
    if kind == b"mix":
        opening = b'{"a": [' * (depth // 2) + b"[" * (depth % 2)
        closing = b"]" * (depth % 2) + b"]}" * (depth // 2)
    else:
        opening, closing = kind[:1] * depth, kind[1:] * depth
        if kind == b"{}":
            opening = b'{"k": ' * (depth - 1) + b"{"
            closing = b"}" * depth
    body = opening + (closing if closed else b"")
    check_server(b'{"execute": "stop", "id": ' + body + b"}\n", [])
    check_server(body + b"\n", [len(body) // 2])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.one_of(st.sampled_from(COMMAND_SEEDS), JSONISH, st.binary(max_size=40)))
def test_every_byte_split(data: bytes) -> None:
    """One byte per read: every position is a read boundary at once."""
    COUNTS["hypothesis"] += 1
    check_server(data, [], byte_by_byte=True)
    check_server(data + b"\n" + data, [], byte_by_byte=True)


# -- volume: seeded mutations ------------------------------------------------

@pytest.mark.slow
def test_mutation_fuzzer_server(figures: Callable[[str, object], None]) -> None:
    mutator = Mutator(20240601, COMMAND_SEEDS)
    started = time.perf_counter()
    for index in range(MUTATION_SERVER_INPUTS):
        data = mutator.input()
        check_server(data, mutator.cuts(len(data) + len(TRAILER)), negotiated=index % 8 != 0)
    figures("fuzz: mutated commands to the server (all replies = QEMU's)",
            f"{MUTATION_SERVER_INPUTS} in {time.perf_counter() - started:.1f} s")


@pytest.mark.slow
def test_mutation_fuzzer_client(figures: Callable[[str, object], None]) -> None:
    mutator = Mutator(20240602, SERVER_SEEDS)
    started = time.perf_counter()
    for _ in range(MUTATION_CLIENT_INPUTS):
        data = mutator.input()
        check_client(data, mutator.cuts(len(data) + len(CLIENT_TRAILER)))
    figures("fuzz: mutated server messages to the client",
            f"{MUTATION_CLIENT_INPUTS} in {time.perf_counter() - started:.1f} s")


def test_framer_never_raises_on_garbage_and_stays_bounded() -> None:
    """The codec alone, small limit: random chunks never raise, the buffer stays bounded."""
    mutator = Mutator(7, COMMAND_SEEDS + SERVER_SEEDS)
    framer = value_framer(max_message_size=256)
    for _ in range(5000):
        framer.feed(mutator.input() * mutator.rng.randrange(1, 4))
        assert framer.buffered <= 256
    COUNTS["codec runs"] += 5000


def test_zz_report_inputs(figures: Callable[[str, object], None]) -> None:
    """Runs last in this module: the number of fuzz inputs tried.

    A run is one input through one state machine (server monitor, client, or
    the bare framer); ``hypothesis`` counts the generated examples among them.
    """
    runs = COUNTS["server runs"] + COUNTS["client runs"] + COUNTS["codec runs"]
    figures("fuzz: inputs tried (runs of a state machine on one input)",
            f"{runs} ({', '.join(f'{k} {v}' for k, v in sorted(COUNTS.items()))})")
    if COUNTS["server runs"] >= MUTATION_SERVER_INPUTS:  # the whole module ran
        assert runs >= 100_000
