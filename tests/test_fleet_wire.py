"""The agent's wire, through a real nats-server: its own frames, and the acks taken early.

The publisher queues frames on nats-py's buffer (cheaper per message);
both ways must give the server the same subject, payload and headers, odd
host and VM names included: JetStream stores the first and takes the
second for duplicates (same ``Nats-Msg-Id``).  Acks taken from the wire
move the acknowledged prefix as the subscription's would, and a status
answer (503: no stream) is an error both ways.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from fleet_support import jetstream
from nats.aio.msg import Msg

from qmpevents.fleet.acks import Acks, reply_error
from qmpevents.fleet.publisher import Wire
from qmpevents.fleet.spool import Position, SpoolRecord
from qmpevents.fleet.subjects import message_id

pytestmark = pytest.mark.service  # starts nats-server / prometheus

NAMES = [("web1", "vm0"), ("hôte", "disque.été"), (" padded ", "two  spaces"),
         ("h", "line\r\nbreak"), ("h", "tab\tand\x0bvt"), ("\uff48", "\u3000wide\u3000")]


def records() -> list[SpoolRecord]:
    out = []
    for seq, (host, vm) in enumerate(NAMES, start=1):
        raw = b'{"event": "RTC_CHANGE", "data": {"offset": %d}, ' % seq
        raw += b'"timestamp": {"seconds": 1, "microseconds": 2}}'
        out.append(SpoolRecord(vm, 1764600000.125 + seq, "event", msgspec.Raw(raw), host, seq,
                               message_id(host, vm, 1, 2, "RTC_CHANGE", seq)))
    return out


async def test_frames_and_publish_send_the_same(tmp_path: Path) -> None:
    async with jetstream(tmp_path) as (_broker, nc, _js):
        acks = await nc.subscribe("_ACKS.*")
        seen = await nc.subscribe("qmp.>")  # what reaches the server, both ways
        for frames in (True, False):
            wire = Wire(nc, "QMP", frames=frames)
            for n, record in enumerate(records()):
                await wire.publish(record, f"_ACKS.{n}")
            await wire.flush()
        got = [await seen.next_msg(timeout=5) for _ in range(2 * len(NAMES))]
        answers = [(await acks.next_msg(timeout=5)).data for _ in range(2 * len(NAMES))]
    stored = [msgspec.json.decode(a) for a in answers[:len(NAMES)]]
    assert [a.get("seq") for a in stored] == list(range(1, len(NAMES) + 1))
    # The same Nats-Msg-Id: JetStream takes the publish()ed copies for duplicates.
    assert all(msgspec.json.decode(a).get("duplicate") for a in answers[len(NAMES):])
    framed, published = got[:len(NAMES)], got[len(NAMES):]
    for a, b, (host, vm) in zip(framed, published, NAMES, strict=True):
        assert (a.subject, a.data, a.headers) == (b.subject, b.data, b.headers)
        assert a.headers is not None
        assert a.headers["Qmp-Host"] == host.strip().replace("\r", " ").replace("\n", " ")
        assert a.headers["Qmp-Vm"] == vm.strip().replace("\r", " ").replace("\n", " ")


async def wait_progress(acks: Acks) -> None:
    async with asyncio.timeout(5):
        await acks.progress.wait()
    acks.progress.clear()


@pytest.mark.parametrize("routed", [True, False])
async def test_acks_follow_the_acknowledged_prefix_then_a_missing_stream(
        tmp_path: Path, routed: bool) -> None:
    """Acks (taken from the wire or through the subscription) move the prefix; a 503
    (no stream) is an error either way."""
    async with jetstream(tmp_path) as (_broker, nc, js):
        inbox = f"{nc.new_inbox()}."
        acks = Acks(16, inbox)
        delivered: list[Msg] = []  # what came the subscription's way

        async def via_subscription(msg: Msg) -> None:
            delivered.append(msg)
            await acks.on_reply(msg)

        sub = await nc.subscribe(f"{inbox}*", cb=via_subscription)
        restore = acks.route(nc, sub._id) if routed else (lambda: None)
        wire = Wire(nc, "QMP")
        sent = records()
        for n, record in enumerate(sent):
            await wire.publish(record, f"{inbox}{n}")
            acks.positions.append(Position(1, n + 1))
            acks.sent = n + 1
        await wire.flush()
        taken: list[Position] = []
        while len(taken) < len(sent):
            await wait_progress(acks)
            taken += acks.take()
        assert taken == [Position(1, n + 1) for n in range(len(sent))]
        assert acks.error is None
        assert len(delivered) == (0 if routed else len(sent))

        await js.delete_stream("QMP")  # now nothing answers: a 503 status
        await wire.publish(sent[0], f"{inbox}{len(sent)}")
        acks.positions.append(Position(1, 99))
        acks.sent += 1
        await wire.flush()
        await wait_progress(acks)
        assert acks.error is not None and "no stream" in acks.error
        assert acks.take() == []
        if not routed:
            assert delivered[-1].headers == {"Status": "503"}
        restore()  # the subscription gets them again
        await wire.publish(sent[0], f"{inbox}{len(sent) + 1}")
        await wire.flush()
        async with asyncio.timeout(5):
            while not delivered or delivered[-1].subject != f"{inbox}{len(sent) + 1}":
                await asyncio.sleep(0.01)  # polling what the subscription's task appends


def test_an_error_answer_and_a_stream_named_error() -> None:
    assert reply_error(b'{"error":{"code":503,"description":"wrong last sequence"}}',
                       None) == "wrong last sequence"
    assert reply_error(b'{"stream":"error","seq":3}', None) is None
    assert reply_error(b"not json", None) == "unreadable acknowledgement"


def test_acks_out_of_order_wait_for_the_oldest() -> None:
    """A later answer before an earlier one: the prefix moves when the earlier comes;
    answers to publishes not in flight (late duplicates) change nothing."""
    acks = Acks(8, "_I.")
    acks.positions.extend(Position(1, n) for n in range(1, 5))
    acks.sent = 4
    ok = b'{"stream":"QMP","seq":1}'
    for number in (2, 1, 7):
        acks.on_raw(b"_I.%d" % number, b"", b"", ok)
    assert acks.take() == []
    acks.on_raw(b"_I.0", b"", b"", ok)
    assert acks.take() == [Position(1, 1), Position(1, 2), Position(1, 3)]
    acks.on_raw(b"_I.1", b"", b"", ok)  # again: already taken
    assert acks.take() == []
    acks.on_raw(b"_I.3", b"", b"", ok)
    assert acks.take() == [Position(1, 4)] and acks.error is None
    acks.positions.append(Position(1, 5))
    acks.sent = 5
    acks.on_raw(b"_I.4", b"", b"NATS/1.0 503\r\n\r\n", b"")
    assert acks.error is not None and "no stream" in acks.error and acks.take() == []
