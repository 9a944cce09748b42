"""CLI tools that must survive what they read (issue 13): ``watch``, ``replay``, ``record``.

Hostile input comes from a simulated VM whose broadcaster is handed raw event
lines (what a broken or hostile server could send), or from a recording file
written by hand.  Every test ends with the command still working: a bad event
is shown raw or skipped and counted, never the end of following.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest
from cli_process import joined, one_line_error, plain, run, running

from qmpevents.recording import ReadReport, RecordingWriter, read_recording
from qmpevents.sim import SimulatedVM

VNC_CLIENT_STRING = (b'{"timestamp": {"seconds": 1700000000, "microseconds": 1}, '
                     b'"event": "VNC_CONNECTED", "data": {"client": "a string", "server": 7}}')
FAR_FUTURE = (b'{"timestamp": {"seconds": 99999999999999999, "microseconds": 5}, '
              b'"event": "RESET", "data": {"guest": true, "reason": "guest-reset"}}')


@pytest.fixture
async def vm() -> AsyncIterator[SimulatedVM]:
    async with SimulatedVM(name="hostile") as machine:
        yield machine


def publish(vm: SimulatedVM, *lines: bytes) -> None:
    for line in lines:
        vm.server.broadcaster.publish_line(line + b"\r\n")


# -- watch ---------------------------------------------------------------------


@pytest.mark.subprocess
async def test_watch_text_survives_malformed_events(vm: SimulatedVM,
                                                    figures: Callable[[str, object], None]
                                                    ) -> None:
    async with running("watch", vm.socket_path, "--count", "3") as cli:
        await joined(vm)
        publish(vm, VNC_CLIENT_STRING, FAR_FUTURE)
        vm.machine.stop()  # a good event after the bad ones: still followed
        assert await cli.wait() == 0
    lines = [plain(line).split() for line in cli.out]
    assert [line[1:3] for line in lines] == [["hostile", "VNC_CONNECTED"],
                                            ["hostile", "RESET"], ["hostile", "STOP"]]
    assert lines[0][3:] == ['client="a', 'string"', "server=7"]  # in full, not shortened
    assert lines[1][0] == "99999999999999999s"  # no calendar holds it: the seconds as sent
    err = "".join(cli.err)
    assert "lost" not in err and "Traceback" not in err and "never retrieved" not in err, err
    figures("watch: malformed events survived (string VNC client, year 3e9 timestamp)",
            "2 of 2, following went on")


@pytest.mark.subprocess
async def test_watch_json_passes_a_far_future_timestamp_through(vm: SimulatedVM) -> None:
    async with running("watch", vm.socket_path, "--json", "--count", "2") as cli:
        await joined(vm)
        publish(vm, FAR_FUTURE, VNC_CLIENT_STRING)
        assert await cli.wait() == 0
    events = [msgspec.json.decode(line) for line in cli.out]
    assert [e["timestamp"]["seconds"] for e in events] == [99999999999999999, 1700000000]
    assert cli.err == []


# -- replay --print --------------------------------------------------------------


def _record_line(message: bytes, vm: str = "vm1") -> bytes:
    return b'{"vm": "%s", "received": 1000.5, "direction": "event", "message": %s}\n' % (
        vm.encode(), message)


@pytest.mark.subprocess
@pytest.mark.parametrize("json_mode", [False, True])
async def test_replay_print_goes_past_records_that_are_not_events(tmp_path: Path,
                                                                  json_mode: bool) -> None:
    recording = tmp_path / "odd.jsonl"
    good = b'{"timestamp": {"seconds": 1700000000, "microseconds": 1}, "event": "STOP"}'
    recording.write_bytes(b"".join([
        _record_line(b"[1, 2, 3]"),
        _record_line(b'"just a string"'),
        _record_line(b'{"event": "STOP"}'),  # no timestamp
        _record_line(VNC_CLIENT_STRING),
        _record_line(FAR_FUTURE),
        _record_line(good),
    ]))
    status, out, err = await run("replay", str(recording), "--print",
                                 *(["--json"] if json_mode else []))
    assert status == 0, err
    assert "Traceback" not in err
    lines = out.splitlines()
    if json_mode:
        shown = [msgspec.json.decode(line)["event"] for line in lines]
        assert shown == ["VNC_CONNECTED", "RESET", "STOP"]
        assert "3 records are not events (skipped)" in err
    else:
        assert [line.split()[1:3] for line in lines[3:]] == [
            ["vm1", "VNC_CONNECTED"], ["vm1", "RESET"], ["vm1", "STOP"]]
        assert [line.split(maxsplit=5)[2:] for line in lines[:3]] == [
            ["(not", "an", "event)", "[1, 2, 3]"],
            ["(not", "an", "event)", '"just a string"'],
            ["(not", "an", "event)", '{"event": "STOP"}']]
        assert "3 records are not events (shown raw)" in err


# -- record --all-messages ----------------------------------------------------------

INJECTION = (b'0,"vm":"other-vm","direction":"event","message":{"timestamp":'
             b'{"seconds":1700000000,"microseconds":0},"event":"SHUTDOWN","data":'
             b'{"guest":false,"reason":"host-qmp-quit"}}')


@pytest.mark.subprocess
async def test_all_messages_cannot_forge_record_fields(vm: SimulatedVM, tmp_path: Path) -> None:
    out = tmp_path / "all.jsonl"
    async with running("record", vm.socket_path, "-o", str(out), "--all-messages",
                       "--count", "1") as cli:
        await cli.wait_line("recording to", "err")
        await joined(vm)
        publish(vm, INJECTION)
        vm.machine.stop()  # the one real event: --count 1 ends the recording after it
        assert await cli.wait() == 0
    report = ReadReport()
    found = list(read_recording(str(out), report))
    assert report == ReadReport()
    assert {record.vm for record in found} == {"hostile"}  # its query-name, every record
    assert {record.direction for record in found} <= {"in", "out", "event"}
    assert any(b"other-vm" in r.message_bytes() for r in found)  # kept, inside a message
    status, shown, err = await run("replay", str(out), "--print", "--vm", "other-vm")
    assert (status, shown) == (1, ""), err  # no event of that VM: said, and exit 1
    assert "no event of VM other-vm" in err
    status, shown, err = await run("replay", str(out), "--print")
    assert {line.split()[1] for line in shown.splitlines()} == {"hostile"}, err


def test_writer_stores_a_non_json_message_as_a_string(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    writer = RecordingWriter(str(path), fsync="never")
    writer.write("vm1", INJECTION, direction="in")
    writer.write("vm1", b'{"return": {}} {"return": {}}', direction="in")  # two values
    writer.write("vm1", b'{"return": {}, "id": "\xff"}', direction="in")  # not UTF-8
    writer.write("vm1", b' {"return": {}}\r', direction="in")
    writer.close()
    found = list(read_recording(str(path)))
    assert [r.vm for r in found] == ["vm1"] * 4
    assert [msgspec.json.decode(r.message_bytes()) for r in found] == [
        INJECTION.decode(), '{"return": {}} {"return": {}}', '{"return": {}, "id": "\\xff"}',
        {"return": {}}]


# -- record durability and errors ------------------------------------------------------


@pytest.mark.subprocess
@pytest.mark.parametrize("policy", ["interval", "never"])
async def test_quiet_recording_killed_keeps_every_event(vm: SimulatedVM, tmp_path: Path,
                                                        policy: str) -> None:
    """3 events, then quiet, then SIGKILL: the timer (interval) or the OS (never) has them."""
    out = tmp_path / f"{policy}.jsonl"
    async with running("record", vm.socket_path, "-o", str(out), "--fsync", policy,
                       "--fsync-interval", "0.2") as cli:
        await cli.wait_line("recording to", "err")
        vm.machine.rtc_change(1)
        vm.machine.rtc_change(2)
        vm.machine.stop()
        # Condition: the file has all 3 without any later event (polled, with a deadline).
        async with asyncio.timeout(10):
            while len(list(read_recording(str(out)))) < 3:
                await asyncio.sleep(0.02)
        cli.proc.send_signal(signal.SIGKILL)
        assert await cli.wait() == -signal.SIGKILL
    assert [r.message_value()["event"] for r in read_recording(str(out))] == [
        "RTC_CHANGE", "RTC_CHANGE", "STOP"]


def test_interval_policy_syncs_on_its_timer(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The fsync itself, not only the flush: due ``interval`` after the first unsynced record."""
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    now = [100.0]
    writer = RecordingWriter(str(tmp_path / "t.jsonl"), fsync="interval", interval=1.0,
                             clock=lambda: now[0])
    assert writer.sync_due_in() is None  # nothing to sync
    writer.write("vm1", b'{"event": "STOP"}')
    assert synced == [] and writer.sync_due_in() == pytest.approx(1.0)
    now[0] += 0.4
    writer.write("vm1", b'{"event": "RESUME"}')
    assert writer.sync_due_in() == pytest.approx(0.6)  # the oldest unsynced record sets it
    now[0] += 0.6
    writer.sync_if_due()
    assert len(synced) == 1 and writer.sync_due_in() is None
    writer.close()


@pytest.mark.subprocess
@pytest.mark.parametrize("policy", ["always", "interval", "never"])
async def test_record_to_dev_full_says_one_line_and_exits_1(vm: SimulatedVM,
                                                            policy: str) -> None:
    async with running("record", vm.socket_path, "-o", "/dev/full", "--fsync", policy,
                       "--fsync-interval", "0.1") as cli:
        await cli.wait_line("recording to", "err")
        vm.machine.stop()
        assert await cli.wait() == 1
    err = "".join(cli.err).replace(next(e for e in cli.err if "recording to" in e), "")
    one_line_error(err)
    assert "/dev/full" in err and "No space left on device" in err


# -- serve --socket-mode ----------------------------------------------------------------


@pytest.mark.subprocess
@pytest.mark.parametrize("mode", ["-1", "77777", "1000", "0o7777", "8"])
async def test_socket_mode_outside_0_to_0777_is_a_usage_error(mode: str,
                                                              tmp_path: Path) -> None:
    status, _, err = await run("serve", "--qmp", f"unix:{tmp_path}/s.sock",
                               f"--socket-mode={mode}")
    assert status == 2, err
    assert "--socket-mode" in err and "Traceback" not in err
    assert not (tmp_path / "s.sock").exists()
