"""The QMP server over real sockets: monitors, broadcast, policies, bad input.

No sleeps: ordering is checked through the wire itself (a reply that follows
an event on the same connection proves what was, or was not, sent before it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat

import pytest
from qmp_raw import names, reply

from qmpevents.protocol import Command, CommandFailure
from qmpevents.server import (
    AddressError,
    CommandSpec,
    CommandTable,
    QMPServer,
    ServerOptions,
    TcpAddress,
    UnixAddress,
    parse_address,
)
from qmpevents.sim import SimulatedVM
from qmpevents.testing import RawQMP

VERSION = {"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": "test"}


async def test_each_connection_is_its_own_monitor() -> None:
    async with SimulatedVM() as vm:
        a, b = await RawQMP.unix(vm.socket_path), await RawQMP.unix(vm.socket_path)
        greeting = await a.greeting()
        assert greeting == await b.greeting()
        assert greeting["QMP"]["capabilities"] == ["oob"]
        await a.send('{"execute": "qmp_capabilities"}\r\n')
        assert await a.line() == b'{"return": {}}\r\n'
        # b has not negotiated: its session is independent of a's.
        _, line = await b.execute("query-status", id=1)
        assert reply(line) == {"id": 1, "error": {
            "class": "CommandNotFound",
            "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}


async def test_events_identical_bytes_to_all_negotiated_and_none_to_others() -> None:
    async with SimulatedVM(profile="qemu-7.2", multi_client=True) as vm:
        monitors = [await RawQMP.unix(vm.socket_path) for _ in range(3)]
        for monitor in monitors:
            await monitor.negotiate()
        silent = await RawQMP.unix(vm.socket_path)
        await silent.greeting()
        events = await monitors[0].ok("stop")
        events += await monitors[0].ok("cont")
        events += await monitors[0].ok("system_reset")
        assert names(events) == ["STOP", "RESUME", "RESET"]
        for other in monitors[1:]:
            assert [await other.line() for _ in events] == events  # same bytes, same order
        # Nothing was written to the un-negotiated monitor: its first line is the reply.
        _, line = await silent.execute("qmp_capabilities")
        assert line == b'{"return": {}}\r\n'
        # ...and nothing was queued for it: the next line it sees is a fresh event.
        await monitors[0].ok("stop")
        assert names([await silent.line()]) == ["STOP"]
        assert vm.server.broadcaster.events_encoded == 4


async def test_event_precedes_reply_and_reply_goes_to_issuer_only() -> None:
    async with SimulatedVM() as vm:
        a, b = await RawQMP.unix(vm.socket_path), await RawQMP.unix(vm.socket_path)
        await a.negotiate()
        await b.negotiate()
        await a.send('{"execute": "stop", "id": "x"}\r\n')
        assert names([await a.line()]) == ["STOP"]
        assert await a.line() == b'{"return": {}, "id": "x"}\r\n'
        assert names([await b.line()]) == ["STOP"]
        _, line = await b.execute("query-status")
        assert reply(line)["return"]["status"] == "paused"


@pytest.mark.parametrize(("request_line", "expected"), [
    (b'{"execute": "no-such-command"}',
     {"error": {"class": "CommandNotFound",
                "desc": "The command no-such-command has not been found"}}),
    (b'{"execute": "stop", "arguments": {"x": 1}}',
     {"error": {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}}),
    (b'{"execute": "x-sim-rtc-change"}',
     {"error": {"class": "GenericError", "desc": "Parameter 'offset' is missing"}}),
    (b'{"execute": "x-sim-rtc-change", "arguments": {"offset": "1"}}',
     {"error": {"class": "GenericError",
                "desc": "Invalid parameter type for 'offset', expected: integer"}}),
    (b'{"execute": "x-sim-rtc-change", "arguments": {"offset": 18446744073709551616}}',
     {"error": {"class": "GenericError",
                "desc": "Invalid parameter type for 'offset', expected: integer"}}),
    (b'{"execute": "change-vnc-password", "arguments": {"password": true}}',
     {"error": {"class": "GenericError",
                "desc": "Invalid parameter type for 'password', expected: string"}}),
    (b'{"execute": "x-sim-io-error", "arguments": {"device": "d0", "operation": "erase"}}',
     {"error": {"class": "GenericError",
                "desc": "Parameter 'operation' does not accept value 'erase'"}}),
    (b'{"execute": "x-sim-io-error", "arguments": {"device": "d0", "operation": "read", '
     b'"errno": "EPERM"}}',
     {"error": {"class": "GenericError",
                "desc": "Parameter 'errno' does not accept value 'EPERM'"}}),
    (b'{"execute": "x-sim-io-error", "arguments": {"device": "nope", "operation": "read"}}',
     {"error": {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}}),
    (b'{"execute": "change-vnc-password", "arguments": {"password": "pw"}}',
     {"error": {"class": "GenericError", "desc": "Could not set password"}}),
    (b'{"execute": "query-vnc"}', {"return": {"enabled": False}}),
    (b'{"execute": ', None),  # incomplete: answered with the next request's error below
    (b'{"execute": 1}',
     {"error": {"class": "GenericError", "desc": "QMP input member 'execute' must be a string"}}),
    (b'[1, 2]', {"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}),
    (b'{"execute": "stop", "foo": 1}',
     {"error": {"class": "GenericError", "desc": "QMP input member 'foo' is unexpected"}}),
])
async def test_bad_requests_get_qemus_errors(request_line: bytes, expected: object) -> None:
    async with SimulatedVM(drives=["d0"]) as vm:
        client = await RawQMP.unix(vm.socket_path)
        await client.negotiate()
        if expected is None:  # a truncated value: the closing input makes it a parse error
            await client.send(request_line + b"}\r\n")
            assert reply(await client.line())["error"]["desc"].startswith("JSON parse error")
        else:
            await client.send(request_line + b"\r\n")
            assert reply(await client.line()) == expected
        # The monitor is still alive and in order.
        _, line = await client.execute("query-status", id="alive")
        assert reply(line)["id"] == "alive"


async def test_exec_oob_of_a_command_that_does_not_support_it() -> None:
    async with SimulatedVM() as vm:
        client = await RawQMP.unix(vm.socket_path)
        await client.greeting()
        await client.send(b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}\r\n')
        assert await client.line() == b'{"return": {}}\r\n'
        await client.send(b'{"exec-oob": "query-status", "id": 3}\r\n')
        assert reply(await client.line()) == {"id": 3, "error": {
            "class": "GenericError", "desc": "The command query-status does not support OOB"}}


async def test_pipelined_requests_in_one_write_are_answered_in_order() -> None:
    async with SimulatedVM() as vm:
        client = await RawQMP.unix(vm.socket_path)
        await client.negotiate()
        # Far more than the 8-deep queue: reading pauses and resumes, nothing is lost.
        await client.send(b"".join(b'{"execute": "query-status", "id": %d}\r\n' % i
                                   for i in range(200)))
        ids = [reply(await client.line())["id"] for _ in range(200)]
        assert ids == list(range(200))


async def test_request_queue_pauses_reading_when_eight_deep() -> None:
    """Twenty requests in one write: reading stops while they queue, resumes when drained."""
    reading_while_running: list[bool] = []
    server: QMPServer

    class Table(CommandTable):
        def execute(self, command: Command) -> object:
            (monitor,) = server._monitors
            assert monitor._transport is not None
            reading_while_running.append(monitor._transport.is_reading())
            return {}

    server = QMPServer([UnixAddress(f"/tmp/qmpev-queue-{os.getpid()}.sock")],
                       Table([CommandSpec("noop", lambda a: {})]), version=VERSION)
    await server.start()
    try:
        client = await RawQMP.unix(server.addresses[0].path)  # type: ignore[union-attr]
        await client.negotiate()
        await client.send(b'{"execute": "noop"}\r\n' * 20)
        for _ in range(20):
            assert reply(await client.line()) == {"return": {}}
        # Paused from the moment 8 were waiting until the queue was drained...
        assert reading_while_running == [False] * 20
        # ...and reading again afterwards.
        _, line = await client.execute("noop")
        assert reply(line) == {"return": {}}
        assert reading_while_running[20] is True
    finally:
        await server.close()


async def test_slow_monitor_is_disconnected_without_hurting_others(
        caplog: pytest.LogCaptureFixture) -> None:
    async with SimulatedVM(max_outbound=64 * 1024) as vm:
        slow_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        slow_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow_sock.connect(vm.socket_path)
        slow_sock.sendall(b'{"execute": "qmp_capabilities"}\r\n')  # then never reads
        fast = await RawQMP.unix(vm.socket_path)
        await fast.negotiate()
        while len(vm.server.broadcaster) < 2:  # wait until the slow one has negotiated
            await fast.ok("query-status")
        caplog.set_level(logging.WARNING, logger="qmpevents.server.monitor")
        delivered = 0
        while vm.server.monitors == 2:
            for _ in range(200):
                vm.machine.stop()
                vm.machine.cont()
            delivered += 200
            for _ in range(200):  # the fast one keeps up
                assert names([await fast.line()]) == ["STOP"]
            _, line = await fast.execute("query-status")
            assert reply(line)["return"]["running"]
        assert "disconnected" in caplog.text and "unread" in caplog.text
        assert delivered < 10_000
        await fast.ok("stop")
        slow_sock.close()


async def test_unix_socket_is_created_mode_0600_and_removed() -> None:
    async with SimulatedVM() as vm:
        path = vm.socket_path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not os.path.exists(path)


async def test_socket_mode_is_configurable(tmp_path: object) -> None:
    path = f"/tmp/qmpev-mode-{os.getpid()}.sock"
    async with SimulatedVM(qmp=[f"unix:{path}"], socket_mode=0o660) as vm:
        assert stat.S_IMODE(os.stat(vm.socket_path).st_mode) == 0o660


async def test_stale_socket_is_replaced_live_one_refused() -> None:
    path = f"/tmp/qmpev-stale-{os.getpid()}.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    async with SimulatedVM(qmp=[f"unix:{path}"]):
        with pytest.raises(OSError, match="another process is listening"):
            async with SimulatedVM(qmp=[f"unix:{path}"]):
                pass
        assert os.path.exists(path)  # the live server's socket was not stolen
    assert not os.path.exists(path)


def test_non_loopback_tcp_is_refused_unless_allowed() -> None:
    with pytest.raises(AddressError, match="non-loopback"):
        SimulatedVM(qmp=["tcp:0.0.0.0:0"])
    with pytest.raises(AddressError, match="non-loopback"):
        SimulatedVM(qmp=["tcp:[::]:4444"])
    SimulatedVM(qmp=["tcp:0.0.0.0:0"], allow_remote=True)
    assert parse_address("tcp:[::1]:4444") == TcpAddress("::1", 4444)
    for bad in ("tcp:127.0.0.1", "udp:x", "unix:", "tcp:1.2.3.4:99999"):
        with pytest.raises(AddressError):
            parse_address(bad)
    # A client may name a host; a listener needs an IP literal (or localhost).
    with pytest.raises(AddressError, match="IP address"):
        SimulatedVM(qmp=["tcp:host.example:1"], allow_remote=True)


async def test_tcp_and_unix_listeners_together() -> None:
    async with SimulatedVM(qmp=["tcp:127.0.0.1:0", "unix:/tmp/qmpev-both.sock"]) as vm:
        tcp_address = vm.addresses[0]
        assert isinstance(tcp_address, TcpAddress) and tcp_address.port != 0
        over_tcp = await RawQMP.tcp("127.0.0.1", tcp_address.port)
        over_unix = await RawQMP.unix(vm.socket_path)
        await over_tcp.negotiate()
        await over_unix.negotiate()
        events = await over_unix.ok("stop")
        assert await over_tcp.line() == events[0]


async def test_single_client_mimics_qemu_chardev() -> None:
    async with SimulatedVM(single_client=True) as vm:
        first = await RawQMP.unix(vm.socket_path)
        await first.negotiate()
        second = await RawQMP.unix(vm.socket_path)  # accepted, but no greeting yet
        await second.send(b'{"execute": "qmp_capabilities"}\r\n')
        events = await first.ok("stop")
        assert names(events) == ["STOP"]
        await first.close()
        await second.greeting()  # now it is served, and its early input is read
        assert await second.line() == b'{"return": {}}\r\n'


async def test_server_close_flushes_and_sends_eof() -> None:
    table = CommandTable([CommandSpec("fail", _fail)])
    path = f"/tmp/qmpev-close-{os.getpid()}.sock"
    server = QMPServer([UnixAddress(path)], table, version=VERSION,
                       options=ServerOptions(max_outbound=1024))
    await server.start()
    client = await RawQMP.unix(path)
    await client.negotiate()
    _, line = await client.execute("fail")
    assert reply(line) == {"error": {"class": "GenericError", "desc": "no"}}
    server.publish({"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}})
    await server.close()
    rest = await client.eof()
    assert rest == b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}\r\n'
    assert not os.path.exists(path)


def _fail(arguments: dict[str, object]) -> object:
    raise CommandFailure("GenericError", "no")


async def test_large_reply_to_a_reading_monitor_is_not_an_overflow() -> None:
    async with SimulatedVM(max_outbound=64 * 1024) as vm:
        client = await RawQMP.unix(vm.socket_path)
        await client.negotiate()
        big = "x" * (1 << 20)
        await client.send(json.dumps({"execute": "query-status", "id": big}) + "\r\n")
        assert reply(await client.line())["id"] == big


class _SlowTransport(asyncio.Transport):
    """A transport whose write buffer size the test sets (what the kernel has not taken)."""

    def __init__(self) -> None:
        super().__init__()
        self.buffered = 0
        self.written = 0
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)
        self.buffered += len(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def until_negotiated(monitor: object) -> None:
    """Let the loop run the monitor's scheduled pump (one iteration per request)."""
    from qmpevents.server.monitor import Monitor
    assert isinstance(monitor, Monitor)
    for _ in range(10):
        if monitor._conn is not None and monitor._conn.accepts_events:
            return
        await asyncio.sleep(0)  # one loop iteration: the pump is a call_soon callback
    raise AssertionError("the monitor did not negotiate")


async def test_outbound_bound_counts_what_the_client_has_read_since() -> None:
    """A monitor that fell behind and caught up again is not judged by its old backlog."""
    from qmpevents.server.broadcaster import Broadcaster
    from qmpevents.server.dispatch import CommandTable
    from qmpevents.server.monitor import FlushQueue, Monitor

    monitor = Monitor(executor=CommandTable([]), broadcaster=Broadcaster(),
                      flusher=FlushQueue(asyncio.get_running_loop()), version={},
                      max_outbound=1000, on_open=lambda _: True, on_close=lambda _: None)
    transport = _SlowTransport()
    monitor.connection_made(transport)
    monitor.data_received(b'{"execute": "qmp_capabilities"}\n')
    await until_negotiated(monitor)
    monitor.flush()
    transport.buffered = 0  # the greeting and the reply were read
    line = b"x" * 100
    for _ in range(9):
        monitor.send(line)
    monitor.flush()
    assert transport.buffered == 900 and not transport.aborted
    transport.buffered = 0  # the client read everything
    for _ in range(9):
        monitor.send(line)
    assert not transport.aborted and not monitor.closed
    monitor.flush()
    transport.buffered += 2000  # now it really stops reading
    for _ in range(3):
        monitor.send(line)
    assert transport.aborted and monitor.closed
