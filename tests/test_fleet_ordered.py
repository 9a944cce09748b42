"""The ordered reader against a real nats-server: every message once, in order, whatever
happens to its consumer (deleted by someone, lost with a broker restart)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fleet_support import jetstream

from qmpevents.fleet import ordered
from qmpevents.fleet.ordered import BATCH, EXPIRES, OrderedReader, Unroutable

pytestmark = pytest.mark.service  # starts nats-server

COUNT = 3 * BATCH + 17


async def publish(js: object, first: int, count: int) -> None:
    for n in range(first, first + count):
        await js.publish(f"qmp.h.vm{n % 3}.STOP", b'{"n": %d}' % n)  # type: ignore[attr-defined]


async def read(reader: OrderedReader, count: int) -> list[tuple[int, bytes, bytes]]:
    out = []
    async with asyncio.timeout(30):
        for _ in range(count):
            subject, _headers, data, sequence, _stored = await reader.next()
            out.append((sequence, subject, data))
    return out


def expected(first: int, count: int) -> list[tuple[int, bytes, bytes]]:
    return [(n, b"qmp.h.vm%d.STOP" % (n % 3), b'{"n": %d}' % n)
            for n in range(first, first + count)]


async def test_a_deleted_consumer_is_made_again_after_the_last_message(
        tmp_path: Path) -> None:
    async with jetstream(tmp_path) as (_broker, nc, js):
        await publish(js, 1, COUNT)
        reader = OrderedReader(nc, js, "QMP", "qmp.>", "all", expires=1.0, grace=1.0)
        await reader.open()
        got = await read(reader, BATCH // 2)
        first_name = reader._name
        await js.delete_consumer("QMP", first_name)  # as an operator's tool would
        got += await read(reader, COUNT - len(got))
        assert got == expected(1, COUNT)
        assert reader._name != first_name
        await publish(js, COUNT + 1, 5)  # and it follows new messages
        assert await read(reader, 5) == expected(COUNT + 1, 5)
        await reader.close()
        assert not [c for c in await js.consumers_info("QMP")]  # it removed its consumer


async def test_a_broker_restart_loses_the_consumer_not_a_message(tmp_path: Path) -> None:
    async with jetstream(tmp_path) as (broker, nc, js):
        await publish(js, 1, COUNT)
        reader = OrderedReader(nc, js, "QMP", "qmp.>", "all", expires=1.0, grace=1.0)
        await reader.open()
        got = await read(reader, BATCH + 3)
        await broker.kill()  # the consumer (memory storage) goes with it
        await broker.start()  # the stream (file storage) stays
        got += await read(reader, COUNT - len(got))
        assert got == expected(1, COUNT)
        await reader.close()


async def test_new_messages_only_and_again_after_a_loss(tmp_path: Path) -> None:
    """since=None: what was stored before is not read, and what came while the consumer
    was gone is (it is made again after the stream's last message at the start)."""
    async with jetstream(tmp_path) as (_broker, nc, js):
        await publish(js, 1, 10)
        reader = OrderedReader(nc, js, "QMP", "qmp.>", None, expires=1.0, grace=1.0)
        await reader.open()
        await js.delete_consumer("QMP", reader._name)
        await publish(js, 11, 3)  # before the reader finds its consumer gone
        assert await read(reader, 3) == expected(11, 3)
        await reader.close()


async def test_new_messages_only_from_an_empty_stream_and_again_after_a_loss(
        tmp_path: Path) -> None:
    """since=None on an empty stream: a consumer made again before the reader received
    anything starts at the stream's start (everything in it came after the reader did),
    not at "new" once more, which would drop what was published in between."""
    async with jetstream(tmp_path) as (_broker, nc, js):
        reader = OrderedReader(nc, js, "QMP", "qmp.>", None, expires=1.0, grace=1.0)
        await reader.open()
        await publish(js, 1, 3)
        first_name = reader._name
        await js.delete_consumer("QMP", first_name)
        await publish(js, 4, 3)  # before the reader finds its consumer gone
        assert await read(reader, 6) == expected(1, 6)
        assert reader._name != first_name
        await publish(js, 7, 2)  # and nothing twice after that
        assert await read(reader, 2) == expected(7, 2)
        await reader.close()


async def test_a_failed_pull_request_makes_the_consumer_again_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pull request that cannot be sent (an outbound buffer full while reconnecting)
    breaks the consumer, which is made again at once: not after the request's expiry
    and grace (EXPIRES + GRACE), waiting for an answer to a request never sent."""
    import nats.errors

    async with jetstream(tmp_path) as (_broker, nc, js):
        await publish(js, 1, 5)
        reader = OrderedReader(nc, js, "QMP", "qmp.>", "all")  # the default expiry
        await reader.open()
        first_name = reader._name
        send = nc.publish
        failed = 0

        async def publish_failing_once(subject: str, *args: Any, **kwargs: Any) -> None:
            nonlocal failed
            if ".CONSUMER.MSG.NEXT." in subject and not failed:
                failed += 1
                raise nats.errors.OutboundBufferLimitError
            await send(subject, *args, **kwargs)

        monkeypatch.setattr(nc, "publish", publish_failing_once)
        async with asyncio.timeout(EXPIRES / 2):  # the stall was EXPIRES + GRACE
            got = [(sequence, subject, data)
                   for subject, _headers, data, sequence, _stored
                   in [await reader.next() for _ in range(5)]]
        assert failed == 1
        assert got == expected(1, 5)
        assert reader._name != first_name
        await reader.close()


async def test_a_connection_it_cannot_read_from_the_wire_is_an_error_not_a_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """route() refusing the subscription (a nats-py whose internals changed) would leave
    the consumer's messages unread, and the reader making it again every few seconds:
    open() and a consumer made again raise instead, and leave no consumer behind."""
    async with jetstream(tmp_path) as (_broker, nc, js):
        await publish(js, 1, 3)
        reader = OrderedReader(nc, js, "QMP", "qmp.>", "all", expires=1.0, grace=1.0)
        await reader.open()
        assert await read(reader, 1) == expected(1, 1)
        monkeypatch.setattr(ordered, "route", lambda *args: False)
        await js.delete_consumer("QMP", reader._name)
        await publish(js, 4, 1)
        with pytest.raises(Unroutable):
            async with asyncio.timeout(10):
                while True:  # what was queued comes first
                    await reader.next()
        assert not [c for c in await js.consumers_info("QMP")]
        with pytest.raises(Unroutable):
            await OrderedReader(nc, js, "QMP", "qmp.>", "all").open()
        assert not [c for c in await js.consumers_info("QMP")]
