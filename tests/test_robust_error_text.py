"""Error texts that hold a token: cut as QEMU cuts them, built in bounded steps.

* QEMU's parser formats its message into ``char message[1024]``
  (json-parser.c ``parse_error``): an invalid keyword of 3,000 bytes gets a
  1,089-byte reply from QEMU; ours held the whole keyword (3,084 bytes, and
  60 MiB for a 60 MiB keyword).
* The streamer's ``stray '...'`` text is not cut: a 60 MiB string followed by
  a control byte is answered with all of it, but building that text took one
  step of 120 ms.  It is now built a slice at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from qemu_support import QemuProcess, requires_qemu
from robust_support import stall_bound
from test_protocol_server import error_line, fresh, run
from test_robust_framing import (
    execute_timeout_while_parsing,
    feed_as_a_server,
    plain_slices,
    qmp_server_process,
    second_monitor_waits,
)

from qmpevents.codec import value_framer
from qmpevents.codec.errors import ParseError
from qmpevents.codec.stray import stray_steps
from qmpevents.testing import RawQMP

Figures = Callable[[str, object], None]


def keyword_command(size: int, after: bytes = b"") -> bytes:
    return b'{"execute": "query-status", "id": ' + b"t" * size + after + b"}\n"


def test_an_invalid_keywords_error_is_cut_at_qemus_1023_bytes() -> None:
    conn = fresh()
    # 17 + 1005 + 1 = 1023 bytes of message: whole, with its closing quote.
    assert run(conn, keyword_command(1005)) == [
        error_line("GenericError", "JSON parse error, invalid keyword '" + "t" * 1005 + "'")]
    # Longer: cut after 1023 bytes, mid-keyword, with no closing quote.
    for size in (1006, 3000, 1 << 20):
        assert run(conn, keyword_command(size)) == [
            error_line("GenericError", "JSON parse error, invalid keyword '" + "t" * 1006)]


def one_shot_stray(text: bytes) -> str:
    """The stray text as it was built in one go (what QEMU's bytes were checked against)."""
    shown = text.split(b"\0", 1)[0].decode("utf-8", "replace")
    return f"JSON parse error, stray '{shown}'"


@pytest.mark.parametrize("text", [
    b'"abc\x01', b'"' + "é€😀".encode() * 5 + b"\x01", b'"\xc3\xa9\xe2\x82', b"\x00",
    b'"a\xff\xfe\xc3(\xe2\x82(\xf0\x9f\x98\x01', b'"\xe2\x82\xac' * 7 + b'\x00', b"1" * 40 + b"x",
])
@pytest.mark.parametrize("step", [1, 2, 3, 5, 64])
def test_stray_text_built_in_steps_is_the_one_shot_text(text: bytes, step: int) -> None:
    # Slices cut characters (and invalid sequences) anywhere: the same text.
    steps = stray_steps(text, step)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            assert done.value.desc == one_shot_stray(text)
            break


def test_a_stray_byte_after_a_huge_string_is_answered_in_bounded_steps() -> None:
    for unit in (b"a", "é".encode()):
        token = b'"' + unit * ((32 << 20) // len(unit)) + b"\x01"
        stalls: list[float] = []
        out = feed_as_a_server(value_framer(), plain_slices(b'{"id": ' + token + b"}\n"), stalls)
        assert isinstance(out[0], ParseError)
        assert out[0].desc == one_shot_stray(token)
        # CPU time: was one step of 56-61 ms (32 MiB), now 4 ms
        assert max(stalls) < 0.025, max(stalls)


# -- real QEMU: the same reply bytes -----------------------------------------------------

WITNESSED = {
    # keywords around the cut (a keyword is lowercase ASCII: the cut never splits
    # a character)
    **{f"keyword {n}": keyword_command(n) for n in (1004, 1005, 1006, 1007, 3000)},
    # a multi-byte character ends a keyword: a stray byte, then what recovery leaves
    "keyword then é": keyword_command(1010, "é".encode()),
    # the stray text is not cut, multi-byte characters included
    "stray é 1023": b'{"id": "' + "é".encode() * 512 + b'\x01"}\n',
    "stray a 3000": b'{"id": "' + b"a" * 3000 + b'\x01"}\n',
}


async def answers(path: str) -> dict[str, list[bytes]]:
    """Per input: its reply lines, before the reply to a command sent after it."""
    out = {}
    for name, data in WITNESSED.items():
        async with await RawQMP.unix(path, retry=True) as qmp:  # it closes as QEMU needs
            await qmp.negotiate()
            await qmp.send(data + b'{"execute": "no-such-cmd", "id": "end"}\n')
            lines = [await qmp.line(timeout=5.0)]
            while b'"id": "end"' not in lines[-1]:
                lines.append(await qmp.line(timeout=5.0))
            out[name] = lines[:-1]  # (the simulated machine answers anything)
    return out


@pytest.mark.qemu
@requires_qemu
async def test_error_texts_holding_a_token_are_real_qemus_bytes() -> None:
    async with QemuProcess() as qemu:
        theirs = await answers(qemu.socket_path)
    async with qmp_server_process() as (path, _stall):
        ours = await answers(path)
    for name in WITNESSED:
        assert ours[name] == theirs[name], name
    assert len(theirs["keyword 3000"][0]) == 1089 + 2  # and CRLF


# -- a second monitor, while a huge token's error is answered -------------------------------

async def after_a_huge_reply(sender: RawQMP) -> bytes:
    """Read past replies of any length (the stray's holds the whole token) to that of
    a query sent after the input: how many bytes came."""
    await sender.send(b'{"execute": "query-status", "id": "end"}\n')
    tail = b""
    count = 0
    while b'"id": "end"' not in tail:
        chunk = await asyncio.wait_for(sender.reader.read(1 << 20), 60)
        if not chunk:
            raise EOFError("the server closed the connection")
        count += len(chunk)
        tail = tail[-64:] + chunk
    return b"%d" % count


@pytest.mark.slow
@pytest.mark.subprocess
async def test_second_monitor_waits_little_while_a_huge_tokens_error_is_answered(
        figures: Figures) -> None:
    cases = {"a 60 MiB keyword": keyword_command(60 << 20),
             "a 60 MiB string, then \\x01": b'{"id": "' + b"a" * (60 << 20) + b'\x01"}\n',
             # (its reply is 90 MiB: QEMU writes each é as \u00E9)
             "a 30 MiB string of é, then \\x01":
                 b'{"id": "' + "é".encode() * (15 << 20) + b'\x01"}\n'}
    for name, data in cases.items():
        async with qmp_server_process() as (path, stalls):
            wait, trips, got = await second_monitor_waits(path, plain_slices(data),
                                                          after_a_huge_reply)
        figures(f"error reply to {name}: second monitor's worst wait / server loop stall",
                f"{wait * 1000:.0f} ms wall / {stalls[0] * 1000:.0f} ms CPU over {trips} "
                f"round trips, {int(got) >> 20} MiB of replies")
        assert stalls[0] < stall_bound(), (name, stalls[0])  # was 117 / 111 / 71 ms
        assert wait < 1.0, (name, wait)  # wall time: loose, for a loaded machine


@pytest.mark.subprocess
async def test_a_client_reports_a_huge_stray_at_once_and_its_timeouts_hold(
        figures: Figures, caplog: pytest.LogCaptureFixture) -> None:
    # A server's 32 MiB string, then a control byte: the client's error text was the
    # whole token, built in one step (130 ms for 60 MiB); it now shows its beginning.
    late, stall = await execute_timeout_while_parsing(b'"' + b"a" * (32 << 20) + b"\x01\n")
    figures("client: a 32 MiB string then a stray byte from the server",
            f"execute(timeout=1) raised {late * 1000:+.0f} ms late; loop stall "
            f"{stall * 1000:.0f} ms CPU")
    assert stall < stall_bound() and late < 0.25, (stall, late)
    reports = [record.getMessage() for record in caplog.records if "stray" in record.getMessage()]
    assert reports and all(len(report) < 1000 for report in reports), reports[:1]
