"""QEMU 7.2's connection rules: one client per socket, half-close, pretty=on.

The line-by-line comparisons with real QEMU are conformance scenarios
(``half-close``, ``half-close-silent``, ``one-client``, ``pretty``); here are
the simulator's own rules (profile defaults, flags, TCP) and the same checks
made with tools we did not write: ``socat`` and OpenBSD ``nc -N``, whose
output must be the same from QEMU and from ``qmpevents serve``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import tempfile

import pytest
from interop_support import QMPEVENTS, TARGETS, Target, mask, raw_socket, serve
from qmp_raw import names, reply

from qmpevents.addresses import AddressError, TcpAddress, UnixAddress, parse_address
from qmpevents.codec.encoder import encode_message, pretty_wire
from qmpevents.sim import SimulatedVM
from qmpevents.testing import RawQMP

#: What ``echo '...' | socat - UNIX-CONNECT:sock`` sends: requests, then EOF.
BURST = (b'{"execute": "qmp_capabilities"}{"execute": "query-status", "id": 1}'
         b'{"execute": "cont"}{"execute": "stop", "id": "s"}{"execute": "query-status"}\n')


def _recv_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# -- half-close ----------------------------------------------------------


@pytest.mark.parametrize("profile", ["seed", "qemu-7.2"])
async def test_half_close_answers_every_request_then_closes(profile: str) -> None:
    async with SimulatedVM(profile=profile, start_paused=True) as vm:  # type: ignore[arg-type]
        qmp = await RawQMP.unix(vm.socket_path)
        await qmp.greeting()
        await qmp.send(BURST + b'{"execute": "query-status", "id": "unfinished"')
        qmp.writer.write_eof()
        lines = (await qmp.eof()).splitlines(keepends=True)
    assert [reply(line).get("id") for line in lines if b'"event"' not in line] == \
        [None, 1, None, "s", None]
    # the seed profile has no RESUME (the spec document does not list it)
    expected = ["RESUME", "STOP"] if profile == "qemu-7.2" else ["STOP"]
    assert names([line for line in lines if b'"event"' in line]) == expected
    assert reply(lines[-1])["return"]["status"] == "paused"


async def test_complete_requests_before_an_unfinished_one_are_answered_at_once() -> None:
    """QEMU answers what is complete in a read, not at the next newline."""
    async with SimulatedVM(profile="qemu-7.2") as vm:
        qmp = await RawQMP.unix(vm.socket_path)
        await qmp.negotiate()
        await qmp.send(b'{"execute": "query-status", "id": 1}{"execute": "stop", "id": 2}'
                       b'{"execute": "query-status", "id": "partial"')
        assert reply(await qmp.line())["id"] == 1
        assert names([await qmp.line()]) == ["STOP"]
        assert reply(await qmp.line()) == {"return": {}, "id": 2}
        await qmp.send(b"}")
        assert reply(await qmp.line())["id"] == "partial"


@pytest.mark.parametrize("tool", ["socat", "nc"])
@pytest.mark.parametrize("target", TARGETS)
async def test_piped_tools_get_every_reply(tool: str, target: Target) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed (./dev test installs it)")
    async with serve(target) as path:
        argv = (["socat", "-", f"UNIX-CONNECT:{path}"] if tool == "socat"
                else ["nc", "-N", "-U", path])
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(BURST), 20)
    lines = [mask(line) for line in out.decode().splitlines()]
    assert lines[1:] == [
        '{"return": {}}',
        '{"return": {"status": "prelaunch", "singlestep": false, "running": false}, "id": 1}',
        '{"timestamp": {"seconds": T, "microseconds": T}, "event": "RESUME"}',
        '{"return": {}}',
        '{"timestamp": {"seconds": T, "microseconds": T}, "event": "STOP"}',
        '{"return": {}, "id": "s"}',
        '{"return": {"status": "paused", "singlestep": false, "running": false}}']


# -- one client per socket ----------------------------------------------


def _has_data(sock: socket.socket) -> bool:
    """Whether anything has arrived on *sock* (without waiting or consuming)."""
    sock.setblocking(True)  # so that MSG_DONTWAIT answers at once, not after the timeout
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


async def _greeted_while_first_is_connected(path: str, several: bool) -> bool:
    """Connect a second client while a first one is served; is it greeted?

    Where it should be (*several*), wait for the greeting, with a deadline.
    Where it should not, look after a round trip of the first client, which
    comes after the second connected: a server that greets on accept has
    written the greeting by then (always in-process; almost always for a
    ``serve`` process, and the conformance scenario ``one-client`` checks
    the same against QEMU).
    """
    first = await RawQMP.unix(path)
    await first.negotiate()
    second = raw_socket(path)
    try:
        await first.ok("query-status")
        if not several:
            return _has_data(second)
        second.setblocking(False)
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(second, 16), 10)
        return data.startswith(b'{"QMP"')
    finally:
        second.close()
        await first.close()


@pytest.mark.parametrize(("options", "several"), [
    ({"profile": "qemu-7.2"}, False),
    ({"profile": "seed"}, True),
    ({"profile": "qemu-7.2", "multi_client": True}, True),
    ({"profile": "seed", "single_client": True}, False),
])
async def test_clients_per_socket_follow_profile_and_flags(options: dict[str, object],
                                                           several: bool) -> None:
    async with SimulatedVM(**options) as vm:  # type: ignore[arg-type]
        assert vm.single_client is not several
        assert await _greeted_while_first_is_connected(vm.socket_path, several) is several


def test_single_and_multi_client_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        SimulatedVM(single_client=True, multi_client=True)


async def test_waiting_clients_are_served_in_order_with_what_they_sent() -> None:
    async with SimulatedVM(profile="qemu-7.2") as vm:
        first = await RawQMP.unix(vm.socket_path)
        await first.negotiate()
        waiting = [await RawQMP.unix(vm.socket_path) for _ in range(3)]
        for index, client in enumerate(waiting):
            await client.send(f'{{"execute": "qmp_capabilities", "id": {index}}}\r\n')
        await waiting[1].close()  # gave up while waiting
        await first.close()
        await waiting[0].greeting()
        assert reply(await waiting[0].line()) == {"return": {}, "id": 0}
        await waiting[0].close()
        await waiting[2].greeting()
        assert reply(await waiting[2].line()) == {"return": {}, "id": 2}
        await waiting[2].close()


@pytest.mark.parametrize(("flags", "several"), [
    ([], False), (["--multi-client"], True), (["--single-client"], False)])
async def test_serve_flags(flags: list[str], several: bool) -> None:
    tmp = tempfile.mkdtemp(prefix="qmpev-flags-")
    path = os.path.join(tmp, "qmp.sock")
    proc = await asyncio.create_subprocess_exec(
        *QMPEVENTS, "serve", "--profile", "qemu-7.2", "--qmp", f"unix:{path}", *flags,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    try:
        assert b"QMP listening on" in await asyncio.wait_for(proc.stderr.readline(), 10)
        assert await _greeted_while_first_is_connected(path, several) is several
    finally:
        proc.kill()
        await proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


async def test_serve_refuses_both_flags() -> None:
    proc = await asyncio.create_subprocess_exec(
        *QMPEVENTS, "serve", "--single-client", "--multi-client",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 2
    assert err.count(b"\n") == 1 and b"not allowed with argument" in err


# -- pretty=on -----------------------------------------------------------


def test_pretty_addresses() -> None:
    assert parse_address("unix:/run/vm,pretty=on") == UnixAddress("/run/vm", pretty=True)
    assert parse_address("unix:/run/a,b.sock") == UnixAddress("/run/a,b.sock")
    assert parse_address("tcp:127.0.0.1:4444,pretty=on") == TcpAddress("127.0.0.1", 4444, True)
    assert parse_address("tcp:[::1]:1,pretty=on,pretty=off") == TcpAddress("::1", 1)
    assert str(parse_address("unix:/x,pretty=on")) == "unix:/x,pretty=on"
    with pytest.raises(AddressError, match="pretty=on or pretty=off"):
        parse_address("unix:/x,pretty=yes")


@pytest.mark.parametrize("value", [
    {}, [], {"a": {}, "b": [], "c": [{}, [[]]]},
    {"s": 'commas, colons: {braces} [brackets] "quotes" \\ \u00e9\n', "n": [-1.5, 1e300, 0]},
    {"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}},
])
def test_pretty_wire_keeps_every_value_and_lays_it_out(value: object) -> None:
    compact = encode_message(value)
    pretty = pretty_wire(compact)
    # same values, same member order (QDict's, as encoded), same escapes
    assert json.loads(pretty, object_pairs_hook=list) == json.loads(compact,
                                                                   object_pairs_hook=list)
    assert pretty.endswith(b"\r\n") and b"\n" not in pretty.replace(b"\r\n", b"")
    depth = 0
    for line in pretty.split(b"\r\n")[:-1]:
        stripped = line.lstrip(b" ")
        if stripped[:1] in (b"}", b"]"):
            depth -= 1
        assert len(line) - len(stripped) == 4 * depth, pretty  # four spaces a level
        if stripped[-1:] in (b"{", b"["):
            depth += 1


async def test_pretty_over_tcp_events_included() -> None:
    async with SimulatedVM(qmp=["tcp:127.0.0.1:0,pretty=on"], profile="qemu-7.2",
                           start_paused=True) as vm:
        address = vm.addresses[0]
        assert isinstance(address, TcpAddress) and address.pretty and address.port
        reader, writer = await asyncio.open_connection(address.host, address.port)
        writer.write(b'{"execute": "qmp_capabilities"}{"execute": "cont"}')
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    messages = data.split(b"\r\n}\r\n")
    assert messages[1] == b'{\r\n    "return": {\r\n    }'
    assert messages[2].startswith(b'{\r\n    "timestamp": {\r\n        "seconds": ')
    assert messages[2].endswith(b'\r\n    },\r\n    "event": "RESUME"')

