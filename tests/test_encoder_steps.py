"""The encoder at C speed and in steps: the same bytes as QEMU's rules, char by char.

A reply that echoes a peer's huge value (an ``id``, a key named in an error)
is encoded in bounded steps (:class:`MessageSteps`), its strings by the json
module's C escaper with fix-ups.  Both must give exactly what QEMU's
``to_json`` gives; the oracle here is that function's rules written out one
character at a time (``qobject/qjson.c``), and the old whole-value encoder for
the rest (key order, numbers).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmpevents.codec import encode_message, encoder
from qmpevents.codec.encoder import (
    STEP_WORK,
    MessageSteps,
    PrettyLayout,
    encode_string,
    pretty_wire,
)

_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
          "\t": "\\t"}


def qemu_string(text: str) -> str:
    """QEMU's ``to_json`` for a string, one character at a time (the oracle)."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _SHORT:
            out.append(_SHORT[char])
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code > 0xFFFF:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04X}\\u{0xDC00 + (code & 0x3FF):04X}")
        elif 0xD800 <= code <= 0xDFFF:  # a lone surrogate: invalid UTF-8 to QEMU
            out.append("\\uFFFD")
        else:
            out.append(f"\\u{code:04X}")
    return "".join(out) + '"'


# Characters where the fix-ups matter: hex letters of both cases (the swap), the short
# escapes made of them (\b, \f), backslashes before them, quotes, controls, DEL,
# Latin-1, the BMP's edges, surrogates alone and in pairs, astral characters.
TRICKY = [
    *"abcdefABCDEFbfu\\\"/ ~\x7f\x00\x08\x0c\x1a\x1f\n\r\t",
    "\x80", "\xe9", "\xff", "\u20ac", "\ufffd", "\ufffe", "\uffff", "\ud7ff", "\ue000",
    "\ud800", "\udbff", "\udc00", "\udfff", "\U00010000", "\U0001f600", "\U0010ffff"]
any_char = st.characters(exclude_categories=())  # lone surrogates included
strings = st.text(st.sampled_from(TRICKY) | any_char, max_size=60)


@pytest.mark.fuzz
@settings(max_examples=2000, deadline=None)
@given(strings)
def test_string_is_escaped_as_qemu_does_char_by_char(text: str) -> None:
    assert encode_string(text) == qemu_string(text)


def _random_text(rng: random.Random, size: int) -> str:
    pools = [TRICKY, TRICKY, [chr(code) for code in range(0x20, 0x7F)]]
    chars = [rng.choice(rng.choice(pools)) for _ in range(size // 2)]
    chars += [chr(rng.choice((rng.randint(0, 0xFFFF), rng.randint(0x10000, 0x10FFFF))))
              for _ in range(size - size // 2)]
    rng.shuffle(chars)
    return "".join(chars)


@pytest.mark.parametrize("seed", range(3))
def test_huge_string_is_escaped_as_qemu_does_char_by_char(seed: int) -> None:
    rng = random.Random(seed)
    text = _random_text(rng, 300_000)
    assert encode_string(text) == qemu_string(text)
    for char in ("\u20ac", "a", "\ud800", "\U0001f600", "\x7f", "\\b"):
        assert encode_string(char * 100_000) == qemu_string(char * 100_000)


# --- a message in steps -----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | strings,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(strings, inner, max_size=4),
    max_leaves=20,
)


def steps(value: Any, step: int) -> list[bytes]:
    encoder = MessageSteps(value, step)
    pieces = []
    while not encoder.done:
        pieces.append(encoder.next_piece())
    return pieces


@pytest.mark.fuzz
@settings(max_examples=500, deadline=None)
@given(json_values, st.sampled_from([1, 2, 5, 40, STEP_WORK]))
def test_steps_join_to_the_one_step_line(value: Any, step: int) -> None:
    assert b"".join(steps(value, step)) == encode_message(value)


def big_value(rng: random.Random) -> dict[str, Any]:
    """A reply with everything that is walked in steps: a huge string, a huge key,
    a list and a dict too big to push whole, nested in each other."""
    keys = {_random_text(rng, rng.randint(0, 12)): rng.randint(-5, 5) for _ in range(2000)}
    return {"return": {}, "id": [
        _random_text(rng, 200_000),
        {_random_text(rng, 70_000): [1.5, None, True, False, *range(1000)]},
        keys,
        [[_random_text(rng, 9)] * 3 for _ in range(700)],
    ]}


def test_big_reply_in_steps_is_the_one_step_line_and_each_step_is_bounded() -> None:
    value = big_value(random.Random(7))
    line = encode_message(value)
    for step in (1000, 50_000, STEP_WORK):
        pieces = steps(value, step)
        assert b"".join(pieces) == line
        # A step is about *step* characters of strings: never more than one cut's
        # worth of escapes (12 bytes for an astral character) per character.
        assert max(map(len, pieces)) <= 12 * max(step, STEP_WORK // 16) + 200, step
    assert len(steps(value, 50_000)) > 10


def test_pretty_layout_follows_the_steps() -> None:
    """Pieces end between tokens or inside a string between escapes: the streaming
    layout of the pieces is the layout of the whole line."""
    value = big_value(random.Random(8))
    whole = pretty_wire(encode_message(value))
    for step in (1, 1000, 50_000):
        layout = PrettyLayout()
        assert b"".join(layout.feed(piece) for piece in steps(value, step)) == whole, step


# --- a server connection's output, a step at a time -----------------------------------------

def test_what_follows_a_reply_in_steps_comes_with_its_last_step() -> None:
    """Events sent while a huge reply is encoded wait behind it, in order, and come
    out with its last step (nothing is left behind once no encoding is pending)."""
    from robust_support import server

    from qmpevents.protocol import Command

    conn = server()
    big = "\u20ac" * (4 * STEP_WORK)
    conn.receive_data(b'{"execute": "x", "id": "' + big.encode() + b'"}\n{"execute": "y"}\n')

    def next_command() -> Command:
        while True:
            event = conn.next_event()
            if isinstance(event, Command):
                return event

    conn.send_return(next_command(), {})
    assert conn.output_pending
    conn.send_event(b"event-1\r\n")
    conn.send_event(b"event-2\r\n")
    pieces = [conn.data_to_send(one_step=True)]
    while conn.output_pending:
        pieces.append(conn.data_to_send(one_step=True))
    assert len(pieces) > 4 and conn.output_size == 0 and conn.data_to_send() == b""
    assert b"".join(pieces) == encode_message({"return": {}, "id": big}) + (
        b"event-1\r\nevent-2\r\n")
    assert pieces[-1].endswith(b"}\r\nevent-1\r\nevent-2\r\n")
    assert b"event-1" not in b"".join(pieces[:-1])
    # Without one_step, everything at once, as before.
    conn.send_return(next_command(), big)
    assert conn.data_to_send() == encode_message({"return": big}) and not conn.output_pending


def test_a_dict_with_huge_keys_is_ordered_in_bounded_steps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # QDict order needs each key's hash: a peer's MiB-long keys in an echoed id
    # were hashed whole in the first step (120 ms for 7 Mi characters of €).
    hashed: list[int] = []
    byte_sums = encoder._byte_sums

    def counting(data: bytes, offset: int) -> int:
        hashed.append(len(data))
        return byte_sums(data, offset)
    big = "€" * (600 * 1024)
    step = 64 * 1024
    for value in ({"id": {big: 1, big + "x": 2, "k": 3}}, {"id": {big: 1}}):
        line = encode_message(value)  # in one go, before counting
        monkeypatch.setattr(encoder, "_byte_sums", counting)
        steps = MessageSteps(value, step=step)
        pieces = []
        while not steps.done:
            pieces.append(steps.next_piece())
        monkeypatch.undo()
        assert b"".join(pieces) == line
    assert hashed and max(hashed) <= 3 * step, max(hashed)  # € is 3 bytes: one step's worth
