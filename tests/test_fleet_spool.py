"""The agent's spool on its own: order, acknowledgement, restart, torn tails, the bound."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest

from qmpevents.fleet.spool import Position, Spool, SpoolLocked, SpoolRecord
from qmpevents.fleet.subjects import event_of, message_id, subject, token, untoken
from qmpevents.recording import read_recording


def record(number: int, vm: str = "vm1") -> SpoolRecord:
    event = b'{"timestamp": {"seconds": %d, "microseconds": 0}, "event": "STOP"}' % number
    return SpoolRecord(vm, float(number), "event", msgspec.Raw(event), "h1", number,
                       message_id("h1", vm, number, 0, "STOP", number))


async def drain(spool: Spool, limit: int = 1000) -> list[tuple[SpoolRecord, Position]]:
    return await asyncio.wait_for(spool.read(limit), 5)


NAMES = ["web1", "web.1", "web_1", "web 1", "web*1", "web>1", "web%1", "web%2E1", "a/b", "",
         "_", "%", "%%", "STOP/x y", "été", "\t", "\x1b[2J", "\ud800", "BLOCK_IO_ERROR"]


def test_subjects_are_single_tokens_one_per_name_and_ids_name_the_event() -> None:
    assert subject("web.1", "vm *2", "STOP") == "qmp.web%2E1.vm%20%2A2.STOP"
    assert subject("h.o.st", "s", "STOP/x y") == "qmp.h%2Eo%2Est.s.STOP/x%20y"
    tokens = [token(name) for name in NAMES]
    assert len(set(tokens)) == len(NAMES)  # no two names share a token
    for name, made in zip(NAMES, tokens, strict=True):
        assert made and made.isascii() and made.isprintable()
        assert not set(made) & set(".*> "), made  # one NATS subject token
        assert untoken(made) == name
    assert token("BLOCK_IO_ERROR") == "BLOCK_IO_ERROR" and token("") == "%"
    assert message_id("h", "vm", 12, 34, "STOP", 7) == "h/vm/12.000034/STOP/7"
    for name in NAMES:  # what the publisher reads back from the spooled id
        assert event_of(message_id("h/1", "v%m/", 12, 34, name, 7)) == name
    assert message_id("a/b", "c", 1, 0, "E", 1) != message_id("a", "b/c", 1, 0, "E", 1)


@pytest.mark.parametrize("long", ["E" * 5000, "é" * 5000, "%" * 200, "E" * 129])
def test_a_long_name_gets_a_short_token_of_its_own(long: str) -> None:
    made = token(long)
    assert len(made) <= 128 and "%%" in made
    assert not set(made) & set(".*> ")
    assert token(long + "x") != made and token(long[:-1]) != made
    assert "%%" not in token("E" * 128) + token("%" * 42)  # short enough: not cut


async def test_records_come_back_in_order_and_acked_ones_stay_acked(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), segment_bytes=400, fsync="always")  # several segments
    spool.open()
    for number in range(1, 21):
        assert spool.append(record(number))
    first = await drain(spool, 8)
    assert [r.seq for r, _ in first] == list(range(1, 9))
    spool.commit(first[4][1])  # 1..5 acknowledged, 6..8 in flight and then failed
    spool.rewind()
    again = await drain(spool)
    assert [r.seq for r, _ in again] == list(range(6, 21))
    spool.close()

    reopened = Spool(str(tmp_path), segment_bytes=400, fsync="always")
    reopened.open()  # a restart resumes at the first unacknowledged record
    assert [r.seq for r, _ in await drain(reopened)] == list(range(6, 21))
    reopened.close()


async def test_acknowledged_segments_are_removed(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), segment_bytes=400, fsync="never")
    spool.open()
    for number in range(1, 21):
        spool.append(record(number))
    segments = len(list(tmp_path.glob("*.jsonl")))
    assert segments > 2
    batch = await drain(spool)
    spool.commit(batch[-1][1])
    assert len(list(tmp_path.glob("*.jsonl"))) == 1  # only the segment being written
    assert spool.pending_bytes == 0
    spool.close()


async def test_a_reader_waits_for_the_next_append(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    spool.open()
    reading = asyncio.create_task(spool.read(10))
    await asyncio.sleep(0)
    assert not reading.done()
    spool.append(record(1))
    assert [r.seq for r, _ in await asyncio.wait_for(reading, 5)] == [1]
    spool.close()


async def test_a_torn_tail_is_cut_and_the_segment_is_a_recording(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), fsync="always")
    spool.open()
    spool.append(record(1))
    spool.append(record(2))
    spool.close()
    segment = next(tmp_path.glob("*.jsonl"))
    with segment.open("ab") as file:
        file.write(b'{"vm": "vm1", "rece')  # a crash in the middle of a write
    reopened = Spool(str(tmp_path), fsync="always")
    reopened.open()
    reopened.append(record(3))
    assert [r.seq for r, _ in await drain(reopened)] == [1, 2, 3]
    reopened.close()
    replayed = list(read_recording(str(segment)))  # what replay reads
    assert [r.vm for r in replayed] == ["vm1"] * 3
    assert [r.message_value()["timestamp"]["seconds"] for r in replayed] == [1, 2, 3]


async def test_a_full_spool_drops_new_events_and_keeps_the_old(tmp_path: Path) -> None:
    line = len(msgspec.json.encode(record(1))) + 1
    spool = Spool(str(tmp_path), max_bytes=3 * line + 10, fsync="never")
    spool.open()
    kept = [spool.append(record(n)) for n in range(1, 6)]
    assert kept == [True, True, True, False, False]
    assert spool.dropped == 2
    batch = await drain(spool)
    assert [r.seq for r, _ in batch] == [1, 2, 3]
    spool.close()


def test_one_agent_per_spool(tmp_path: Path) -> None:
    first = Spool(str(tmp_path))
    first.open()
    second = Spool(str(tmp_path))
    with pytest.raises(SpoolLocked):
        second.open()
    first.close()
    second.open()
    second.close()


@pytest.mark.parametrize("policy", ["interval", "never"])
async def test_a_lone_record_reaches_the_os_without_a_later_event(
        tmp_path: Path, policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker outage means nobody reads the spool: it must not sit in a user-space buffer."""
    import os

    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    spool = Spool(str(tmp_path), fsync=policy, interval=0.05)  # type: ignore[arg-type]
    spool.open()
    try:
        synced.clear()
        assert spool.append(record(1))
        segment = next(tmp_path.glob("*.jsonl"))
        await asyncio.sleep(0)  # one loop iteration: handed to the OS (a crash keeps it)
        assert segment.stat().st_size > 0
        if policy == "interval":
            async with asyncio.timeout(5):  # fsynced within the interval, no event needed
                while not synced:
                    await asyncio.sleep(0.01)
        else:
            assert not synced
    finally:
        spool.close()


@pytest.mark.parametrize("kept", [3, 8192])
async def test_records_handed_from_memory_are_the_files_records(
        tmp_path: Path, kept: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recent records come from memory (all, or the newest *kept* of them), older ones
    from the files: the same records at the same positions either way, across segments
    and after a rewind."""
    import qmpevents.fleet.spool as spool_module

    monkeypatch.setattr(spool_module, "RECENT_MAX", kept)
    from qmpevents.recording import decode_with_message

    decoded: list[bytes] = []  # lines read from the files

    def counted(decoder: Any, line: bytes) -> Any:
        decoded.append(line)
        return decode_with_message(decoder, line)

    monkeypatch.setattr(spool_module, "decode_with_message", counted)
    spool = Spool(str(tmp_path / "a"), segment_bytes=400, fsync="never")
    spool.open()
    read: list[tuple[SpoolRecord, Position]] = []
    number = 0
    for step in range(40):
        for _ in range(step % 7):
            number += 1
            assert spool.append(record(number))
        if number > len(read):
            read += await drain(spool, step % 5 + 1)
        if step == 25:  # a failed publish: everything after the acknowledged is read again
            spool.commit(read[len(read) // 2][1])
            spool.rewind()
            del read[len(read) // 2 + 1:]
    while len(read) < number:
        read += await drain(spool)
    spool.close()
    assert [r.seq for r, _ in read] == list(range(1, number + 1))
    assert len(set(p.segment for _, p in read)) > 3  # several segments
    assert decoded  # some from the files (the rewind, and the oldest when few are kept)
    if kept > number:
        assert len(decoded) < number // 2  # most from memory

    files = Spool(str(tmp_path / "a"))  # the same records from the files alone (those
    (tmp_path / "a" / "cursor").unlink()  # in segments the commit did not free)
    files.open()
    from_files = await drain(files, 10_000)
    files.close()
    assert len(from_files) > number // 2
    assert read[-len(from_files):] == from_files
