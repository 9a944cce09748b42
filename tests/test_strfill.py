"""A big str built a piece at a time (codec.strfill) and a token gathered in place (codec.gather).

Both exist so that no step of a server's loop copies a huge string at once;
what they give must be exactly what a join gives.
"""

from __future__ import annotations

import mmap
import platform
import random
from collections.abc import Generator

import pytest

from qmpevents.codec import gather, lexer, strfill
from qmpevents.codec.lexer import Streamer, TokenRun
from qmpevents.codec.strfill import FILL_ABOVE, StringFill, join_steps, widest

_ALPHABET = ["a", "\x00", "\xe9", "\xff", "\u20ac", "\ud800", "\U0001f600"]


def run(steps: Generator[None, None, str]) -> tuple[str, int]:
    """The value of a join_steps generator, and how many times it paused."""
    pauses = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value, pauses
        pauses += 1


def test_join_in_steps_is_the_join_at_every_width() -> None:
    rng = random.Random(7)
    for _ in range(60):
        chars = _ALPHABET[:rng.randrange(1, len(_ALPHABET) + 1)]
        pieces = ["".join(rng.choices(chars, k=rng.randrange(0, 9000)))
                  for _ in range(rng.randrange(0, 40))]
        expected = "".join(pieces)
        value, pauses = run(join_steps(list(pieces), step=20_000))
        assert value == expected and hash(value) == hash(expected)
        assert value.isascii() == expected.isascii()
        assert len(value) < FILL_ABOVE or pauses >= len(value) // 20_000


def test_a_string_that_does_not_fit_is_refused() -> None:
    size = FILL_ABOVE
    for made_for, piece in ((0x7F, "\xe9"), (0xFF, "\u20ac"), (0xFFFF, "\U0001f600")):
        fill = StringFill(size, made_for)
        with pytest.raises(ValueError, match="wider"):
            fill.add(piece)
    fill = StringFill(size, 0x7F)
    fill.add("a" * (size - 1))
    with pytest.raises(ValueError, match="fewer"):
        fill.result()
    with pytest.raises(ValueError, match="more"):
        fill.add("bb")
    fill.add("b")
    assert fill.result() == "a" * (size - 1) + "b"


def test_widest_is_the_storage_class_of_the_widest_character() -> None:
    assert [widest(text) for text in ("", "a", "\xe9", "\u20ac", "\ud800", "\U0001f600")] == [
        0x7F, 0x7F, 0xFF, 0xFFFF, 0xFFFF, 0x10FFFF]


def test_a_huge_string_token_is_gathered_in_place_and_handed_over() -> None:
    if not gather.GATHERING:
        pytest.skip("no mremap here")
    runs: list[TokenRun] = []
    streamer = Streamer(lambda tokens, error: runs.append(tokens) if tokens else None)
    body = b"\\u00e9x" * ((3 * lexer.GATHER_ABOVE) // 7)
    data = b'["' + body + b'"]'
    for start in range(0, len(data), 8192):  # as reads come: runs of the string's body
        pos, end = start, min(len(data), start + 8192)
        while pos < end:
            stop = streamer.feed_run(data, pos, end) if streamer.in_run else pos
            if stop == pos:
                streamer.feed_byte(data[pos])
                stop = pos + 1
            pos = stop
    (tokens,) = runs
    texts = [text for _tok, text in tokens]
    assert isinstance(texts[1], mmap.mmap) and texts[1][:] == b'"' + body + b'"'


def test_strings_are_filled_in_place_on_cpython() -> None:
    # The point of StringFill: on CPython the string is made once and filled, not
    # joined (a silent fallback to the join would pass every other test here).
    if platform.python_implementation() != "CPython":
        pytest.skip("the in-place fill is CPython's")
    assert strfill._NEW is not None
    fill = StringFill(FILL_ABOVE, widest("\u20ac"))
    made = fill._string
    fill.add("\u20ac" * FILL_ABOVE)
    assert fill.result() is made and made == "\u20ac" * FILL_ABOVE
