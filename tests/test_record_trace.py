"""``record --all-messages`` splits the server's byte stream with the codec's framer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from qmpevents.cli.record import Recorder
from qmpevents.cli.targets import Target
from qmpevents.recording import ReadReport, RecordingWriter, read_recording

STOP_PRETTY = (b'{\r\n    "event": "STOP",\r\n'
               b'    "timestamp": {\r\n        "seconds": 1,\r\n        "microseconds": 2\r\n'
               b'    }\r\n}\r\n')


def _recorded(path: Path, *reads: bytes) -> tuple[list[tuple[str, object]], ReadReport]:
    writer = RecordingWriter(str(path), fsync="never")
    recorder = Recorder(writer)
    trace = recorder.tracer(Target("unix:/nowhere", "vm1", explicit=True))
    for data in reads:
        trace("in", data)
    writer.close()
    report = ReadReport()
    records = [(r.direction, r.message_value()) for r in read_recording(str(path), report)]
    return records, report


def test_messages_split_across_reads_and_spread_over_lines(tmp_path: Path) -> None:
    greeting = b'{"QMP": {"version": {}, "capabilities": []}}\r\n'
    stream = greeting + b'{"return": {}}\r\n' + STOP_PRETTY
    # every read boundary, including inside the pretty-printed event
    for cut in range(1, len(stream)):
        records, report = _recorded(tmp_path / f"r{cut}.jsonl", stream[:cut], stream[cut:])
        assert records == [
            ("in", {"QMP": {"version": {}, "capabilities": []}}),
            ("in", {"return": {}}),
            ("event", {"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}),
        ], cut
        assert report.bad_lines == 0


def test_what_is_not_json_is_not_recorded(tmp_path: Path) -> None:
    records, report = _recorded(
        tmp_path / "r.jsonl", b'garbage\r\n{"return": {}}\r\n{"event": "RESET", "timestamp": '
                  b'{"seconds": 1, "microseconds": 0}} {"return": 1}\r\n')
    assert records == [("in", {"return": {}}),
                       ("event", {"event": "RESET",
                                  "timestamp": {"seconds": 1, "microseconds": 0}}),
                       ("in", {"return": 1})]
    assert report.bad_lines == 0


async def test_a_big_pretty_message_is_parsed_a_slice_per_loop_iteration(tmp_path: Path) -> None:
    import asyncio

    from qmpevents.cli.record import TRACE_SLICE

    path = tmp_path / "big.jsonl"
    writer = RecordingWriter(str(path), fsync="never")
    trace = Recorder(writer).tracer(Target("unix:/nowhere", "vm1", explicit=True))
    items = b",\r\n".join(b'        "item-%d"' % i for i in range(20_000))
    big = b'{\r\n    "return": [\r\n' + items + b"\r\n    ]\r\n}\r\n"  # pretty: the exact path
    assert len(big) > 50 * TRACE_SLICE
    trace("in", big)
    iterations = 0
    while not path.read_bytes():
        await asyncio.sleep(0)  # one loop iteration: the tracer goes on by one slice
        iterations += 1
        assert iterations < 10 * len(big) // TRACE_SLICE
    writer.close()
    assert iterations > len(big) // TRACE_SLICE // 2  # it yielded, slice after slice
    (record,) = list(read_recording(str(path), ReadReport()))
    assert len(record.message_value()["return"]) == 20_000


def test_records_are_held_until_the_follower_names_the_vm_then_named_so(
        tmp_path: Path) -> None:
    """The follower names the VM (its query-name) once connected: until then the
    connection's records are held, then all written under that name (a newcomer saw
    the socket's stem, ``q``, on every record)."""
    path = tmp_path / "named.jsonl"
    writer = RecordingWriter(str(path), fsync="never")
    recorder = Recorder(writer)
    target = Target("unix:/run/q.sock", "q")
    trace = recorder.tracer(target)
    trace("in", b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
    trace("out", b'{"execute": "query-name", "id": "qe2"}')
    trace("in", STOP_PRETTY)  # an event sent before the reply
    trace("in", b'{"return": {"name": "realvm"}, "id": "qe2"}\r\n')
    assert writer.records == 0  # held: the follower has not named it yet
    recorder.on_link(replace(target, name="realvm"), object())  # as VMs calls it
    trace("in", STOP_PRETTY)
    recorder.on_link(replace(target, name="realvm"), None)
    writer.close()
    found = list(read_recording(str(path), ReadReport()))
    assert [(r.vm, r.direction) for r in found] == [
        ("realvm", "in"), ("realvm", "out"), ("realvm", "event"), ("realvm", "in"),
        ("realvm", "event")]
    assert recorder.events == 2


def test_a_connection_never_followed_keeps_its_records_under_its_target(
        tmp_path: Path) -> None:
    path = tmp_path / "unnamed.jsonl"
    writer = RecordingWriter(str(path), fsync="never")
    recorder = Recorder(writer)
    target = Target("unix:/run/q.sock", "q")
    recorder.tracer(target)("in", b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
    second = recorder.tracer(target)  # that connection failed; the retry's connection
    assert writer.records == 1  # the failed one's record, under the target's name
    explicit = Target("unix:/run/w.sock", "web1", explicit=True)  # NAME=ADDRESS: at once
    recorder.tracer(explicit)("in", STOP_PRETTY)
    second("in", STOP_PRETTY)
    recorder.on_link(target, object())
    writer.close()
    assert [r.vm for r in read_recording(str(path), ReadReport())] == ["q", "web1", "q"]


def test_a_server_that_floods_before_it_is_named_is_recorded_under_its_path(
        tmp_path: Path) -> None:
    """What is held until the follower names the VM stays bounded: past the limit the
    records go out at once under the target's own name (memory, not just naming)."""
    from qmpevents.cli.record import NAMING_HOLD_LIMIT

    path = tmp_path / "flood.jsonl"
    writer = RecordingWriter(str(path), fsync="never")
    recorder = Recorder(writer)
    trace = recorder.tracer(Target("unix:/run/q.sock", "q"))
    event = b'{"event": "RESET", "timestamp": {"seconds": 1, "microseconds": 0}}\r\n'
    count = 2 * NAMING_HOLD_LIMIT // len(event)  # twice the limit
    for _ in range(count):
        trace("in", event)  # one read per event: no parsing left for a later iteration
    assert writer.records == count  # nothing held back: all written, in order
    trace("in", event)
    assert writer.records == count + 1
    writer.close()
    assert {r.vm for r in read_recording(str(path), ReadReport())} == {"q"}


def test_records_of_a_vm_never_named_are_written_when_the_recording_ends(
        tmp_path: Path) -> None:
    """--timeout or a signal before the follower named the VM: what its connection
    said is still recorded, under the target's name (a reviewer saw it dropped)."""
    path = tmp_path / "ended.jsonl"
    writer = RecordingWriter(str(path), fsync="never")
    recorder = Recorder(writer)
    trace = recorder.tracer(Target("unix:/run/q.sock", "q"))
    trace("in", b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
    trace("in", STOP_PRETTY)
    assert writer.records == 0  # held: not named yet
    recorder.settle_all()  # as the recording's end does
    writer.close()
    assert [(r.vm, r.direction) for r in read_recording(str(path), ReadReport())] == [
        ("q", "in"), ("q", "event")]


def test_a_message_in_qemus_syntax_is_recorded_as_its_object(tmp_path: Path) -> None:
    """A text QEMU's parser takes but that is not JSON was recorded as one JSON string."""
    records, report = _recorded(
        tmp_path / "r.jsonl", b"{'event': 'STOP', 'timestamp': {'seconds': 1, 'microseconds': 2}}"
                              b"\r\n{'return': 'a\xc0\x80b'} {\"return\": 1}\r\n")
    assert records == [("event", {"event": "STOP",
                                  "timestamp": {"seconds": 1, "microseconds": 2}}),
                       ("in", {"return": "a\0b"}), ("in", {"return": 1})]
    assert report.bad_lines == 0
