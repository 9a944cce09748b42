"""What anyone with publish rights on ``qmp.>`` can put in the stream, and what the consumers
make of it: against a real nats-server.

A payload is an event only if it decodes as one QMP event object; then its
record (``record nats://``) or line (``watch nats:// --json``) is that one
JSON text on one line, so it can never add or change records.  Anything
else is counted and skipped.  A ``Qmp-Received`` that is not a finite time
never loses the event.  Subjects name each host, VM and event by a token of
its own.  ``--timeout`` is wall time from the start, connecting included.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from cli_process import QMPEVENTS, run
from fleet_support import NatsServer

from qmpevents.fleet.broker import BrokerOptions, StreamSettings, connect, ensure_stream
from qmpevents.fleet.consumer import fleet_events
from qmpevents.fleet.publisher import Wire
from qmpevents.fleet.spool import SpoolRecord
from qmpevents.fleet.subjects import message_id
from qmpevents.recording import ReadReport, read_recording

pytestmark = pytest.mark.service  # starts nats-server

STOP = b'{"event": "STOP", "timestamp": {"seconds": 1700000000, "microseconds": 5}}'
HEADERS = {"Qmp-Host": "web1", "Qmp-Vm": "vm1", "Qmp-Received": "1700000000.5", "Qmp-Seq": "1"}
#: A STOP whose data holds, on a line of its own, what reads as a record of another VM.
FORGED = (b'{"event": "STOP", "timestamp": {"seconds": 1700000000, "microseconds": 5}, '
          b'"data": {"x":\n{"vm": "db1/prod", "received": 1700000001.0, "direction": "event", '
          b'"message": {"event": "SHUTDOWN", "timestamp": {"seconds": 1700000001, '
          b'"microseconds": 0}, "data": {"guest": false, "reason": "host-qmp-quit"}}}\r\n}}')
NOT_EVENTS = [b"[" * 50 + b"]" * 50, b"not json at all", "\xff\xfe".encode(), b"\xff\xfe",
              STOP + b"\n" + STOP]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    await server.start()
    try:
        nc = await connect(BrokerOptions([server.url]))
        try:
            await ensure_stream(nc.jetstream(), StreamSettings("QMP"))
        finally:
            await nc.close()
        yield server
    finally:
        await server.stop()


async def publish(url: str, messages: list[tuple[str, dict[str, str] | None, bytes]]) -> None:
    """What an attacker with publish rights does: JetStream publishes, each acknowledged."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for subject, headers, payload in messages:
            await js.publish(subject, payload, headers=headers)
    finally:
        await nc.close()


async def test_a_payload_with_line_breaks_cannot_forge_records_or_lines(
        broker: NatsServer, tmp_path: Path) -> None:
    await publish(broker.url, [("qmp.web1.vm1.STOP", HEADERS, FORGED),
                               *(("qmp.web1.vm1.STOP", HEADERS, bad) for bad in NOT_EVENTS),
                               ("qmp.web1.vm1.STOP", HEADERS, STOP)])
    out = tmp_path / "fleet.jsonl"
    status, _, err = await run("record", broker.url, "--since", "all", "-o", str(out),
                               "--count", "2")
    assert status == 0, err
    assert f"{len(NOT_EVENTS)} messages that are not QMP events skipped" in err
    assert len(out.read_bytes().splitlines()) == 2  # one line per event
    report = ReadReport()
    records = list(read_recording(str(out), report))
    assert (report.bad_lines, report.torn_tail) == (0, False)
    assert [(r.vm, r.message_value()["event"]) for r in records] == [("web1/vm1", "STOP")] * 2
    assert records[0].message_value() == json.loads(FORGED)  # kept whole, same JSON
    status, printed, err = await run("replay", str(out), "--print", "--json")
    assert status == 0 and "malformed" not in err
    assert [json.loads(line)["vm"] for line in printed.splitlines()] == ["web1/vm1"] * 2

    status, shown, err = await run("watch", broker.url, "--since", "all", "--json",
                                   "--count", "2")
    assert status == 0, err
    lines = shown.splitlines()
    assert len(lines) == 2  # one JSON object per line, as the README promises
    assert [(json.loads(line)["host"], json.loads(line)["event"]) for line in lines] == [
        ("web1", "STOP")] * 2
    assert f"{len(NOT_EVENTS)} messages that are not QMP events skipped" in err


@pytest.mark.parametrize("durable", [None, "ops"])
async def test_a_received_header_that_is_not_a_finite_time_keeps_the_event(
        broker: NatsServer, tmp_path: Path, durable: str | None) -> None:
    odd = ["nan", "inf", "-inf", "1e400", "soon", ""]
    before = time.time()
    await publish(broker.url, [
        *(("qmp.web1.vm1.STOP", {**HEADERS, "Qmp-Received": value}, STOP) for value in odd),
        ("qmp.web1.vm1.STOP", {"Qmp-Host": "web1", "Qmp-Vm": "vm1"}, STOP),  # no time
        ("qmp.web%2E1.vm%201.STOP", None, STOP),  # no headers: names from the subject
        ("qmp.web1.vm1.STOP", HEADERS, STOP)])
    after = time.time()
    out = tmp_path / "fleet.jsonl"
    extra = ("--durable", durable) if durable else ()
    status, _, err = await run("record", broker.url, "--since", "all", "-o", str(out),
                               "--count", str(len(odd) + 3), *extra)
    assert status == 0, err
    report = ReadReport()
    records = list(read_recording(str(out), report))
    assert report.bad_lines == 0
    assert len(records) == len(odd) + 3
    for record in records[:-1]:  # when the stream stored it
        assert math.isfinite(record.received)
        assert before - 1 <= record.received <= after + 1, record
    assert records[-1].received == 1700000000.5
    assert [r.vm for r in records] == ["web1/vm1"] * (len(odd) + 1) + ["web.1/vm 1", "web1/vm1"]
    status, printed, err = await run("replay", str(out), "--print", "--json")
    assert status == 0 and "malformed" not in err
    assert len(printed.splitlines()) == len(odd) + 3


NAMES = [("h.o.st", "s", "STOP/x y"), ("h_o_st", "s", "STOP/x y"), ("h o st", "s", "STOP/x_y"),
         ("h", "web.1", "STOP"), ("h", "web_1", "STOP"), ("h", "web 1", "STOP"),
         ("h", "web*1", "STOP"), ("h", "web>1", "STOP"), ("h", "", "STOP"), ("h", "_", "STOP"),
         ("h", "%", "STOP"), ("h", "a/b", "STOP"), ("h", "a", "b/STOP"), ("h", "vm", "")]


async def test_every_host_vm_and_event_has_a_subject_of_its_own(broker: NatsServer) -> None:
    """The agent's wire, both ways it publishes: distinct names, distinct subjects; the
    event name comes back whole (it was ``x y`` for ``STOP/x y``)."""
    records = [SpoolRecord(vm, 1764600000.0, "event", msgspec.Raw(STOP), host, seq,
                           message_id(host, vm, 1700000000, 5, event, seq))
               for seq, (host, vm, event) in enumerate(NAMES, start=1)]
    nc = await connect(BrokerOptions([broker.url]))
    try:
        seen = await nc.subscribe("qmp.>")
        for frames in (True, False):
            wire = Wire(nc, "QMP", frames=frames)
            for record in records:
                await wire.publish(record, "_INBOX.ignored")
            await wire.flush()
        got = [(await seen.next_msg(timeout=5)).subject for _ in range(2 * len(NAMES))]
    finally:
        await nc.close()
    assert got[:len(NAMES)] == got[len(NAMES):]  # frames and publish() agree
    subjects = got[:len(NAMES)]
    assert len(set(subjects)) == len(NAMES)
    assert subjects[0] == "qmp.h%2Eo%2Est.s.STOP/x%20y"
    assert all(len(s.split(".")) == 4 and all(s.split(".")) for s in subjects)
    # A subject filter names one VM: web.1's events only, not web_1's or web 1's.
    async with asyncio.timeout(10):
        async with fleet_events(BrokerOptions([broker.url]), subject="qmp.h.web%2E1.*",
                                since="all") as events:
            first = await anext(aiter(events))
    assert (first.host, first.vm, first.subject) == ("h", "web.1", "qmp.h.web%2E1.STOP")


async def stalling_port() -> tuple[asyncio.Server, int]:
    """A port that accepts and never says a word (a broker that stalls)."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client leaves
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("command", ["watch", "record"])
async def test_timeout_is_wall_time_from_the_start_connecting_included(
        command: str, tmp_path: Path) -> None:
    server, port = await stalling_port()
    try:
        args = ["-o", str(tmp_path / "r.jsonl")] if command == "record" else []
        started = time.monotonic()
        status, _, err = await run(command, f"nats://127.0.0.1:{port}", "--timeout", "1",
                                   *args, timeout=20)
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert status == (1 if command == "watch" else 0), err
    assert elapsed < 1 + 1.5, elapsed  # the interpreter's start-up and the exit, no more
    if command == "watch":
        assert "timed out after 1 s" in err


async def test_a_stdout_nobody_reads_cannot_stop_the_timeout(broker: NatsServer) -> None:
    import nats

    nc = await nats.connect(broker.url)
    try:  # core publishes into the stream: far more than a pipe and Output's bound hold
        for seq in range(20_000):
            await nc.publish("qmp.web1.vm1.STOP", STOP, headers={**HEADERS,
                                                                 "Qmp-Seq": str(seq)})
        await nc.flush()
    finally:
        await nc.close()
    read_end, write_end = os.pipe()
    try:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *QMPEVENTS, "watch", broker.url, "--since", "all", "--json", "--timeout", "2",
            stdout=write_end, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        os.close(write_end)
        write_end = -1
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 15)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        elapsed = time.monotonic() - started
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    assert proc.returncode == 1, err.decode()
    assert "timed out after 2 s" in err.decode()
    assert elapsed < 2 + 2.0, elapsed


async def test_a_long_name_cannot_stop_the_agents_publishing(broker: NatsServer) -> None:
    """The server drops a connection whose protocol line is over 4 KiB: a VM naming itself
    or an event with 5,000 characters would have stopped every event of its host."""
    long = [("h", "v" * 5000, "STOP"), ("h", "vm", "E" * 5000), ("h" * 3000, "é" * 2000, "X"),
            ("h", "vm", "STOP")]
    records = [SpoolRecord(vm, 1764600000.0, "event", msgspec.Raw(STOP), host, seq,
                           message_id(host, vm, 1700000000, 5, event, seq))
               for seq, (host, vm, event) in enumerate(long, start=1)]
    nc = await connect(BrokerOptions([broker.url]))
    try:
        acks = await nc.subscribe("_ACKS.*")
        wire = Wire(nc, "QMP")
        for n, record in enumerate(records):
            await wire.publish(record, f"_ACKS.{n}")
        await wire.flush()
        answers = [msgspec.json.decode((await acks.next_msg(timeout=5)).data)
                   for _ in records]
    finally:
        await nc.close()
    assert [a.get("seq") for a in answers] == [1, 2, 3, 4]
