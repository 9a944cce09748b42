"""The client against real QEMU 7.2 where users hit trouble first: TLS, one client per
monitor, and an orderly end after ``quit``.

TLS uses certificates the session makes with ``openssl`` in QEMU's
``tls-creds-x509`` layout, over TLS 1.2 and 1.3, with and without
``verify-peer``.  QEMU picks the TLS port (``port=0``); the test reads it back
with ``query-chardev`` on the plain monitor.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pki_support import have_openssl, make_pki
from qemu_support import QemuProcess, requires_qemu

import qmpevents
from qmpevents import Resume, Stop
from qmpevents.tls import client_context

pytestmark = [requires_qemu, pytest.mark.qemu]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not have_openssl():
        pytest.skip("needs the openssl command")
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_qemu(server_dir: Path, verify_peer: bool) -> QemuProcess:
    verify = "on" if verify_peer else "off"
    return QemuProcess(
        "-object", f"tls-creds-x509,id=tls0,dir={server_dir},endpoint=server,verify-peer={verify}",
        "-chardev", "socket,id=tlsmon,host=127.0.0.1,port=0,server=on,wait=off,tls-creds=tls0",
        "-mon", "chardev=tlsmon,mode=control")


async def _tls_port(vm: QemuProcess) -> int:
    async with qmpevents.connect(vm.socket_path) as plain:
        for chardev in await plain.execute("query-chardev", timeout=10):
            if chardev["label"] == "tlsmon":  # "disconnected:tcp:127.0.0.1:PORT,server=on"
                return int(chardev["filename"].split(",")[0].rsplit(":", 1)[1])
    raise AssertionError("no tlsmon chardev")


@pytest.mark.parametrize("verify_peer", [False, True], ids=["anonymous", "verify-peer"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                         ids=["tls1.2", "tls1.3"])
async def test_tls_to_real_qemu(pki: dict[str, Path], verify_peer: bool,
                                version: ssl.TLSVersion) -> None:
    async with _tls_qemu(pki["server"], verify_peer) as vm:
        port = await _tls_port(vm)
        context = client_context(pki["client" if verify_peer else "anonymous"])
        context.minimum_version = context.maximum_version = version
        async with qmpevents.connect(f"tcp:127.0.0.1:{port}", ssl=context,
                                     server_hostname="localhost", connect_timeout=10) as qmp:
            assert qmp._link is not None and qmp._link.transport is not None
            tls = qmp._link.transport.get_extra_info("ssl_object")
            assert tls.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                     ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
            # one command at a time, then several in flight: every reply comes
            assert (await qmp.execute("query-status", timeout=10))["status"] == "prelaunch"
            replies = await asyncio.gather(*(qmp.execute("query-name", timeout=10)
                                             for _ in range(8)))
            assert replies == [{}] * 8
            async with qmp.listen(Resume, Stop) as events:
                await qmp.execute("cont", timeout=10)
                await qmp.execute("stop", timeout=10)
                assert [type(await events.get(timeout=10)) for _ in range(2)] == [Resume, Stop]
            # QEMU 7.2 over TLS often closes after quit without its reply: the
            # end of the connection answers it, and SHUTDOWN still comes.
            stream = qmp.events()
            assert await qmp.execute("quit", timeout=10) == {}
            assert [event.name async for event in stream] == ["SHUTDOWN"]


async def test_tls_verify_peer_refuses_a_client_without_certificate(
        pki: dict[str, Path]) -> None:
    async with _tls_qemu(pki["server"], verify_peer=True) as vm:
        port = await _tls_port(vm)
        with pytest.raises((ssl.SSLError, ConnectionError, qmpevents.QMPEventsError)):
            async with qmpevents.connect(f"tcp:127.0.0.1:{port}",
                                         ssl=client_context(pki["anonymous"]),
                                         server_hostname="localhost", connect_timeout=10) as qmp:
                await qmp.execute("query-status", timeout=10)


async def test_a_second_client_of_one_monitor_is_told_it_is_busy_fast() -> None:
    async with QemuProcess() as vm, qmpevents.connect(vm.socket_path) as first:
        started = time.monotonic()
        with pytest.raises(qmpevents.MonitorBusy, match="QEMU serves one client per socket"):
            await qmpevents.connect(vm.socket_path, greeting_timeout=1.0)
        assert time.monotonic() - started < 5  # not the 10 s connect timeout
        assert (await first.execute("query-status", timeout=10))["status"] == "prelaunch"


async def test_a_client_beyond_the_monitors_backlog_is_told_it_is_busy_at_once() -> None:
    """QEMU's backlog is full once two clients wait: the next one's connect() fails
    with EAGAIN (asyncio took that for a connection, which then failed with
    EINVAL as a ConnectionLost: the newcomer's finding)."""
    async with QemuProcess() as vm, qmpevents.connect(vm.socket_path) as first:
        waiting = [socket.socket(socket.AF_UNIX) for _ in range(2)]
        try:
            for sock in waiting:  # Linux queues backlog + 1: two clients given up on
                sock.connect(vm.socket_path)  # stay queued until QEMU accepts them
            for _ in range(2):  # and again: a busy client leaves nothing behind
                with pytest.raises(qmpevents.MonitorBusy, match="its backlog is full"):
                    await qmpevents.connect(vm.socket_path, greeting_timeout=30)
        finally:
            for sock in waiting:
                sock.close()
        assert (await first.execute("query-status", timeout=10))["status"] == "prelaunch"


async def test_a_second_client_of_one_tls_monitor_is_told_it_is_busy_fast(
        pki: dict[str, Path]) -> None:
    async with _tls_qemu(pki["server"], verify_peer=False) as vm:
        address = f"tcp:127.0.0.1:{await _tls_port(vm)}"
        context = client_context(pki["anonymous"])
        async with qmpevents.connect(address, ssl=context, server_hostname="localhost") as first:
            started = time.monotonic()
            with pytest.raises(qmpevents.MonitorBusy, match="no TLS handshake within 1 s"):
                await qmpevents.connect(address, ssl=context, server_hostname="localhost",
                                        greeting_timeout=1.0)
            assert time.monotonic() - started < 5  # not the 10 s connect timeout
            assert (await first.execute("query-status", timeout=10))["status"] == "prelaunch"


async def test_quit_ends_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    async with QemuProcess() as vm:
        with caplog.at_level(logging.DEBUG, logger="qmpevents"):
            async with qmpevents.connect(vm.socket_path) as qmp:
                stream = qmp.events()
                await qmp.execute("quit", timeout=10)
                names = [event.name async for event in stream]  # ends, nothing raised
    assert names == ["SHUTDOWN"]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("closed after quit" in r.getMessage() for r in caplog.records)


QUIT_SCRIPT = """
import asyncio, sys, qmpevents
async def main():
    async with qmpevents.connect(sys.argv[1]) as qmp:
        await qmp.execute("quit", timeout=10)
        async for _ in qmp.events():
            pass
asyncio.run(main())
"""


async def test_the_library_prints_nothing_unless_logging_is_configured() -> None:
    async with QemuProcess() as vm:
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", QUIT_SCRIPT, vm.socket_path],
            capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
