"""Connecting to an address that cannot be reached: one ConnectError naming the address.

A newcomer's findings: a missing socket raised a bare ``FileNotFoundError``
without the path, a regular file said ``Connection refused``, and a TLS server
that requires a client certificate was reported as a lost connection.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pytest

import qmpevents
from qmpevents.addresses import TcpAddress
from qmpevents.sim import SimulatedVM


async def test_a_missing_socket_names_its_path(short_tmp: str) -> None:
    address = f"unix:{short_tmp}/nonexist.sock"
    with pytest.raises(qmpevents.ConnectError) as caught:
        async with qmpevents.connect(address):
            pass
    error = caught.value
    assert str(error) == f"{address}: No such file or directory"
    assert (error.errno, error.strerror, error.address) == (
        errno.ENOENT, "No such file or directory", address)
    assert isinstance(error, OSError) and isinstance(error, qmpevents.QMPEventsError)
    assert isinstance(error.__cause__, FileNotFoundError)  # the OS's own error, kept


def test_connect_sync_names_the_path_too(short_tmp: str) -> None:
    path = f"{short_tmp}/nonexist.sock"
    with pytest.raises(qmpevents.ConnectError, match=f"^unix:{path}: No such file"), \
            qmpevents.connect_sync(path):
        pass


async def test_a_refused_tcp_port_is_said_in_the_oss_words() -> None:
    """strerror was asyncio's "Connect call failed ('127.0.0.1', PORT)"."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(qmpevents.ConnectError) as caught:
            await qmpevents.connect(f"tcp:127.0.0.1:{port}")
    error = caught.value
    assert (error.errno, error.strerror) == (errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))
    assert str(error) == f"tcp:127.0.0.1:{port}: Connection refused"


async def test_a_host_name_that_does_not_resolve_is_said_in_the_resolvers_words() -> None:
    """os.strerror(-2) said "Unknown error -2" for getaddrinfo's EAI_NONAME."""
    with pytest.raises(qmpevents.ConnectError) as caught:
        await qmpevents.connect("tcp:no-such-host.invalid:4444")
    assert "Unknown error" not in str(caught.value) and caught.value.strerror


async def test_a_regular_file_is_not_a_socket(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("not a VM\n")
    with pytest.raises(qmpevents.ConnectError,
                       match=r"README\.md: not a socket \(a regular file\)$") as caught:
        await qmpevents.connect(str(readme))
    assert caught.value.errno == errno.ECONNREFUSED  # what the OS said, still there
    with pytest.raises(qmpevents.ConnectError, match=r": not a socket \(a directory\)$"):
        await qmpevents.connect(str(tmp_path))


async def test_a_socket_nobody_listens_on_is_refused(short_tmp: str) -> None:
    import socket

    path = os.path.join(short_tmp, "dead.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)  # bound, never listening: what a VM that died leaves behind
    try:
        with pytest.raises(qmpevents.ConnectError, match=f"{path}: Connection refused$"):
            await qmpevents.connect(path)
    finally:
        dead.close()


@pytest.mark.subprocess  # the openssl CLI makes the certificates
async def test_a_tls_server_that_requires_a_client_certificate_says_so(
        tmp_path: Path) -> None:
    from pki_support import make_pki

    from qmpevents.tls import client_context, server_context

    pki = make_pki(tmp_path)
    vm = SimulatedVM(qmp=["tcp:127.0.0.1:0"],
                     tls=server_context(pki["server"], verify_peer=True))
    async with vm:
        address = vm.addresses[0]
        assert isinstance(address, TcpAddress)
        where = f"tcp:127.0.0.1:{address.port}"
        for who in ("anonymous", "stranger"):  # no client certificate; one of another CA
            with pytest.raises(qmpevents.ConnectError) as caught:
                await qmpevents.connect(where, ssl=client_context(pki[who]),
                                        connect_timeout=5)
            message = str(caught.value)
            assert message.startswith(f"{where}: ")
            assert "TLS" in message and "client certificate" in message, message
            assert "lost" not in message
        async with qmpevents.connect(where, ssl=client_context(pki["client"])) as qmp:
            assert (await qmp.execute("query-status"))["status"] == "running"


async def test_a_busy_monitor_is_a_connect_error(tmp_path: Path) -> None:
    path = str(tmp_path / "busy.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        with pytest.raises(qmpevents.ConnectError) as caught:
            await qmpevents.connect(f"unix:{path}", greeting_timeout=0.2)
    assert isinstance(caught.value, qmpevents.MonitorBusy)
    assert caught.value.address == f"unix:{path}"
    assert str(caught.value).startswith(f"unix:{path}: connected, but no QMP greeting")
