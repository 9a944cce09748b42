"""What a hostile server sends never drives the terminal, forges output or bends the CLI.

The servers here are deliberately broken: a raw QMP server (:class:`RawServer`)
greets, negotiates and then answers or sends exactly the bytes a test gives
(escape sequences in names and error descriptions, an error reply without an
id, numbers beyond a double's range, an event with its own ``"vm"``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import msgspec
import pytest
from cli_process import QMPEVENTS, plain, run, run_on_pty, running, short_dir

from qmpevents.addresses import UnixAddress
from qmpevents.catalog import Timestamp, build_event, decode_event, event_from_value
from qmpevents.cli.common import fail, make_note
from qmpevents.cli.escape import json_safe, safe, value_text
from qmpevents.cli.main import SafeFormatter
from qmpevents.cli.output import Output
from qmpevents.cli.render import json_line, text_line
from qmpevents.client.targets import expand
from qmpevents.codec import encode_message
from qmpevents.codec.deep import parse_json_text
from qmpevents.codec.encoder import pretty_wire
from qmpevents.testing.fake import VNC_CLIENT, VNC_SERVER

GREETING = (b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, '
            b'"package": ""}, "capabilities": []}}\r\n')
STAMP = b'"timestamp": {"seconds": 1700000000, "microseconds": 5}'
HOSTILE = "x\x1b]0;PWN\x07\x1b[2J\x9b2J\x85\x7f\u202e\u2028\U000e0001y"
"""ESC ] title BEL, ESC [ 2J, CSI and NEL as C1, DEL, a bidi override, a line
separator and a format character beyond the BMP."""
TERMINAL_ACTORS = ("\x1b", "\x07", "\x9b", "\x85", "\x7f", "\u202e", "\u2028", "\U000e0001")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def request(reader: asyncio.StreamReader) -> dict[str, object]:
    """The next command (the CLI sends one JSON object per line)."""
    line = await reader.readline()
    if not line:
        raise EOFError
    value = json.loads(line)
    assert isinstance(value, dict)
    return value


def reply_to(command: dict[str, object], body: bytes) -> bytes:
    """*body* (``%ID%`` replaced by the command's id) as the reply's bytes."""
    return body.replace(b"%ID%", json.dumps(command.get("id")).encode()) + b"\r\n"


async def negotiate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(GREETING)
    writer.write(reply_to(await request(reader), b'{"return": {}, "id": %ID%}'))


def answering(replies: dict[str, bytes], after_negotiation: bytes = b"",
              default: bytes = b'{"return": {}, "id": %ID%}') -> Handler:
    """A server that negotiates, sends *after_negotiation*, then answers each command
    with ``replies[name]`` (or *default*; None in *replies*: never answered)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await negotiate(reader, writer)
        writer.write(after_negotiation)
        while True:
            command = await request(reader)
            body = replies.get(str(command.get("execute")), default)
            writer.write(reply_to(command, body))
            await writer.drain()

    return handle


@asynccontextmanager
async def raw_server(path: str, handle: Handler) -> AsyncIterator[str]:
    """A QMP server on the unix socket *path* (taken literally), *handle* per client."""

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handle(reader, writer)
        except (EOFError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(guarded, path=path)
    try:
        yield path
    finally:
        server.close()
        await server.wait_closed()


def assert_terminal_safe(text: str) -> None:
    assert not any(char in text for char in TERMINAL_ACTORS), repr(text)


# -- the escaping functions --------------------------------------------------------


def test_safe_escapes_every_non_printable_character() -> None:
    shown = safe(HOSTILE)
    assert shown.isprintable()
    assert shown == ("x\\x1b]0;PWN\\x07\\x1b[2J\\x9b2J\\x85\\x7f\\u202e\\u2028"
                     "\\U000e0001y")
    assert safe("plain text, é ü 日本") == "plain text, é ü 日本"


def test_value_text_quotes_what_could_pass_for_more_fields() -> None:
    assert value_text("ide0-hd0") == "ide0-hd0"
    assert value_text("ide0 action=stop") == '"ide0 action=stop"'
    assert value_text("a=b") == '"a=b"'
    assert value_text("") == '""'
    assert value_text('say "hi"\\') == '"say \\"hi\\"\\\\"'
    assert value_text("nbsp\u00a0x") == '"nbsp\\xa0x"'  # a space that does not look like one
    assert value_text("\x1b[2J") == '"\\x1b[2J"'


def test_json_safe_keeps_the_same_json() -> None:
    text = json.dumps({"reason": HOSTILE, "k\u202e": [HOSTILE]}, ensure_ascii=False)
    shown = json_safe(text)
    assert shown.isprintable()
    assert json.loads(shown) == json.loads(text)


def test_json_safe_shows_a_pretty_on_message_as_qemus_compact_line() -> None:
    """It showed each line break and its indentation as spaces."""
    event = build_event("VNC_CONNECTED", {"server": VNC_SERVER, "client": VNC_CLIENT},
                        Timestamp(1700000000, 5), "qemu-7.2")
    compact = encode_message(event)
    pretty = pretty_wire(compact)
    assert b"\n    " in pretty.strip()  # laid out over lines, indented
    assert json_safe(pretty.decode().strip()) == compact.decode().strip()
    assert json_safe(', \r\n    "a": [\r\n        1,\r\n        2\r\n    ]\r\n}') \
        == ', "a": [1, 2]}'  # a fragment too (watch --json puts the vm first)


# -- event lines ---------------------------------------------------------------------------


def test_json_line_vm_and_host_are_always_the_tools() -> None:
    forged = decode_event(b'{"event": "STOP", ' + STAMP + b', "vm": "forged-vm", '
                          b'"host": "forged-host", "v\\u006d": "escaped-forgery"}')
    line = json_line("real", forged)
    assert line.count('"vm"') == 1 and "forged" not in line and "escaped" not in line
    assert msgspec.json.decode(line) == {"vm": "real", "event": "STOP",
                                         "timestamp": {"seconds": 1700000000,
                                                       "microseconds": 5}}
    ordinary = b'{"event": "STOP", ' + STAMP + b', "data": {"host": "kept inside data"}}'
    assert json_line("real", decode_event(ordinary)) == '{"vm": "real", ' + ordinary[1:].decode()


def test_json_line_of_an_event_with_a_number_beyond_a_double_is_json() -> None:
    """msgspec refuses 1e400 where QEMU reads inf: the line dropping a forged "vm"
    was "? vm (not an event) ..." (an attacker's finding: jq failed on it)."""
    for extra in (b"", b', "vm": "forged"'):
        raw = (b'{"event": "VNC_CONNECTED", ' + STAMP + b', "data": {"server": {"host": "h", '
               b'"service": "1", "family": "ipv4"}, "client": {"host": 1e400, "service": "1", '
               b'"family": "ipv4"}}' + extra + b"}")
        event = event_from_value(parse_json_text(raw), raw)  # the client's exact path
        line = json_line("vm1", event)
        value = json.loads(line)
        assert value["vm"] == "vm1" and value["data"]["client"]["host"] == float("inf")


def test_json_line_of_an_event_whose_raw_is_not_utf8_is_json() -> None:
    """msgspec skips a member it does not model without checking its UTF-8: the line
    is then shown by its values (a review: watch --json printed "not an event")."""
    for junk in (b"\xff", b"\xc0\x80"):
        event = decode_event(b'{"event": "STOP", ' + STAMP + b', "x-new": "' + junk + b'"}')
        line = json_line("vm1", event)
        assert msgspec.json.decode(line) == {"vm": "vm1", "event": "STOP",
                                             "timestamp": {"seconds": 1700000000,
                                                           "microseconds": 5}}


def test_fleet_json_line_host_and_vm_are_the_streams() -> None:
    """``watch nats:// --json`` puts ``"host"`` before the local line: the same rule holds."""
    from qmpevents.cli.stream import fleet_json_line

    forged = decode_event(b'{"event": "STOP", ' + STAMP + b', "host": "h0", "vm": "v0"}')
    line = fleet_json_line("web1", "vm1", json_line("vm1", forged))
    assert line.count('"host"') == 1 and line.count('"vm"') == 1
    assert msgspec.json.decode(line)["host"] == "web1"


def test_text_line_quotes_values_with_spaces_and_equals() -> None:
    event = decode_event(b'{"event": "BLOCK_IO_ERROR", ' + STAMP + b', "data": {"device": '
                         b'"ide0 action=stop", "operation": "write", "action": "report"}}')
    line = text_line("vm 1", event, colour=False)
    fields = shlex.split(line)
    assert fields[1:] == ["vm 1", "BLOCK_IO_ERROR", "device=ide0 action=stop",
                          "operation=write", "action=report"]
    assert [f for f in fields if f.startswith("action=")] == ["action=report"]


def test_event_lines_send_no_control_character() -> None:
    raw = msgspec.json.encode({"event": "RESET", "timestamp": {"seconds": 1700000000,
                                                                "microseconds": 5},
                               "data": {"reason": HOSTILE, "guest": [HOSTILE]}})
    event = decode_event(raw)
    coloured = text_line(HOSTILE, event, colour=True)
    for line in (plain(coloured), text_line(HOSTILE, event, colour=False),
                 json_line(HOSTILE, event)):  # only our own colour codes, nothing else
        assert_terminal_safe(line)
    assert msgspec.json.decode(json_line(HOSTILE, event))["data"]["reason"] == HOSTILE


def test_infinite_numbers_are_spelled_out_not_null() -> None:
    """1e400 parsed by the exact path is infinity: ``inf`` in text (as QEMU prints it),
    ``1e999`` in JSON (read back as infinity), never ``null``."""
    event = event_from_value({"event": "RTC_CHANGE", "timestamp": {"seconds": 1700000000,
                                                                    "microseconds": 5},
                              "data": {"offset": float("inf"), "x": [float("-inf")]}})
    assert text_line("vm", event, colour=False).endswith("offset=inf x=[-inf]")
    line = json_line("vm", event)
    assert "null" not in line
    assert json.loads(line)["data"] == {"offset": float("inf"), "x": [float("-inf")]}


# -- stderr: notes, errors, log records ------------------------------------------------------


def test_notes_errors_and_log_records_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    make_note("watch")(f"{HOSTILE}: disconnected")
    fail("exec", HOSTILE)
    record = logging.LogRecord("qmpevents.client", logging.WARNING, __file__, 1,
                               "%s: protocol violation: %s", ("unix:/x", HOSTILE), None)
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        record.exc_info = sys.exc_info()
    logged = SafeFormatter("%(levelname)s: %(message)s").format(record)
    assert "Traceback (most recent call last):\n" in logged  # its lines kept
    err = capsys.readouterr().err
    for text in (err, logged):
        assert_terminal_safe(text)
        assert "\\x1b]0;PWN\\x07" in text
    assert len(err.splitlines()) == 2


@pytest.mark.subprocess
async def test_exec_escapes_the_error_class_and_description() -> None:
    hostile = json.dumps(HOSTILE).encode()
    with short_dir("errdesc") as directory:
        async with raw_server(os.path.join(directory, "vm.sock"), answering(
                {"query-status": b'{"error": {"class": %s, "desc": %s}, "id": %%ID%%}'
                                 % (hostile, hostile)})) as path:
            status, out, err = await run("exec", path, "query-status")
    assert (status, out) == (1, "")
    assert_terminal_safe(err)
    assert err.count("\\x1b]0;PWN\\x07") == 2, err


@pytest.mark.subprocess
async def test_exec_reply_on_a_terminal_sends_no_c1_or_del() -> None:
    with short_dir("c1") as directory:
        async with raw_server(os.path.join(directory, "vm.sock"), answering(
                {"query-status": b'{"return": {"s": "A\\u009b2J\\u0085B\\u007f\\u202e"}, '
                                 b'"id": %ID%}'})) as path:
            status, shown = await asyncio.to_thread(run_on_pty, "exec", path, "query-status")
    assert status == 0, shown
    assert_terminal_safe(shown)
    assert json.loads(shown) == {"s": "A\x9b2J\x85B\x7f\u202e"}  # the same JSON


@pytest.mark.subprocess
async def test_exec_shows_numbers_beyond_a_double_not_null() -> None:
    huge = b"1" + b"0" * 5000
    with short_dir("bignum") as directory:
        async with raw_server(os.path.join(directory, "vm.sock"), answering(
                {"query-status": b'{"return": {"n": 1e400, "m": -1e400, "i": %s}, '
                                 b'"id": %%ID%%}' % huge})) as path:
            status, out, err = await run("exec", path, "query-status")
    assert status == 0, err
    assert "null" not in out
    assert json.loads(out) == {"n": float("inf"), "m": float("-inf"), "i": float("inf")}


@pytest.mark.subprocess
async def test_watch_escapes_the_vm_name_and_the_library_warning() -> None:
    """query-name's answer in notes and lines, an id-less error reply in the client's
    WARNING (logged without -v), a failed qmp_capabilities in the note: all escaped."""
    name = json.dumps(HOSTILE).encode()
    noid = b'{"error": {"class": "GenericError", "desc": "\\u001b]0;PWNED\\u0007"}}\r\n'
    stop = b'{"event": "STOP", ' + STAMP + b"}\r\n"
    server = answering({"query-name": b'{"return": {"name": %s}, "id": %%ID%%}' % name},
                       after_negotiation=noid + stop)
    with short_dir("named") as directory:
        path = os.path.join(directory, "vm.sock")
        async with raw_server(path, server), running("watch", path, "--count", "1") as cli:
            assert await cli.wait() == 0
    out, err = "".join(cli.out), "".join(cli.err)
    assert_terminal_safe(out + err)
    assert shlex.split(out)[1:] == [safe(HOSTILE), "STOP"], out  # the name, in quotes
    assert f"{safe(HOSTILE)}: disconnected" not in err
    assert "WARNING" in err and "\\x1b]0;PWNED\\x07" in err, err


@pytest.mark.subprocess
async def test_watch_escapes_a_failed_negotiation() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        writer.write(reply_to(await request(reader), b'{"error": {"class": "CommandNotFound"'
                              b', "desc": "no\\u001b]0;PWN\\u0007pe"}, "id": %ID%}'))
        await reader.read()

    with short_dir("capsfail") as directory:
        async with raw_server(os.path.join(directory, "vm.sock"), refuse) as path:
            status, _, err = await run("watch", path)
    assert status == 3
    assert_terminal_safe(err)
    assert "no\\x1b]0;PWN\\x07pe" in err, err


@pytest.mark.subprocess
async def test_watch_json_cannot_be_given_a_forged_vm() -> None:
    forged = b'{"event": "STOP", ' + STAMP + b', "vm": "forged-vm"}\r\n'
    with short_dir("forge") as directory:
        async with raw_server(os.path.join(directory, "vm.sock"), answering(
                {}, after_negotiation=forged)) as path:
            status, out, err = await run("watch", f"real={path}", "--json", "--count", "1")
    assert status == 0, err
    assert out.count('"vm"') == 1 and json.loads(out)["vm"] == "real"


# -- targets -------------------------------------------------------------------------------


async def test_scanned_paths_are_literal_never_parsed_for_options() -> None:
    """``DIR/vm1.sock,pretty=on`` is its own socket, not ``vm1.sock`` with an option."""
    with short_dir("literal") as directory:
        sockets = {"vm1.sock": b"STOP", "vm1.sock,pretty=on": b"RESET"}
        servers = [raw_server(os.path.join(directory, name), answering(
            {}, after_negotiation=b'{"event": "%s", %s}\r\n' % (event, STAMP)))
            for name, event in sockets.items()]
        async with servers[0], servers[1]:
            targets = expand(directory + "/")
            assert [t.connect_address for t in targets] == [
                UnixAddress(os.path.join(directory, name)) for name in sorted(sockets)]
            status, out, err = await run("watch", directory + "/", "--count", "2")
    assert status == 0, err
    assert sorted(shlex.split(line)[1:] for line in out.splitlines()) == [
        ["vm1", "STOP"], ["vm1.sock,pretty=on", "RESET"]]  # each its own, each named apart


# -- --timeout: wall time from the start -------------------------------------------------------


async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Negotiates, then never answers anything (query-name included)."""
    await negotiate(reader, writer)
    await reader.read()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts, never greets."""
    await reader.read()


async def timed(*args: str) -> tuple[int, float, str, str]:
    loop = asyncio.get_running_loop()
    began = loop.time()
    status, out, err = await run(*args, timeout=20)
    return status, loop.time() - began, out, err


@pytest.mark.subprocess
@pytest.mark.parametrize("server", [mute, silent], ids=["mute", "silent"])
async def test_watch_timeout_counts_connecting_and_naming(server: Handler) -> None:
    """A VM that never says its name (5 s of query-name) or never greets (3 s): --timeout 1
    still ends the watch about 1 s after the start, saying so, with status 1."""
    with short_dir("tmo") as directory:
        async with raw_server(os.path.join(directory, "vm.sock"), server) as path:
            status, elapsed, _, err = await timed("watch", path, "--timeout", "1")
    assert status == 1, err
    assert "timed out after 1 s" in err
    assert elapsed < 2.9, elapsed  # before: 6 s (mute), 3 s and exit 3 (silent)


@pytest.mark.subprocess
async def test_watch_directory_timeout_prints_the_event_held_while_naming() -> None:
    stop = b'{"event": "STOP", ' + STAMP + b"}\r\n"

    async def mute_with_event(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await negotiate(reader, writer)
        writer.write(stop)
        await reader.read()

    with short_dir("held") as directory:
        async with raw_server(os.path.join(directory, "vm.sock"), mute_with_event):
            status, elapsed, out, err = await timed("watch", directory + "/", "--timeout", "1")
    assert status == 1, err
    assert [line.split()[1:] for line in out.splitlines()] == [["vm", "STOP"]]
    assert "never retrieved" not in err and "Traceback" not in err, err
    assert "timed out after 1 s (1 event)" in err
    assert elapsed < 2.9, elapsed


@pytest.mark.subprocess
async def test_watch_timeout_fires_when_nobody_reads_stdout() -> None:
    """``watch ... | sleep 60``: the pipe fills, yet --timeout 1 ends it with status 1
    (before: blocked in write() until the reader left, then SIGPIPE)."""
    burst = (b'{"event": "RESET", ' + STAMP + b', "data": {"guest": true, '
             b'"reason": "guest-reset"}}\r\n') * 1000

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await negotiate(reader, writer)
        while True:  # as fast as the watcher reads (its backpressure)
            writer.write(burst)
            await writer.drain()
            await asyncio.sleep(0)  # a yield: drain() does not when the socket takes it all

    unread, stdout = os.pipe()  # a pipe whose reader never reads
    with short_dir("pipe") as directory:
        async with raw_server(os.path.join(directory, "vm.sock"), flood) as path:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *QMPEVENTS, "watch", f"vm={path}", "--timeout", "1",
                    stdin=asyncio.subprocess.DEVNULL, stdout=stdout,
                    stderr=asyncio.subprocess.DEVNULL)
                os.close(stdout)
                try:
                    status = await asyncio.wait_for(proc.wait(), 10)
                finally:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
            finally:
                os.close(unread)
    assert status == 1


async def test_output_never_blocks_the_loop_and_reports_a_closed_pipe() -> None:
    """A pipe nobody reads: writes queue up to the limit and then wait (or, not blocking,
    are dropped) while the loop runs on; what was accepted arrives once read, in order;
    a closed pipe is reported at once."""
    failed: asyncio.Future[OSError] = asyncio.get_running_loop().create_future()
    unread, end = os.pipe()
    output = Output(end, limit=64 << 10, on_error=failed.set_result)
    line = "x" * 999 + "\n"
    accepted = 0
    async with asyncio.timeout(10):  # a write blocking the loop would hang here
        while await output.write(line, block=False):
            accepted += 1
        assert output.full
        reading = asyncio.ensure_future(asyncio.to_thread(_read_exactly, unread,
                                                          accepted * len(line)))
        await output.drain()
        assert await reading == line.encode() * accepted
        os.close(unread)
        await output.write(line)  # taken; the thread's write then fails
        assert isinstance(await failed, BrokenPipeError)
        with pytest.raises(BrokenPipeError):
            await output.write(line)
    output.close()
    os.close(end)


async def test_output_ends_the_session_and_drains_by_the_deadline() -> None:
    """What watch and stream share at the end: a write error ends the session's future;
    the lines queued are waited for until the deadline, or FINAL_GRACE once timed out,
    and not beyond (nobody reads: False, and the process drops them)."""
    loop = asyncio.get_running_loop()
    session: asyncio.Future[int] = loop.create_future()
    unread, end = os.pipe()
    output = Output(end, ends=session)
    lines = "y" * 999 + "\n"
    async with asyncio.timeout(10):  # a drain past its deadline would hang here
        for _ in range(256):  # more than the pipe holds
            await output.write(lines)
        assert not await output.drained_by(loop.time() + 0.05)
        assert not await output.drained_by(None, timed_out=True)  # FINAL_GRACE
        reading = asyncio.ensure_future(asyncio.to_thread(_read_exactly, unread,
                                                          256 * len(lines)))
        assert await output.drained_by(None)
        assert await reading == lines.encode() * 256
        assert not session.done()
        os.close(unread)
        await output.write(lines)  # taken; the thread's write then fails
        with pytest.raises(BrokenPipeError):
            await session
    output.close()
    os.close(end)


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, size)
        assert chunk
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


@pytest.mark.subprocess
async def test_values_nested_as_deep_as_qemu_allows_are_shown() -> None:
    """1020 levels (QEMU takes 1024): the reply is printed, and a watched VM that sends
    such a message keeps its connection (before: Python's recursion limit of 1000
    ended both, the watch with a traceback and exit 3)."""
    deep = b"[" * 1020 + b"]" * 1020
    stop = b'{"event": "STOP", ' + STAMP + b"}\r\n"
    with short_dir("deep") as directory:
        path = os.path.join(directory, "vm.sock")
        async with raw_server(path, answering({"query-status": b'{"return": %s, "id": %%ID%%}'
                                               % deep}, after_negotiation=deep + b"\r\n" + stop)):
            status, out, err = await run("exec", path, "query-status")
            assert (status, out.strip()) == (0, deep.decode()), err
            status, out, err = await run("watch", f"vm={path}", "--json", "--count", "1")
    assert status == 0, err
    assert json.loads(out)["event"] == "STOP"
    assert "Traceback" not in err
