"""A reply that echoes a peer's huge value: written in bounded steps, the same bytes.

QEMU echoes any JSON ``id``, and names an unexpected argument key in its
error (``Parameter 'KEY' is unexpected``): a peer that sends a 20 MiB id or
key gets a reply of up to 6 bytes per character (``\\u20AC`` per ``€``).
That reply used to be encoded in one step (0.7 s for 7 Mi ``€``, during which
no other monitor was answered); now its strings are escaped at C speed and
the reply is encoded a step (a few ms) per loop iteration, only while its
peer reads.  Waits are the server loop's CPU time between two of its
iterations (as in test_robust_framing), measured in a server process of its
own; the figures go to the "robustness figures" section.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from unittest import mock

import pytest
from qemu_support import QemuProcess, requires_qemu
from robust_support import eventually, stall_bound
from test_robust_framing import (
    FAULTS_PER_STEP,
    _Echo,
    plain_slices,
    second_monitor_waits,
    server_in_a_child,
)

from qmpevents.codec import encode_message
from qmpevents.codec.encoder import STEP_WORK, MessageSteps
from qmpevents.protocol import Command, unexpected
from qmpevents.protocol.unexpected import LongKeys, first_unexpected
from qmpevents.server import QMPServer, UnixAddress
from qmpevents.sim import SimulatedVM
from qmpevents.testing import RawQMP

Figures = Callable[[str, object], None]

EURO = "\u20ac"
HUGE = 7 << 20  # characters: 21 MiB of UTF-8 in, 42 MiB of escapes out


def huge_id_command(count: int = HUGE) -> bytes:
    return (b'{"execute": "query-status", "id": "' + (EURO * count).encode() + b'"}\n')


def huge_key_command(count: int = HUGE) -> bytes:
    return (b'{"execute": "query-status", "arguments": {"' + (EURO * count).encode()
            + b'": 1}, "id": "key"}\n')


# The simulated VM (``qmpevents serve``'s executor, arguments checked as QEMU does)
# in a child process: its loop's worst CPU stall, its CPU time, its peak RSS
# growth and its loop's most page faults in one iteration are printed at the end.
_SERVER = """
import asyncio, sys, time
sys.path[:0] = sys.argv[2:]
from test_robust_framing import LoopStalls
from qmpevents.sim import SimulatedVM

def status(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))

async def main():
    async with SimulatedVM(qmp=["unix:" + sys.argv[1]]):
        with LoopStalls() as stalls:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # resets the peak RSS (VmHWM) to the current RSS
            before = status("VmRSS:")
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print(stalls.worst, time.process_time(), (status("VmHWM:") - before) / 1024,
          stalls.worst_faults, flush=True)

asyncio.run(main())
"""


def sim_process() -> contextlib.AbstractAsyncContextManager[tuple[str, list[float]]]:
    """A simulated VM in a child process: its socket path, and a list that gets its
    loop's worst stall and its CPU time (seconds), its peak RSS growth (MiB) and its
    loop's most page faults in one iteration, at the end."""
    return server_in_a_child(_SERVER, f"/tmp/qmpev-replies-{os.getpid()}.sock")


async def _reply(sender: RawQMP) -> bytes:
    return await sender.line(timeout=120)


@pytest.mark.subprocess
@pytest.mark.parametrize(("name", "command", "start", "end", "copied"), [
    ("id", huge_id_command(), b'{"return": {"status": ',
     b'"id": "' + b"\\u20AC" * HUGE + b'"}\r\n', 0),
    # The error's text is made once, in one step, by the arguments' check: a copy of
    # the key, 2 bytes per character (faults beyond it are the reply's or the parse's).
    ("unexpected key", huge_key_command(),
     b'{"id": "key", "error": {"class": "GenericError", "desc": "Parameter \'',
     b"\\u20AC" * HUGE + b"' is unexpected\"}}\r\n", 2 * HUGE // 4096),
], ids=["id", "unexpected-key"])
async def test_second_monitor_waits_little_while_a_huge_reply_is_written(
        figures: Figures, name: str, command: bytes, start: bytes, end: bytes,
        copied: int) -> None:
    async with sim_process() as (path, server):
        wait, trips, reply = await second_monitor_waits(path, plain_slices(command), _reply)
    stall, cpu, peak, faults = server
    assert reply.startswith(start) and reply.endswith(end), reply[-200:]
    figures(f"a 21 MiB non-ASCII {name} echoed (42 MiB reply): second monitor's worst wait"
            " / server loop stall / its most page faults / server CPU / peak RSS growth",
            f"{wait * 1000:.0f} ms wall / {stall * 1000:.0f} ms CPU over {trips} round trips"
            f" / {faults:.0f} / {cpu:.1f} s / {peak:.0f} MiB")
    # CPU time: what the server does in one go, whatever the machine's load.  Was
    # 0.8 s (id) and 2.7 s (key), with 162-180 MiB of peak growth.
    assert stall < stall_bound(), stall
    assert faults < FAULTS_PER_STEP + copied, faults  # 8,664 with the exception's own copy
    assert wait < 1.0, wait  # wall time: loose, for a loaded machine


# -- the same bytes as real QEMU, pretty=on too ---------------------------------------------

# JSON text with raw UTF-8 and escapes of every kind QEMU writes differently from
# Python's json: astral characters (raw and as a pair), controls, DEL (escaped: QEMU
# refuses it raw), quotes, backslashes before hex letters and before b/f, the BMP's top.
TRICKY_TEXT = ("a\u20ac\u00e9\U0001f600\uffef\u0100~".encode()
               + rb'\\b\\F\\u\"/\u0001\u001f\b\f\n\r\t\uD83D\uDE00\u00FF\u007f\/')


def witness_commands(count: int) -> list[bytes]:
    """A command with a non-ASCII id of about *count* times the tricky text (an object:
    its keys' order too), and one naming such an unexpected key."""
    text = TRICKY_TEXT * count
    return [
        b'{"execute": "no-such-command", "id": {"k\xe2\x82\xac": ["' + text
        + b'", 1.5, null], "\xf0\x9f\x98\x80": "' + text + b'", "z": "' + text + b'"}}\n',
        b'{"execute": "query-status", "arguments": {"' + text + b'": 1}, "id": 2}\n',
    ]


async def replies_of(path: str, commands: list[bytes], pretty: bool) -> list[bytes]:
    """The greeting's and negotiation's replies, then one reply per command."""
    qmp = await RawQMP.unix(path, retry=True)

    async def message() -> bytes:
        lines = [await qmp.line(timeout=60)]
        while pretty and lines[-1] != b"}\r\n":  # a pretty message ends at column 0
            lines.append(await qmp.line(timeout=60))
        return b"".join(lines)

    try:
        await message()  # the greeting
        replies = []
        for command in [b'{"execute": "qmp_capabilities"}\n', *commands]:
            await qmp.send(command)
            replies.append(await message())
        return replies
    finally:
        qmp.writer.close()


async def on_qemu_and_simulator(name: str, ask: Callable[[str], Awaitable[list[bytes]]]
                                ) -> tuple[list[bytes], list[bytes]]:
    """What *ask* gets from a real QEMU 7.2 monitor, then from the simulator's
    ``qemu-7.2`` profile (on a socket of this test's own, *name*)."""
    async with QemuProcess() as qemu:
        expected = await ask(qemu.socket_path)
    path = f"/tmp/qmpev-replies-{name}-{os.getpid()}.sock"
    async with SimulatedVM(qmp=[f"unix:{path}"], profile="qemu-7.2", start_paused=True):
        got = await ask(path)
    return expected, got


@pytest.mark.qemu
@requires_qemu
@pytest.mark.parametrize("pretty", [False, True], ids=["compact", "pretty"])
async def test_huge_reply_is_written_as_real_qemu_writes_it(pretty: bool) -> None:
    # About 50 KiB per reply: QEMU reads its monitor a byte at a time (~150 KB/s).
    commands = witness_commands(300)
    async with QemuProcess(pretty=pretty) as qemu:
        expected = await replies_of(qemu.socket_path, commands, pretty)
    path = f"/tmp/qmpev-replies-sim-{os.getpid()}.sock"
    address = f"unix:{path}" + (",pretty=on" if pretty else "")
    async with SimulatedVM(qmp=[address], profile="qemu-7.2", start_paused=True):
        # Steps a tenth of the usual size: the reply is written in many steps.
        with mock.patch("qmpevents.protocol.server.MessageSteps",
                        functools.partial(MessageSteps, step=STEP_WORK // 10)):
            got = await replies_of(path, commands, pretty)
    assert got == expected
    assert b"\\uD83D\\uDE00" in expected[1] and b"Parameter 'a\\u20AC\\u00E9" in expected[2]


@contextlib.asynccontextmanager
async def server_in_process(name: str, executor: Any) -> AsyncIterator[tuple[QMPServer, str]]:
    """A QMP server on a socket of this test's own (*name*), closed on exit."""
    path = f"/tmp/qmpev-replies-{name}-{os.getpid()}.sock"
    qmp = QMPServer([UnixAddress(path)], executor, version={})
    await qmp.start()
    try:
        yield qmp, path
    finally:
        await qmp.close()


# -- a peer that does not read its reply ------------------------------------------------------

async def test_reply_to_a_peer_that_does_not_read_waits_for_it_and_holds_little() -> None:
    """The reply is encoded only as fast as its peer reads: while the transport is
    over its high-water mark no step is taken (memory: about the transport's
    buffer plus one step), requests wait, and the other monitors are served."""
    async with server_in_process("slow", _Echo()) as (qmp, path):
        reader = await RawQMP.unix(path)
        try:
            await reader.negotiate()
            (monitor,) = qmp._monitors
            reader.writer.write(huge_id_command(1 << 20) + b'{"execute": "after", "id": 3}\n')
            await reader.writer.drain()
            conn = monitor._conn
            assert conn is not None
            await eventually(lambda: monitor._writing_paused, what="the transport paused")
            assert conn.output_pending  # the reply waits, half-encoded
            transport = monitor._transport
            assert transport is not None
            held = transport.get_write_buffer_size()
            # Of a 6 MiB reply: the high-water mark and a step (768 KiB).
            assert held < 1 << 20, held
            for n in range(20):  # events wait behind the reply: they take no steps of it
                qmp.publish({"event": "TICK", "data": {"n": n},
                             "timestamp": {"seconds": 1, "microseconds": n}})
            flusher = monitor._flusher
            await eventually(lambda: not flusher._scheduled, what="the events' flush ran")
            # ... and wrote no step: the peer still reads nothing (was +600 KiB per event).
            assert transport.get_write_buffer_size() <= held
            other = await RawQMP.unix(path)
            await other.negotiate()  # the others are served meanwhile
            await other.send(b'{"execute": "x", "id": 1}\n')
            assert await other.line() == b'{"return": {}, "id": 1}\r\n'
            other.writer.close()
            assert conn.output_pending and conn.pending_requests == 1  # still waiting
            reply = await reader.line(timeout=60)
            assert reply == encode_message({"return": {}, "id": EURO * (1 << 20)})
            for n in range(20):  # the events, in order, after the reply
                assert b'"n": %d}' % n in await reader.line()
            assert await reader.line() == b'{"return": {}, "id": 3}\r\n'
        finally:
            reader.writer.close()


async def test_reply_being_encoded_is_written_whole_before_a_half_closed_peer_is_closed(
        ) -> None:
    async with server_in_process("eof", _Echo()) as (_qmp, path):
        reader = await RawQMP.unix(path)
        try:
            await reader.negotiate()
            reader.writer.write(huge_id_command(1 << 20) + b'{"execute": "x", "id": 2}\n')
            reader.writer.write_eof()  # QEMU answers every request, then closes
            rest = await asyncio.wait_for(reader.reader.read(), 60)
        finally:
            reader.writer.close()
    assert rest == (encode_message({"return": {}, "id": EURO * (1 << 20)})
                    + b'{"return": {}, "id": 2}\r\n')


class _NotJSONLate:
    """Returns a big value whose last member is not JSON: found only in a later step."""

    def execute(self, command: Command) -> Any:
        if command.name == "bad":
            return ["x" * 1000] * 5000 + [object()]
        return {}


async def test_a_value_that_fails_in_a_later_step_drops_that_peer_not_the_server(
        caplog: pytest.LogCaptureFixture) -> None:
    async with server_in_process("bad", _NotJSONLate()) as (_qmp, path):
        victim = await RawQMP.unix(path)
        other = await RawQMP.unix(path)
        try:
            await victim.negotiate()
            await other.negotiate()
            await victim.send(b'{"execute": "bad", "id": 1}\n')
            # Disconnected (it hung, half a line out).
            await asyncio.wait_for(victim.reader.read(), 30)
            await other.send(b'{"execute": "x", "id": 2}\n')
            assert await other.line() == b'{"return": {}, "id": 2}\r\n'
            assert "internal error; disconnecting it" in caplog.text
        finally:
            victim.writer.close()
            other.writer.close()


# -- keys holding U+0000: QEMU hashes them as it stores them, C0 80 ---------------------------

NUL_KEY_COMMANDS = [
    b'{"execute": "no-such-command", "id": {"b\\u0000": 1, "al": 2}}\n',
    b'{"execute": "no-such-command", "id": {"\\u0000": 1, "a\\u0000b": 2, "k": 3, "zz": 4}}\n',
    b'{"execute": "query-status", "arguments": {"b\\u0000": 1, "al": 2, "x\\u0000y": 3},'
    b' "id": 3}\n',
    b'{"execute": "query-status", "arguments": {"\\u0000\\u0000": 1, "q": 2, "r": 3}, "id": 4}\n',
]


def test_a_key_holding_nul_takes_the_bucket_of_its_c0_80_bytes() -> None:
    # QEMU's writer gives {"al": 2, "b\u0000": 1} (witnessed below); hashing 00 gave
    # the reverse order.
    assert encode_message({"b\x00": 1, "al": 2}) == b'{"al": 2, "b\\u0000": 1}\r\n'


@pytest.mark.qemu
@requires_qemu
async def test_keys_holding_nul_are_ordered_and_named_as_real_qemu_does() -> None:
    expected, got = await on_qemu_and_simulator(
        "nul", lambda path: replies_of(path, NUL_KEY_COMMANDS, False))
    assert got == expected
    assert b"is unexpected" in expected[3] and b"is unexpected" in expected[4]


# -- several long unexpected keys: hashed ahead in steps, then named as QEMU names one ----------

def _named(keys: list[str], visited: list[str]) -> str | None:
    """first_unexpected as the monitor runs it: long keys hashed ahead, then the check."""
    try:
        return first_unexpected(keys, visited)
    except LongKeys as long_keys:
        for _ in long_keys.steps():
            pass
        try:
            return first_unexpected(keys, visited)
        finally:
            long_keys.release()


def test_long_unexpected_keys_hashed_ahead_are_named_as_when_hashed_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(11)
    long = unexpected.HASH_AHEAD + 1
    for _ in range(40):
        sizes = [3, 40, long, long + 7]
        keys = ["".join(rng.choices("ab\x00\u20ac\U0001f600", k=rng.choice(sizes))) + str(i)
                for i in range(rng.randrange(2, 6))]
        visited = keys[:rng.randrange(0, 2)]
        ahead = _named(keys, visited)
        with monkeypatch.context() as at_once:
            at_once.setattr(unexpected, "HASH_AHEAD", 1 << 40)  # every key hashed in the check
            assert first_unexpected(keys, visited) == ahead
    assert not unexpected._HASHED  # released


@pytest.mark.subprocess
async def test_second_monitor_waits_little_while_long_unexpected_keys_are_hashed(
        figures: Figures) -> None:
    # Naming one of several unexpected keys takes QEMU's GLib hash of each: 1.5 s in
    # one step for two keys of 10 MiB, now hashed a slice per loop iteration.
    keys = [b"k" * (10 << 20) + b"%d" % i for i in range(2)]
    command = (b'{"execute": "query-status", "arguments": {"' + b'": 1, "'.join(keys)
               + b'": 1}, "id": "key"}\n')
    expected = _named([key.decode() for key in keys], [])
    async with sim_process() as (path, server):
        wait, trips, reply = await second_monitor_waits(path, plain_slices(command), _reply)
    stall = server[0]
    figures("two 10 MiB unexpected keys (one named, as QEMU names it): second monitor's "
            "worst wait / server loop stall",
            f"{wait * 1000:.0f} ms wall / {stall * 1000:.0f} ms CPU over {trips} round trips")
    assert expected is not None and reply.endswith(
        b"Parameter '" + expected.encode() + b"' is unexpected\"}}\r\n")
    assert stall < stall_bound(), stall  # was 1.5 s


@pytest.mark.qemu
@requires_qemu
async def test_long_unexpected_keys_are_named_as_real_qemu_does() -> None:
    # Keys just over the hash-ahead bound, with NUL and astral characters.
    rng = random.Random(3)
    commands = []
    for n in range(3):
        keys = ["".join(rng.choices("ab\x00\u20ac\U0001f600", k=unexpected.HASH_AHEAD // 3 + 9))
                + str(i) for i in range(3)]
        arguments_text = ", ".join(json.dumps(key) + ": 1" for key in keys)
        commands.append(('{"execute": "query-status", "arguments": {' + arguments_text
                         + f'}}, "id": {n}}}\n').encode())
    expected, got = await on_qemu_and_simulator(
        "long", lambda path: replies_of(path, commands, False))
    assert got == expected
    assert all(b"is unexpected" in reply for reply in expected[1:])


# -- qmp_capabilities: 'enable' checked first, then the unexpected key QEMU names ------------

CAPABILITIES_ARGUMENTS = [
    b'{"' + b"a" * 1000 + b'": 1, "' + b"b" * 1000 + b'": 1}',
    b'{"x": 1, "enable": 5}',
    b'{"x": 1, "y": 2, "z": 3, "w": 4}',
    b'{"enable": [], "k": 1, "l\\u0000": 2}',
]


async def capabilities_replies(path: str) -> list[bytes]:
    """Each bad ``qmp_capabilities`` before negotiation (a client each), then after."""
    replies = []
    for arguments_text in CAPABILITIES_ARGUMENTS:
        command = b'{"execute": "qmp_capabilities", "arguments": ' + arguments_text + b'}\n'
        async with await RawQMP.unix(path, retry=True) as qmp:  # it closes as QEMU needs
            await qmp.line(timeout=60)  # the greeting
            await qmp.send(command)
            replies.append(await qmp.line(timeout=60))  # before negotiation
            await qmp.send(b'{"execute": "qmp_capabilities"}\n')
            await qmp.line(timeout=60)
            await qmp.send(command)
            replies.append(await qmp.line(timeout=60))  # after
    return replies


@pytest.mark.qemu
@requires_qemu
async def test_qmp_capabilities_arguments_are_checked_as_real_qemu_checks_them() -> None:
    # Attacker: 'x' was named before enable's type was checked, and the first key in
    # input order instead of the one QEMU's hash table puts first.
    expected, got = await on_qemu_and_simulator("caps", capabilities_replies)
    assert got == expected
    assert b"expected: array" in expected[2]
