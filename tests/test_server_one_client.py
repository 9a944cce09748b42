"""One client per socket (QEMU's chardev): waiting clients cost the server nothing.

QEMU 7.2 accepts nothing while a client is connected to a monitor socket, so
the next clients wait in the kernel's listen backlog.  The server must do the
same over unix, TCP and TLS: clients that connect and give up while one is
served leave its descriptor and monitor counts where they were, and are
noticed (dropped) when their turn comes, before the next live client is greeted.
The visible order of service is pinned against real QEMU by the conformance
``one-client`` scenario and by tests/test_interop_connection.py.

The listener's own accept loop also keeps asyncio's behaviour when the process
runs out of descriptors: a warning, a pause, then accepting again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import ssl
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from pki_support import have_openssl, make_pki

from qmpevents.server import (
    CommandTable,
    QMPServer,
    ServerOptions,
    TcpAddress,
    UnixAddress,
)
from qmpevents.testing import RawQMP
from qmpevents.tls import client_context, server_context

VERSION = {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""}
GIVE_UPS = 300
BATCH = 30
DEADLINE = 10.0



@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not have_openssl():
        pytest.skip("the openssl CLI makes the test certificates")
    return make_pki(tmp_path_factory.mktemp("pki"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def patient_unix_connect(path: str) -> socket.socket:
    """A blocking connect(), which waits while the listen backlog is full (DEADLINE at most).

    A non-blocking one gets EAGAIN instead, which asyncio mistakes for a success,
    and Python's socket timeouts turn it into BlockingIOError: only the kernel's
    SO_SNDTIMEO bounds the wait.
    """
    sock = socket.socket(socket.AF_UNIX)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(DEADLINE), 0))
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def connect_and_give_up(address: UnixAddress | TcpAddress) -> None:
    """Connect without waiting and close at once: 0, EINPROGRESS, or EAGAIN (backlog full)."""
    if isinstance(address, UnixAddress):
        sock = socket.socket(socket.AF_UNIX)
        target: str | tuple[str, int] = address.path
    else:
        sock = socket.socket(socket.AF_INET)
        target = (address.host, address.port)
    sock.setblocking(False)
    sock.connect_ex(target)
    sock.close()


async def _client(address: UnixAddress | TcpAddress,
                  tls: ssl.SSLContext | None) -> RawQMP:
    if isinstance(address, UnixAddress):
        sock = await asyncio.to_thread(patient_unix_connect, address.path)
        sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        return RawQMP(reader, writer)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        address.host, address.port, ssl=tls, server_hostname="localhost" if tls else None),
        DEADLINE)
    return RawQMP(reader, writer)


async def _server(kind: str, tmp_path: Path, request: pytest.FixtureRequest,
                  ) -> tuple[QMPServer, ssl.SSLContext | None]:
    """A one-client server on a *kind* listener, and the client's TLS context."""
    address: UnixAddress | TcpAddress = (UnixAddress(str(tmp_path / "qmp.sock"))
                                         if kind == "unix" else TcpAddress("127.0.0.1", 0))
    server_tls = client_tls = None
    if kind == "tls":
        pki: dict[str, Path] = request.getfixturevalue("pki")
        server_tls, client_tls = server_context(pki["server"]), client_context(pki["anonymous"])
    options = ServerOptions(single_client=True, tls=server_tls)
    server = QMPServer([address], CommandTable([]), version=VERSION, options=options)
    await server.start()
    return server, client_tls


@pytest.mark.parametrize("kind", ["unix", "tcp", "tls"])
async def test_clients_that_give_up_while_one_is_served_cost_nothing(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    server, tls = await _server(kind, tmp_path, request)
    address = server.addresses[0]
    try:
        first = await _client(address, tls)
        await first.negotiate()
        fds = open_fds()
        for _ in range(GIVE_UPS // BATCH):
            for _ in range(BATCH):
                connect_and_give_up(address)
            # A round trip: the server's loop has run with the connections pending.
            _, line = await first.execute("query-status")
            assert b"CommandNotFound" in line
        assert (open_fds(), server.monitors) == (fds, 1)
        await first.close()
        # Their turn came: each was greeted into a closed socket and dropped, in order,
        # before the next live client.
        second = await _client(address, tls)
        await second.greeting()
        assert server.monitors == 1
        await second.close()
    finally:
        await server.close()


@pytest.mark.parametrize("kind", ["unix", "tcp"])
async def test_closing_the_server_closes_waiting_connections(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    server, tls = await _server(kind, tmp_path, request)
    address = server.addresses[0]
    first = await _client(address, tls)
    await first.negotiate()
    waiting = await _client(address, tls)
    await waiting.send(b'{"execute": "qmp_capabilities"}\r\n')
    await first.execute("query-status")  # the server ran: the second is still ungreeted
    assert server.monitors == 1
    await asyncio.wait_for(server.close(), DEADLINE)
    assert await first.eof() == b""
    try:
        rest = await waiting.eof()
    except ConnectionResetError:  # reset in the backlog (unix, TCP RST)
        rest = b""
    assert rest == b""
    await first.close()
    await waiting.close()


async def test_multi_client_mode_keeps_accepting(tmp_path: Path) -> None:
    path = str(tmp_path / "qmp.sock")
    server = QMPServer([UnixAddress(path)], CommandTable([]), version=VERSION)
    await server.start()
    try:
        clients = [await RawQMP.unix(path) for _ in range(5)]
        for client in clients:
            await client.greeting()
        assert server.monitors == 5
        for client in clients:
            await client.close()
    finally:
        await server.close()


async def test_out_of_descriptors_the_listener_backs_off_then_accepts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "qmp.sock")
    server = QMPServer([UnixAddress(path)], CommandTable([]), version=VERSION)
    await server.start()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    clients: list[socket.socket] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_fds() + 8, hard))
        with contextlib.suppress(OSError):  # EMFILE: every descriptor is taken
            while True:
                clients.append(socket.socket(socket.AF_UNIX))
                clients[-1].setblocking(False)
                clients[-1].connect_ex(path)
        with caplog.at_level(logging.WARNING, "qmpevents.server.listeners"):
            await _until(lambda: "cannot accept" in caplog.text)
        assert server.monitors == 0
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        await _until(lambda: server.monitors == len(clients))  # after the back-off
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for client in clients:
            client.close()
        await server.close()


async def _until(condition: Callable[[], bool]) -> None:
    """Poll *condition* until it holds (DEADLINE at most)."""
    async with asyncio.timeout(DEADLINE):
        while not condition():
            await asyncio.sleep(0.01)
