"""The client's promises from issue 14 and issue 13's client part, on an in-test server.

Timeouts, grace periods and the stall cut-off run on a ManualClock that the
test advances: nothing here waits for real time to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, assert_type

import pytest
from socket_support import GREETING, Handler, serving

import qmpevents
from qmpevents import (
    BlockIoError,
    ManualClock,
    Reset,
    RtcChange,
    Stop,
)
from qmpevents.catalog import PROFILE_FIELDS, decode_event
from qmpevents.client import RECONNECTED, QMPClient, connection
from qmpevents.client.connection import EARLY_HELD_LIMIT
from qmpevents.sim import SimulatedVM
from qmpevents.testing.fake import FakeQMP, event_line


@pytest.fixture
async def server() -> AsyncIterator[FakeQMP]:
    async with FakeQMP() as fake:
        yield fake


def ev(name: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "data": data}


STOP_AT = b'{"timestamp": {"seconds": 1, "microseconds": %d}, "event": "STOP"}\r\n'
IO_ERROR = ev("BLOCK_IO_ERROR", {"device": "d0", "node-name": "#b1", "operation": "write",
                                 "action": "stop", "reason": "Input/output error"})


# -- nothing lost right after negotiation -------------------------------------

async def test_events_sent_right_after_negotiation_reach_the_obvious_loop() -> None:
    async with FakeQMP(events_after_negotiation=50) as fake, \
            qmpevents.connect(fake.address) as qmp:
        offsets = []
        async for event in qmp.events("RTC_CHANGE"):
            assert isinstance(event, RtcChange)
            offsets.append(event.data.offset)
            if len(offsets) == 50:
                break
    assert offsets == list(range(50))


async def test_events_after_negotiation_with_await_connect() -> None:
    async with FakeQMP(events_after_negotiation=50) as fake:
        qmp = await qmpevents.connect(fake.address)
        events = qmp.listen(RtcChange)
        got = [(await events.get(timeout=5)).data.offset for _ in range(50)]
        await qmp.close()
    assert got == list(range(50))


async def test_an_event_before_the_capabilities_reply_reaches_the_obvious_loop() -> None:
    async with FakeQMP(event_before_reply=True, events_after_negotiation=3) as fake, \
            qmpevents.connect(fake.address) as qmp:
        events = qmp.events()
        names = [(await events.get(timeout=5)).name for _ in range(4)]
    assert names == ["RESUME", "RTC_CHANGE", "RTC_CHANGE", "RTC_CHANGE"]



@pytest.mark.parametrize("bound", ["count", "bytes"])
async def test_a_flood_before_the_capabilities_reply_goes_on_to_the_subscribers(
        bound: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Reading goes on until the negotiation's reply: past EARLY_HELD_LIMIT
    events or EARLY_HELD_BYTES, the client hands them to the subscriptions
    there are, and says so, instead of holding whatever the server sends."""
    if bound == "count":
        count, pad = EARLY_HELD_LIMIT + 1000, b""
    else:
        monkeypatch.setattr(connection, "EARLY_HELD_BYTES", 64 * 1024)
        count, pad = 100, b' , "data": {"pad": "%s"}' % (b"a" * 2000)
    reply_now = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        capabilities = json.loads(await reader.readline())
        writer.write(b"".join(STOP_AT.replace(b"}\r\n", pad + b"}\r\n") % n
                              for n in range(count)))
        await reply_now.wait()
        writer.write(b'{"return": {}, "id": "%s"}\r\n' % capabilities["id"].encode())
        while line := await reader.readline():
            writer.write(b'{"return": {}, "id": "%s"}\r\n' % json.loads(line)["id"].encode())

    async with asyncio.timeout(20), serving(serve) as path:
        qmp = QMPClient(path)
        stops = qmp.listen(Stop, maxsize=2 * count)  # subscribed before connect()
        connecting = asyncio.create_task(qmp.connect())
        try:
            first = await stops.get(timeout=5)  # before the reply: not held
            reply_now.set()
            await connecting
            rest = [await stops.get(timeout=5) for _ in range(count - 1)]
            assert [e.stamp.microseconds for e in [first, *rest]] == list(range(count))
        finally:
            connecting.cancel()
            await qmp.close()
    assert any("before the qmp_capabilities reply" in r.getMessage() for r in caplog.records)


async def test_names_and_globs_keep_working(server: FakeQMP) -> None:
    async with qmpevents.connect(server.address) as qmp, qmp.listen("BLOCK_*", "STOP") as sub:
        await qmp.execute("emit", {"events": [IO_ERROR, ev("STOP")]})
        assert [(await sub.get(timeout=5)).name for _ in range(2)] == ["BLOCK_IO_ERROR", "STOP"]



async def test_a_flood_past_a_full_subscription_before_the_reply_does_not_stall_connect(
        ) -> None:
    """A full blocking subscription paused reading before the negotiation's
    reply, which was never read: connect() timed out and the events past the
    subscription were lost without a word (the attacker's finding).  Replies
    are always read: the subscription takes the excess until negotiation's end."""
    count = 2 * EARLY_HELD_LIMIT + 1000

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        capabilities = json.loads(await reader.readline())
        writer.write(b"".join(STOP_AT % n for n in range(count)))
        writer.write(b'{"return": {}, "id": "%s"}\r\n' % capabilities["id"].encode())
        while await reader.readline():
            pass

    async with asyncio.timeout(20), serving(serve) as path:
        qmp = QMPClient(path, connect_timeout=10)
        stops = qmp.listen(Stop)  # the defaults: 4096, overflow="block"
        try:
            await qmp.connect()
            got = [(await stops.get(timeout=5)).stamp.microseconds for _ in range(count)]
            assert got == list(range(count))
        finally:
            await qmp.close()

# -- one match syntax -----------------------------------------------------------

@pytest.mark.parametrize("key", ["action", "data.action"])
async def test_match_takes_the_cli_syntax(server: FakeQMP, key: str) -> None:
    async with qmpevents.connect(server.address) as qmp, \
            qmp.listen("BLOCK_IO_ERROR", match={key: "stop"}) as sub:
        await qmp.execute("emit", {"events": [IO_ERROR]})
        assert (await sub.get(timeout=5)).name == "BLOCK_IO_ERROR"


@pytest.mark.parametrize(("names", "match"), [
    (("BLOCK_IO_ERROR",), {"data.actoin": "stop"}),
    ((BlockIoError,), {"data.server.host": "x"}),
    (("STOP",), {"data.action": "stop"}),
    ((), {"nonsense": 1}),
])
async def test_a_key_no_listed_event_has_is_an_error(server: FakeQMP, names: tuple[Any, ...],
                                                     match: dict[str, Any]) -> None:
    async with qmpevents.connect(server.address) as qmp:
        with pytest.raises(qmpevents.FilterError, match="no member of that name"):
            qmp.listen(*names, match=match)
        with pytest.raises(qmpevents.FilterError):
            qmp.expect(*names or ("STOP",), match=match)


async def test_expect_takes_match(server: FakeQMP) -> None:
    other = ev("BLOCK_IO_ERROR", {**IO_ERROR["data"], "device": "d1"})
    async with qmpevents.connect(server.address) as qmp:
        async with qmp.expect("BLOCK_IO_ERROR", match={"data.device": "d1"}, timeout=5) as seen:
            await qmp.execute("emit", {"events": [IO_ERROR, other]})
        assert isinstance(seen.events[0], BlockIoError)
        assert seen.events[0].data.device == "d1"
        clock = qmp.clock = ManualClock()  # a failure says what had to match
        with pytest.raises(qmpevents.ExpectationFailed,
                           match=r"expected BLOCK_IO_ERROR with data.device='d9'; "
                                 r"received BLOCK_IO_ERROR$") as failed:
            async with qmp.expect("BLOCK_IO_ERROR", match={"data.device": "d9"}, timeout=5):
                await qmp.execute("emit", {"events": [IO_ERROR]})
                waiting = asyncio.ensure_future(clock.advance_when_waiting(5))
        await waiting
        assert failed.value.match == {"data.device": "d9"}


# -- received events --------------------------------------------------------------

def test_received_events_are_frozen() -> None:
    stop = decode_event(event_line("STOP").rstrip())
    with pytest.raises(AttributeError):
        stop.stamp = stop.stamp  # type: ignore[misc]  # what the test checks: it is refused


DATA_LESS = sorted(name for name, table in PROFILE_FIELDS["qemu-7.2"].items() if table is None)


def test_the_data_less_events_include_the_schema_ones() -> None:
    assert {"STOP", "RESUME", "POWERDOWN", "SUSPEND", "WAKEUP"} <= set(DATA_LESS)


@pytest.mark.parametrize("name", DATA_LESS)
def test_a_data_less_event_with_data_stays_known(name: str) -> None:
    line = (b'{"event": "%s", "data": {"added-in": "qemu 99"}, '
            b'"timestamp": {"seconds": 1, "microseconds": 2}}' % name.encode())
    event = decode_event(line)
    assert type(event).__name__ != "UnknownEvent" and event.name == name
    assert event.data == {"added-in": "qemu 99"}


def test_a_known_event_with_new_members_stays_known() -> None:
    line = (b'{"event": "RESET", "data": {"guest": true, "reason": "guest-reset", "new": [1]}, '
            b'"timestamp": {"seconds": 1, "microseconds": 2}}')
    assert isinstance(decode_event(line), Reset)


# -- errors -----------------------------------------------------------------------

def test_every_error_is_a_qmpevents_error_exported_at_the_top() -> None:
    from qmpevents.protocol import CommandFailure

    for name in ("AddressError", "TLSCredsError", "FilterError", "MonitorBusy",
                 "SubscriberStalled", "SendQueueFull", "InvalidArguments", "ConnectionLost",
                 "QMPError", "ExpectationFailed", "MessageTooLarge", "EventValidationError"):
        assert issubclass(getattr(qmpevents, name), qmpevents.QMPEventsError), name
    assert issubclass(CommandFailure, qmpevents.QMPEventsError)
    assert qmpevents.ExecuteError is qmpevents.QMPError
    with pytest.raises(qmpevents.AddressError):
        qmpevents.connect("tcp:nowhere")


async def test_execute_with_a_list_says_what_is_wrong(server: FakeQMP) -> None:
    async with qmpevents.connect(server.address) as qmp:
        with pytest.raises(qmpevents.InvalidArguments, match="arguments are a JSON object"):
            await qmp.execute("query-status", ["a"])  # type: ignore[arg-type]
        assert (await qmp.execute("query-status"))["status"] == "running"


async def test_timeouts_run_on_the_clock_and_say_what_timed_out(server: FakeQMP) -> None:
    clock = ManualClock()
    async with qmpevents.connect(server.address, clock=clock) as qmp:
        sub = qmp.listen("STOP")
        get = asyncio.create_task(sub.get(timeout=30))
        await clock.advance_when_waiting(30)
        with pytest.raises(TimeoutError, match="no event for <Subscription STOP"):
            await get
        hang = asyncio.create_task(qmp.execute("hang", timeout=60))
        await clock.advance_when_waiting(60)
        with pytest.raises(TimeoutError, match="no reply to hang within 60 s"):
            await hang


# -- a subscriber that never reads ------------------------------------------------

async def test_a_stalled_subscriber_never_blocks_replies_or_others(
        server: FakeQMP, caplog: pytest.LogCaptureFixture) -> None:
    async with qmpevents.connect(server.address) as qmp:
        stalled = qmp.listen(RtcChange, maxsize=16)
        reader = qmp.listen("RTC_CHANGE", overflow="drop-oldest", maxsize=10_000)
        with caplog.at_level(logging.WARNING, logger="qmpevents"):
            await qmp.execute("blast", {"count": 5000}, timeout=10)  # the reply arrives
        assert reader.qsize() == 5000 and reader.dropped == 0
        assert [stalled.get_nowait().data.offset for _ in range(16)] == list(range(16))
        with pytest.raises(qmpevents.SubscriberStalled, match="cut off"):
            await stalled.get(timeout=5)
        assert len([r for r in caplog.records if "cut off" in r.getMessage()]) == 1
        assert (await qmp.execute("query-status"))["status"] == "running"


async def test_a_stalled_subscriber_is_cut_off_after_stall_timeout(server: FakeQMP) -> None:
    clock = ManualClock()
    async with qmpevents.connect(server.address, clock=clock, stall_timeout=10) as qmp:
        stalled = qmp.listen("RTC_CHANGE", maxsize=4)
        reader = qmp.listen("RTC_CHANGE", overflow="drop-oldest", maxsize=10_000)
        rtc = RtcChange

        async def emit_unprompted() -> None:  # events no command of the client waits for
            for offset in range(3000):
                await server.emit("RTC_CHANGE", {"offset": offset, "qom-path": "/machine/rtc"})

        emitting = asyncio.create_task(emit_unprompted())
        await clock.advance_when_waiting(10)  # the stall timer: the reader paused
        offsets: list[int] = []
        while len(offsets) < 3000:
            event = await reader.get(timeout=None)
            assert isinstance(event, rtc)
            offsets.append(event.data.offset)
        await emitting
        assert offsets == list(range(3000))
        assert [stalled.get_nowait().name for _ in range(stalled.qsize())] == ["RTC_CHANGE"] * 4
        with pytest.raises(qmpevents.SubscriberStalled):
            await stalled.get()


# -- close and unsent output ------------------------------------------------------

async def test_close_does_not_hang_when_the_server_stopped_reading(server: FakeQMP) -> None:
    clock = ManualClock()
    qmp = await qmpevents.connect(server.address, clock=clock, max_unsent=64 * 1024)
    hung = asyncio.create_task(qmp.execute("hang"))
    await server.hung.wait()  # the server reads no more
    blob = {"data": "x" * 32 * 1024}
    sent: list[asyncio.Task[Any]] = []
    for _ in range(10_000):  # bounded: the kernel's buffers fill, then the bound holds
        sent.append(asyncio.create_task(qmp.execute("echo", blob)))
        await asyncio.sleep(0)  # let it write (or refuse)
        if sent[-1].done():
            break
    with pytest.raises(qmpevents.SendQueueFull, match="the server is not reading"):
        sent[-1].result()
    assert len(sent) < 100  # refused at the bound, not after growing memory
    closing = asyncio.create_task(qmp.close())
    await clock.advance_when_waiting(qmp.close_grace)
    await closing
    with pytest.raises(qmpevents.ConnectionLost):
        await hung
    outcomes = await asyncio.gather(*sent[:-1], return_exceptions=True)
    assert all(isinstance(outcome, qmpevents.ConnectionLost) for outcome in outcomes)


# -- bad server messages: one warning per second, all counted -----------------------

async def test_bad_messages_are_logged_rate_limited_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    bad = b'{"event": "STOP"}\n' * 20_000  # events without a timestamp
    async with serving(_one_shot(bad)) as address, \
            qmpevents.connect(address, clock=clock) as qmp:
        with caplog.at_level(logging.WARNING, logger="qmpevents"):
            await qmp.execute("query-status", timeout=None)
        assert qmp.warnings.counts["protocol"] == 20_000
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def _one_shot(payload: bytes) -> Handler:
    """Greets, negotiates, then sends *payload* before the reply to the next command."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        for reply in (b"", payload):
            request_id = json.loads(await reader.readline())["id"]
            writer.write(reply + b'{"return": {}, "id": "%s"}\r\n' % request_id.encode())
        await reader.read()
        writer.close()
    return serve


# -- a socket that accepts and stays silent ---------------------------------------

async def test_a_silent_monitor_is_reported_busy_fast() -> None:
    clock = ManualClock()

    async def accept_and_say_nothing(_r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
        pass

    async with serving(accept_and_say_nothing) as path:
        client = QMPClient(path, clock=clock, greeting_timeout=3)
        connecting = asyncio.create_task(client.connect())
        await clock.advance_when_waiting(3, timers=2)  # connect_timeout and greeting_timeout
        with pytest.raises(qmpevents.MonitorBusy, match="QEMU serves one client per socket"):
            await connecting


async def test_a_greeting_that_never_completes_is_said_with_the_address() -> None:
    """Blanks, or a greeting cut short: a bare 'no result within 3 s' before."""
    clock = ManualClock()

    async def blanks(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b'   \r\n{"QMP": {"version"')

    async with serving(blanks) as path:
        client = QMPClient(path, clock=clock, greeting_timeout=3)
        connecting = asyncio.create_task(client.connect())
        async with asyncio.timeout(10):  # the bytes are in (socket I/O, no timer)
            while client._link is None or not client._link.received_any:
                await asyncio.sleep(0)
        await clock.advance_when_waiting(3, timers=2)  # connect_timeout and greeting_timeout
        with pytest.raises(TimeoutError, match=f"{path}: bytes, but no complete QMP greeting "
                                               "within 3 s"):
            await connecting


# -- reconnect back-off on the clock ----------------------------------------------

async def test_reconnect_backs_off_on_the_clock(server: FakeQMP) -> None:
    clock = ManualClock()
    async with qmpevents.connect(server.address, reconnect=True, reconnect_delay=5,
                                 clock=clock) as qmp:
        events = qmp.listen()
        server.drop()
        await clock.advance_when_waiting(5)  # the back-off before the first attempt
        marker = await events.get(timeout=None)
        assert isinstance(marker, qmpevents.ConnectionResumed)
        assert marker.data is not None and marker.data["downtime"] == 5
        assert qmp.reconnects == 1


class _MuteOnStatus:
    """Answers qmp_capabilities and (on the first connection only) query-status;
    each connection sends *resets* RESETs right after negotiating.  The second
    connection's resync status never comes."""

    def __init__(self, resets: int) -> None:
        self.resets = resets
        self.writers: list[asyncio.StreamWriter] = []
        #: Set when a connection after the first asks for the status.
        self.status_asked = asyncio.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        first = len(self.writers) == 1
        writer.write(GREETING)
        while line := await reader.readline():
            request = json.loads(line)
            reply = b'{"return": %s, "id": "%s"}\r\n'
            if request["execute"] == "qmp_capabilities":
                writer.write(reply % (b"{}", request["id"].encode()) + event_line(
                    "RESET", {"guest": True, "reason": "guest-reset"}) * self.resets)
            elif first:
                writer.write(reply % (b'{"status": "running", "running": true}',
                                      request["id"].encode()))
            else:
                self.status_asked.set()
        writer.close()


async def test_a_resync_status_that_never_comes_loses_no_event() -> None:
    clock = ManualClock()
    server = _MuteOnStatus(resets=10)
    async with asyncio.timeout(10), serving(server) as path, qmpevents.connect(
            path, reconnect=True, reconnect_delay=1, connect_timeout=10, clock=clock) as qmp:
        resets = qmp.listen(Reset)
        markers = qmp.listen(RECONNECTED)
        first = [await resets.get(timeout=None) for _ in range(10)]
        assert len(first) == 10 and qmp.last_status == {"status": "running", "running": True}
        server.writers[0].close()  # the first connection ends
        await clock.advance_when_waiting(1)  # the back-off before reconnecting
        await server.status_asked.wait()  # negotiated: only the status is missing
        await clock.advance_when_waiting(10)  # not within connect_timeout
        marker = await markers.get(timeout=None)
        assert marker.data is not None and marker.data["status"] is None
        again = [await resets.get(timeout=None) for _ in range(10)]
        assert len(again) == 10 and len(server.writers) == 2 and qmp.connected


async def test_quit_is_answered_by_the_end_of_the_connection() -> None:
    """QEMU 7.2 over TLS: SHUTDOWN, then the connection ends, without quit's reply."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        while line := await reader.readline():
            request = json.loads(line)
            if request["execute"] == "quit":
                writer.write(event_line("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"}))
                break
            writer.write(b'{"return": {}, "id": "%s"}\r\n' % request["id"].encode())
        writer.close()

    async with serving(serve) as path, qmpevents.connect(path) as qmp:
        stream = qmp.events()
        assert await qmp.execute("quit", timeout=5) == {}
        assert [event.name async for event in stream] == ["SHUTDOWN"]
        with pytest.raises(qmpevents.ConnectionLost):  # other commands are not answered
            await qmp.execute("query-status", timeout=5)



async def test_our_own_close_does_not_answer_a_pending_quit() -> None:
    """Only the server's end of the connection answers quit: closing it
    ourselves while quit is unanswered says the connection is gone."""
    quit_seen = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        while line := await reader.readline():
            request = json.loads(line)
            if request["execute"] == "quit":
                quit_seen.set()  # never answered, the connection stays open
                continue
            writer.write(b'{"return": {}, "id": "%s"}\r\n' % request["id"].encode())

    async with asyncio.timeout(10), serving(serve) as path:
        qmp = await qmpevents.connect(path)
        quitting = asyncio.create_task(qmp.execute("quit"))
        await quit_seen.wait()
        await qmp.close()
        with pytest.raises(qmpevents.ConnectionLost):
            await quitting


async def test_quit_is_answered_by_the_servers_end_even_if_we_close_right_after() -> None:
    """The server's end came first (its EOF read), our close() before the
    connection's loss was handled: quit is still answered."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GREETING)
        while line := await reader.readline():
            request = json.loads(line)
            if request["execute"] == "quit":
                break  # QEMU 7.2 over TLS: the end, without quit's reply
            writer.write(b'{"return": {}, "id": "%s"}\r\n' % request["id"].encode())
        writer.close()

    async with asyncio.timeout(10), serving(serve) as path:
        qmp = await qmpevents.connect(path)
        link = qmp._link
        assert link is not None
        quitting = asyncio.create_task(qmp.execute("quit"))
        while not link.server_ended:  # the EOF is read; its loss is handled later
            await asyncio.sleep(0)
        assert not link.lost.done()
        await qmp.close()
        assert await quitting == {}

# -- the blocking facade ------------------------------------------------------------

def test_sync_wait_for_keeps_subscribe_then_act(simulated_vm_thread: SimulatedVM) -> None:
    with qmpevents.connect_sync(simulated_vm_thread.socket_path) as qmp:
        reset = qmp.wait_for(Reset, timeout=5)         # listening from here
        qmp.execute("system_reset")                      # the event comes before the reply
        event = reset.wait()
        assert_type(event, Reset)
        assert event.name == "RESET"
        with qmp.wait_for("STOP", timeout=5) as stopped:
            qmp.execute("stop")
            assert stopped.wait().name == "STOP"
        with qmp.listen(Stop) as stops:
            qmp.execute("cont")
            qmp.execute("stop")
            assert_type(stops.get(timeout=5), Stop)


def test_sync_batches(simulated_vm_thread: SimulatedVM) -> None:
    with qmpevents.connect_sync(simulated_vm_thread.socket_path) as qmp:
        events = qmp.listen(Stop, Reset)
        qmp.execute("stop")
        qmp.execute("system_reset")  # RESET before its reply: both queued
        batch = next(events.batches())
        assert_type(batch, list[Stop | Reset])
        assert [event.name for event in batch] == ["STOP", "RESET"]


@contextlib.contextmanager
def negotiates_then_sends(path: str, lines: list[bytes],
                          before: tuple[bytes, ...] | list[bytes] = ()) -> Iterator[None]:
    """A server thread that sends *lines* right after its negotiation reply, in the
    same write (and *before* in a write before the reply), then waits for the
    client to leave."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()

    def serve() -> None:
        peer, _ = listener.accept()
        with peer:
            peer.sendall(b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, '
                         b'"major": 7}, "package": ""}, "capabilities": []}}\r\n')
            reader = peer.makefile("rb")
            request = json.loads(reader.readline())
            peer.sendall(b"".join(before))  # a write of its own
            peer.sendall(b'{"return": {}, "id": "%s"}\r\n' % request["id"].encode()
                         + b"".join(lines))
            while reader.readline():  # the client's commands, unanswered, until it leaves
                pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield
    finally:
        server.join(timeout=10)
        listener.close()


@pytest.mark.parametrize("first", ["events", "listen", "wait_for", "expect"])
def test_sync_client_gets_the_events_sent_right_after_negotiation(
        tmp_path: Path, first: str) -> None:
    """connect_sync() let the loop thread hand them out before any subscription
    could exist: the blocking facade lost them all (the async client does not)."""
    lines = [b'{"timestamp": {"seconds": 1, "microseconds": %d}, "event": "STOP"}\r\n' % n
             for n in range(50)]
    path = str(tmp_path / "qmp.sock")
    with negotiates_then_sends(path, lines), qmpevents.connect_sync(path) as qmp:
        if first in ("events", "listen"):
            stream = getattr(qmp, first)(Stop)
            got = [stream.get(timeout=5).stamp.microseconds for _ in range(50)]
            assert got == list(range(50))
        elif first == "wait_for":
            assert qmp.wait_for(Stop, timeout=5).wait().stamp.microseconds == 0
        else:
            with qmp.expect("STOP", "STOP", timeout=5) as expected:
                pass  # both came already
            assert [event.stamp.microseconds for event in expected.events] == [0, 1]


def test_sync_exit_does_not_hang_when_the_server_stopped_reading(tmp_path: Path) -> None:
    path = str(tmp_path / "qmp.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    negotiated = threading.Event()
    served: list[socket.socket] = []

    def greet_negotiate_then_stop_reading() -> None:
        peer, _ = listener.accept()
        served.append(peer)
        peer.sendall(b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, '
                     b'"package": ""}, "capabilities": []}}\r\n')
        request = json.loads(peer.makefile("rb").readline())
        peer.sendall(b'{"return": {}, "id": "%s"}\r\n' % request["id"].encode())
        negotiated.set()

    server = threading.Thread(target=greet_negotiate_then_stop_reading, daemon=True)
    server.start()
    started = time.monotonic()
    with qmpevents.connect_sync(path, max_unsent=64 * 1024, close_grace=0.5) as qmp:
        assert negotiated.wait(timeout=10)
        with pytest.raises(qmpevents.SendQueueFull):
            for _ in range(1000):  # fills the kernel's buffers, then hits the bound
                with contextlib.suppress(TimeoutError):  # nothing ever replies
                    qmp.execute("echo", {"pad": "x" * 65536}, timeout=0.001)
    assert time.monotonic() - started < 10  # the exit aborted after the grace period
    server.join(timeout=10)
    for peer in served:
        peer.close()
    listener.close()


async def test_hold_events_until_released_and_execute_releases_them() -> None:
    """connect(hold_events=True) then execute() was never answered: the held
    events paused the reader (the reviewer's finding)."""
    async with FakeQMP(events_after_negotiation=5) as fake:
        qmp = QMPClient(fake.address)
        await qmp.connect(hold_events=True)
        try:
            events = qmp.listen(RtcChange)  # subscribed after connect() returned
            assert events.qsize() == 0  # still held
            assert await qmp.execute("query-status", timeout=5)  # released first
            assert [(await events.get(timeout=5)).data.offset for _ in range(5)] == [0, 1, 2,
                                                                                       3, 4]
        finally:
            await qmp.close()
        await qmp.connect(hold_events=True)
        await qmp.close()  # what it held goes with it, not to the next connection
        await qmp.connect()
        try:
            after = qmp.listen(RtcChange)
            qmp.release_events()  # nothing held any more: a no-op
            assert [(await after.get(timeout=5)).data.offset for _ in range(5)] == [0, 1, 2,
                                                                                      3, 4]
            assert after.qsize() == 0  # not twice
        finally:
            await qmp.close()


async def test_events_after_negotiation_are_kept_with_reconnect_on_too() -> None:
    async with FakeQMP(events_after_negotiation=50) as fake, \
            qmpevents.connect(fake.address, reconnect=True) as qmp:
        events = qmp.listen(RtcChange)
        assert [(await events.get(timeout=5)).data.offset for _ in range(50)] == list(range(50))


def test_sync_client_gets_the_events_sent_before_the_capabilities_reply(tmp_path: Path) -> None:
    stops = [b'{"timestamp": {"seconds": 1, "microseconds": %d}, "event": "STOP"}\r\n' % n
             for n in range(10)]
    path = str(tmp_path / "qmp.sock")
    with negotiates_then_sends(path, stops[5:], before=stops[:5]), \
            qmpevents.connect_sync(path) as qmp:
        stream = qmp.events(Stop)
        assert [stream.get(timeout=5).stamp.microseconds for _ in range(10)] == list(range(10))
