"""``qmpevents record`` and ``replay`` as processes: durable files, torn tails, signals,
the whole conversation with --all-messages, and replays byte for byte."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cli_process import one_line_error, run, running

from qmpevents.recording import ReadReport, Record, RecordingWriter, read_recording
from qmpevents.sim import SimulatedVM
from qmpevents.testing import RawQMP

pytestmark = pytest.mark.subprocess


@pytest.fixture
async def vm() -> AsyncIterator[SimulatedVM]:
    async with SimulatedVM(drives=["disk0,werror=report"], name="rec") as machine:
        yield machine


def records(path: Path) -> tuple[list[Record], ReadReport]:
    report = ReadReport()
    return list(read_recording(str(path), report)), report


async def until_recorded(path: Path, count: int, timeout: float = 10.0) -> list[Record]:
    """Poll the file (the recorder reports nothing per event) until *count* records."""
    async with asyncio.timeout(timeout):
        while len(found := records(path)[0]) < count:
            await asyncio.sleep(0.02)
    return found


async def test_every_event_with_fsync_always_survives_a_kill(vm: SimulatedVM,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "rec.jsonl"
    async with running("record", vm.socket_path, "-o", str(out), "--fsync", "always") as cli:
        await cli.wait_line("recording to", "err")
        before = time.time()
        vm.machine.rtc_change(5)
        vm.machine.io_error("disk0", "write")
        vm.machine.stop()
        await until_recorded(out, 3)
        cli.proc.kill()  # a crash: nothing written may be lost
        await cli.wait()
    found, report = records(out)
    assert report == ReadReport()
    assert [(r.vm, r.direction) for r in found] == [("rec", "event")] * 3  # its query-name
    assert [r.message_value()["event"] for r in found] == ["RTC_CHANGE", "BLOCK_IO_ERROR",
                                                         "STOP"]
    assert all(before - 1 <= r.received <= time.time() for r in found)
    assert found[0].message_value()["data"] == {"offset": 5}


async def test_count_stops_and_sigterm_closes_cleanly(vm: SimulatedVM, tmp_path: Path) -> None:
    out = tmp_path / "rec.jsonl"
    async with running("record", vm.socket_path, "-o", str(out), "--count", "2") as cli:
        await cli.wait_line("recording to", "err")
        for offset in range(4):
            vm.machine.rtc_change(offset)
        assert await cli.wait() == 0
    assert [r.message_value()["data"]["offset"] for r in records(out)[0]] == [0, 1]
    assert cli.err[-1] == f"qmpevents record: 2 events (2 records) written to {out}\n"
    async with running("record", vm.socket_path, "-o", str(out), "--count", "1") as cli:
        await cli.wait_line("recording to", "err")
        vm.machine.rtc_change(4)
        assert await cli.wait() == 0
    assert cli.err[-1] == f"qmpevents record: 1 event (1 record) written to {out}\n"

    for signum in (signal.SIGTERM, signal.SIGINT):
        async with running("record", "-vv", vm.socket_path, "-o", str(out),
                           "--fsync", "never") as cli:
            await cli.wait_line("recording to", "err")
            vm.machine.rtc_change(10 + signum)
            await cli.wait_line("recorded event message", "err")  # received, not yet flushed
            cli.proc.send_signal(signum)
            assert await cli.wait() == 0
        assert "Traceback" not in "".join(cli.err)
        assert out.read_bytes().endswith(b"\n")
    found, report = records(out)
    assert report == ReadReport()
    # --fsync never still closes (and so flushes) the file on a signal.
    assert [r.message_value()["data"]["offset"] for r in found] == [
        0, 1, 4, 10 + signal.SIGTERM, 10 + signal.SIGINT]


async def test_all_messages_both_ways_in_wire_order(vm: SimulatedVM, tmp_path: Path) -> None:
    out = tmp_path / "all.jsonl"
    async with running("record", vm.socket_path, "-o", str(out), "--all-messages",
                       "--count", "2") as cli:
        await cli.wait_line("recording to", "err")
        vm.machine.rtc_change(1)
        vm.machine.stop()
        assert await cli.wait() == 0
    found, _ = records(out)
    directions = [r.direction for r in found]
    assert directions == ["in", "out", "in", "out", "in", "event", "event"]
    greeting, capabilities, reply, name, _, *events = (r.message_value() for r in found)
    assert name["execute"] == "query-name"  # the VM's own name names it
    assert "QMP" in greeting
    assert capabilities["execute"] == "qmp_capabilities"
    assert reply["return"] == {}
    assert [e["event"] for e in events] == ["RTC_CHANGE", "STOP"]


@pytest.mark.parametrize("pretty", [False, True], ids=["lines", "pretty"])
async def test_all_messages_names_the_vm_as_plain_record_does(short_tmp: str, tmp_path: Path,
                                                              pretty: bool) -> None:
    """A newcomer's finding: with --all-messages every record said the socket's stem
    (``q``) although the VM's query-name, in the same file, said ``realvm``."""
    sock = os.path.join(short_tmp, "q.sock")
    qmp = f"unix:{sock},pretty=on" if pretty else f"unix:{sock}"
    async with SimulatedVM(qmp=qmp, profile="qemu-7.2", name="realvm") as vm:
        names: dict[str, set[str]] = {}
        for mode, target in (("plain", sock), ("all", sock), ("all-named", f"web9={sock}")):
            out = tmp_path / f"{mode}.jsonl"
            extra = () if mode == "plain" else ("--all-messages",)
            async with running("record", target, "-o", str(out), "--count", "2",
                               *extra) as cli:
                await cli.wait_line("recording to", "err")
                vm.machine.stop()
                vm.machine.cont()  # STOP, RESUME: the same two every time
                assert await cli.wait() == 0
            found, _ = records(out)
            names[mode] = {r.vm for r in found}
            if mode == "all":
                replies = [r.message_value() for r in found if r.direction == "in"]
                assert {"return": {"name": "realvm"}} in [
                    {"return": m["return"]} for m in replies if "return" in m]
                assert [r.direction for r in found].count("event") == 2
    assert names == {"plain": {"realvm"}, "all": {"realvm"}, "all-named": {"web9"}}


async def test_torn_last_line_is_skipped_on_read(vm: SimulatedVM, tmp_path: Path) -> None:
    out = tmp_path / "torn.jsonl"
    async with running("record", vm.socket_path, "-o", str(out), "--count", "2") as cli:
        await cli.wait_line("recording to", "err")
        vm.machine.rtc_change(1)
        vm.machine.rtc_change(2)
        assert await cli.wait() == 0
    with out.open("ab") as file:  # what a crash in the middle of a write leaves
        file.write(b'{"vm": "qmp", "received": 1.0, "direction": "event", "message": {"eve')
    found, report = records(out)
    assert len(found) == 2 and report.torn_tail and report.bad_lines == 0
    status, printed, err = await run("replay", str(out), "--print", "--json")
    assert status == 0
    assert [json.loads(line)["data"]["offset"] for line in printed.splitlines()] == [1, 2]
    assert "torn" in err and "Traceback" not in err
    assert err.startswith("qmpevents replay: ") and err.count("\n") == 1  # no log line


async def test_malformed_lines_are_one_note_and_a_file_of_none_is_an_error(
        tmp_path: Path) -> None:
    """Each bad line was also a raw WARNING log record on stderr, and a file with
    no record at all was replayed as an empty one, exit 0 (the new user's finding)."""
    record = (b'{"vm": "qmp", "received": 1.0, "direction": "event", "message": '
              b'{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}}\n')
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(record + b"garbage\n" + record + b"[1]\n")
    status, printed, err = await run("replay", str(mixed), "--print")
    assert status == 0 and len(printed.splitlines()) == 2
    assert err == "qmpevents replay: 2 malformed lines skipped (the first: line 2)\n"
    garbage = tmp_path / "garbage.jsonl"
    for text in (b"garbage\n", b"garbage"):  # without a newline it looked like a torn line
        garbage.write_bytes(text)
        status, printed, err = await run("replay", str(garbage), "--print")
        assert (status, printed) == (2, "")
        assert err == (f"qmpevents replay: error: {garbage} is not a recording: "
                       "no line of it is a record\n")


async def test_a_file_with_no_line_is_not_a_recording(tmp_path: Path) -> None:
    """An empty file (record against a busy monitor leaves one) was replayed as
    nothing, exit 0 (the newcomer's finding)."""
    empty = tmp_path / "empty.jsonl"
    for text in (b"", b"\n\n  \n"):
        empty.write_bytes(text)
        for mode in (("--print",), ("--serve", f"unix:{tmp_path}/e.sock")):
            status, printed, err = await run("replay", str(empty), *mode)
            assert (status, printed) == (2, "")
            assert err == f"qmpevents replay: error: {empty} holds no record\n"


async def test_replay_serve_ends_cleanly_on_sigterm(tmp_path: Path) -> None:
    """It exited 143 and left its socket (the newcomer's finding); serve exits 0."""
    recording = tmp_path / "r.jsonl"
    write_recording(recording, gap=0.0)
    sock = f"{tmp_path}/r.sock"
    async with running("replay", str(recording), "--serve", f"unix:{sock}") as cli:
        await cli.wait_line("waiting for a client", "err")
        assert os.path.exists(sock)
        cli.proc.send_signal(signal.SIGTERM)
        assert await cli.wait() == 0
    assert not os.path.exists(sock)


@pytest.mark.parametrize("args", [
    ("record", "x.sock"),                                  # no -o
    ("record", "x.sock", "-o", "/nonexistent-dir/f.jsonl"),
    ("record", "x.sock", "-o", "f.jsonl", "--fsync", "sometimes"),
    ("record", "x.sock", "-o", "f.jsonl", "--fsync-interval", "0"),
    ("replay", "f.jsonl"),                                 # neither --print nor --serve
    ("replay", "/nonexistent.jsonl", "--print"),
    ("replay", "f.jsonl", "--serve", "unix:/tmp/x", "--speed", "0"),
    ("replay", "f.jsonl", "--serve", "unix:/tmp/x", "--speed", "2", "--as-fast-as-possible"),
])
async def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    status, out, err = await run(*args)
    assert (status, out) == (2, "")
    one_line_error(err)


async def test_record_unreachable_exits_3(tmp_path: Path) -> None:
    status, _, err = await run("record", "/tmp/qmpev-nothing.sock", "-o",
                               str(tmp_path / "r.jsonl"))
    assert status == 3
    assert "cannot connect" in err and "Traceback" not in err


# -- replay --------------------------------------------------------------------

LINES = [  # spacing and key order as a recording keeps them: replayed byte for byte
    b'{"timestamp": {"seconds": 1700000000, "microseconds": 1}, "event": "STOP"}',
    b'{"event":"RTC_CHANGE","data":{"offset":78},'
    b'"timestamp":{"seconds":1700000001,"microseconds":2}}',
    b'{"timestamp": {"seconds": 1700000002, "microseconds": 3}, "event": "X_NEW",'
    b' "data": {"a": [1, 2]}}',
]


def write_recording(path: Path, gap: float) -> None:
    writer = RecordingWriter(str(path), fsync="never")
    for number, line in enumerate(LINES):
        writer.write("vm1", line, received=1000.0 + number * gap)
    writer.write("vm1", b'{"execute": "query-status"}', direction="out", received=1000.5)
    writer.close()


async def _replayed(path: Path, sock: str, *pace: str) -> tuple[list[bytes], list[float]]:
    """Serve *path*, connect, negotiate: the event lines and when each arrived."""
    async with running("replay", str(path), "--serve", f"unix:{sock}", *pace) as cli:
        await cli.wait_line("waiting for a client", "err")
        client = await RawQMP.unix(sock)
        greeting = await client.greeting()
        assert greeting["QMP"]["version"]["qemu"]["major"] == 7
        await client.send(b'{"execute": "qmp_capabilities"}\r\n')
        assert await client.line() == b'{"return": {}}\r\n'
        lines, times = [], []
        for _ in LINES:
            lines.append(await client.line())
            times.append(time.monotonic())
        assert await client.eof() == b""
        assert await cli.wait() == 0
    assert "Traceback" not in "".join(cli.err)
    return lines, times


async def test_replay_serves_the_recorded_lines_byte_for_byte(tmp_path: Path,
                                                              short_tmp: str) -> None:
    recording = tmp_path / "r.jsonl"
    write_recording(recording, gap=30.0)  # 30 s gaps: only --as-fast-as-possible is quick
    lines, _ = await _replayed(recording, os.path.join(short_tmp, "r.sock"),
                               "--as-fast-as-possible")
    assert lines == [line + b"\r\n" for line in LINES]


async def test_replay_speed_scales_the_gaps(tmp_path: Path, short_tmp: str) -> None:
    recording = tmp_path / "r.jsonl"
    write_recording(recording, gap=2.0)
    lines, times = await _replayed(recording, os.path.join(short_tmp, "r.sock"), "--speed", "10")
    assert lines == [line + b"\r\n" for line in LINES]
    assert times[2] - times[0] >= 0.35  # 2 x 2 s / 10, less scheduling slack
    assert times[2] - times[0] < 3.0


async def test_replay_print_text_and_torn_tail_with_serve(tmp_path: Path,
                                                         short_tmp: str) -> None:
    recording = tmp_path / "r.jsonl"
    write_recording(recording, gap=0.0)
    status, out, err = await run("replay", str(recording), "--print")
    assert (status, err) == (0, "")
    assert [line.split()[1:3] for line in out.splitlines()] == [
        ["vm1", "STOP"], ["vm1", "RTC_CHANGE"], ["vm1", "X_NEW"]]
    with recording.open("ab") as file:
        file.write(b'{"vm": "vm1", "rec')
    sock = os.path.join(short_tmp, "t.sock")
    async with running("replay", str(recording), "--serve", f"unix:{sock}",
                       "--as-fast-as-possible") as cli:
        await cli.wait_line("torn", "err")
        await cli.wait_line("waiting for a client", "err")


TWO_VMS = [(vm, b'{"timestamp": {"seconds": %d, "microseconds": 0}, "event": "%s"}' % (
    1700000000 + number, name.encode())) for number, (vm, name) in enumerate(
        [("vm", "STOP"), ("web2", "RESET"), ("vm", "RESUME"), ("web2", "STOP")])]


def write_two_vms(path: Path, gap: float = 0.01) -> None:
    writer = RecordingWriter(str(path), fsync="never")
    for number, (vm, line) in enumerate(TWO_VMS):
        writer.write(vm, line, received=1000.0 + number * gap)
    writer.close()


async def test_replay_of_several_vms_on_one_socket_says_how_instead_of_merging(
        tmp_path: Path, short_tmp: str) -> None:
    """A newcomer's finding: two VMs served on one socket were shown as one VM, ``replay``."""
    recording = tmp_path / "two.jsonl"
    write_two_vms(recording)
    status, _, err = await run("replay", str(recording), "--serve",
                               f"unix:{short_tmp}/replay.sock")
    assert status == 2
    one_line_error(err)
    assert "2 VMs (vm, web2)" in err and "--vm NAME" in err and "--serve unix:DIR/" in err
    assert not os.path.exists(f"{short_tmp}/replay.sock")


async def test_replay_of_one_vm_answers_query_name_with_its_recorded_name(
        tmp_path: Path, short_tmp: str) -> None:
    recording = tmp_path / "two.jsonl"
    write_two_vms(recording)
    sock = f"{short_tmp}/replay.sock"
    serve = ("replay", str(recording), "--vm", "web2", "--serve", f"unix:{sock}",
             "--as-fast-as-possible")
    async with running(*serve) as cli:
        await cli.wait_line("2 events; waiting for a client", "err")
        client = await RawQMP.unix(sock)
        await client.negotiate()
        _, answer = await client.execute("query-name")
        assert json.loads(answer) == {"return": {"name": "web2"}}
        await client.close()
        assert await cli.wait() == 0
    async with running(*serve) as cli:
        await cli.wait_line("waiting for a client", "err")
        status, out, err = await run("watch", sock, "--json", "--count", "2")
        assert status == 0, err
        assert await cli.wait() == 0
    assert [(e["vm"], e["event"]) for e in map(json.loads, out.splitlines())] == [
        ("web2", "RESET"), ("web2", "STOP")]  # the VM's name, not the socket's stem


async def test_replay_serves_each_vm_on_its_own_socket_in_a_directory(
        tmp_path: Path, short_tmp: str) -> None:
    recording = tmp_path / "two.jsonl"
    write_two_vms(recording)
    directory = f"{short_tmp}/replay/"  # created, with a trailing /
    async with running("replay", str(recording), "--serve", f"unix:{directory}",
                       "--as-fast-as-possible") as cli:
        await cli.wait_line("4 events of 2 VMs; waiting for a client on each", "err")
        assert sorted(os.listdir(directory)) == ["vm.sock", "web2.sock"]
        status, out, err = await run("watch", directory, "--json", "--count", "4")
        assert status == 0, err
        assert await cli.wait() == 0
    shown = [(e["vm"], e["event"]) for e in map(json.loads, out.splitlines())]
    assert sorted(shown) == sorted((vm, json.loads(line)["event"]) for vm, line in TWO_VMS)
    for vm in ("vm", "web2"):  # each VM's events in their recorded order
        assert [event for name, event in shown if name == vm] == [
            json.loads(line)["event"] for name, line in TWO_VMS if name == vm]
    assert not os.listdir(directory)  # the sockets are removed at the end
