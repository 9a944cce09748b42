"""The agent's own HPUB frames store what nats-py's publish() stores, in a real nats-server.

The publisher queues frames on nats-py's buffer (cheaper per message);
both ways must give the server the same subject, payload and headers, odd
host and VM names included: JetStream stores the first and takes the
second for duplicates (same ``Nats-Msg-Id``).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from fleet_support import NatsServer

from qmpevents.fleet.broker import BrokerOptions, StreamSettings, connect, ensure_stream
from qmpevents.fleet.publisher import Wire
from qmpevents.fleet.spool import SpoolRecord
from qmpevents.fleet.subjects import message_id

pytest.importorskip("nats")

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
    broker = NatsServer(tmp_path / "nats")
    await broker.start()
    try:
        nc = await connect(BrokerOptions([broker.url]))
        try:
            await ensure_stream(nc.jetstream(), StreamSettings("QMP"))
            acks = await nc.subscribe("_ACKS.*")
            seen = await nc.subscribe("qmp.>")  # what reaches the server, both ways
            for frames in (True, False):
                wire = Wire(nc, "QMP", frames=frames)
                for n, record in enumerate(records()):
                    await wire.publish(record, f"_ACKS.{n}")
                await wire.flush()
            got = [await seen.next_msg(timeout=5) for _ in range(2 * len(NAMES))]
            answers = [(await acks.next_msg(timeout=5)).data for _ in range(2 * len(NAMES))]
        finally:
            await nc.close()
    finally:
        await broker.stop()
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
