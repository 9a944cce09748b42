"""VNC and connection abuse (issue 13): connection bounds, guess back-off, fd reserve, logs.

* QEMU's ``-vnc ...,connections=N`` (default 32) is witnessed on real QEMU 7.2 and
  the simulator must behave the same: the same events for the same peers.
* Password guessing: the rate an attacker achieves, from one address and from many.
* 500 VNC peers against ``qmpevents serve`` under RLIMIT_NOFILE 128: QMP still
  answers, and the accept warnings come at most once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
from cli_process import QMPEVENTS
from qemu_support import QemuProcess, requires_qemu

import qmpevents
from qmpevents.sim import SimulatedVM
from qmpevents.sim.vnc import (
    DEFAULT_CONNECTIONS,
    DEFAULT_FD_RESERVE,
    VncEndpoint,
    VncListener,
    free_display,
)
from qmpevents.sim.vnc_guard import AuthBackoff, RateLimitedLog
from qmpevents.vnc_client import AuthFailed, RfbClient, handshake

HOST = "127.0.0.1"
DEADLINE = 10.0


# -- QEMU's connections bound, on QEMU and on the simulator ----------------------------


@asynccontextmanager
async def vnc_peer(kind: str, connections: int | None) -> AsyncIterator[tuple[str, int]]:
    """(QMP socket path, VNC port) of real QEMU or of the simulator, same options."""
    display = free_display()
    if kind == "qemu":
        option = f"{HOST}:{display}" + ("" if connections is None else
                                        f",connections={connections}")
        async with QemuProcess("-vnc", option) as qemu:
            yield qemu.socket_path, 5900 + display
    else:
        async with SimulatedVM(vnc=f"{HOST}:{display}", vnc_connections=connections,
                               profile="qemu-7.2") as vm:
            yield vm.socket_path, 5900 + display


class Labels:
    """Names peers by the order they connected, so two servers' events compare."""

    def __init__(self) -> None:
        self.by_port: dict[str, str] = {}

    def add(self, client: RfbClient, label: str) -> RfbClient:
        self.by_port[client.local_port] = label
        return client


async def expect_events(events: Any, labels: Labels, expected: list[tuple[str, str]]) -> None:
    """The next VNC events are exactly *expected* (name, peer label), each within a deadline."""
    seen = []
    for _ in expected:
        event = await events.get(timeout=DEADLINE)
        service = msgspec.json.decode(event.raw)["data"]["client"]["service"]
        seen.append((event.name, labels.by_port.get(service, "?")))
    assert seen == expected


async def connections_scenario(kind: str, connections: int | None) -> None:
    limit = DEFAULT_CONNECTIONS if connections is None else connections
    async with vnc_peer(kind, connections) as (qmp_path, port), \
            qmpevents.connect(f"unix:{qmp_path}") as qmp, qmp.listen("VNC_*") as events:
        labels = Labels()
        # Initialised clients: the one beyond the bound gets no ServerInit.
        viewers = [labels.add(await handshake(HOST, port), f"v{i}") for i in range(limit)]
        extra = labels.add(await RfbClient.connect(HOST, port), "extra")
        await extra.read_version()
        await extra.send_version(8)
        await extra.security(None)
        with pytest.raises(asyncio.IncompleteReadError):
            await asyncio.wait_for(extra.client_init(), DEADLINE)
        await extra.close()
        expected = [e for i in range(limit) for e in
                    (("VNC_CONNECTED", f"v{i}"), ("VNC_INITIALIZED", f"v{i}"))]
        await expect_events(events, labels, [*expected, ("VNC_CONNECTED", "extra"),
                                             ("VNC_DISCONNECTED", "extra")])
        # Clients that have not sent ClientInit: one more than the bound drops the oldest.
        waiting = []
        for i in range(limit + 1):
            peer = labels.add(await RfbClient.connect(HOST, port), f"w{i}")
            assert await asyncio.wait_for(peer.read_version(), DEADLINE) == b"RFB 003.008\n"
            waiting.append(peer)
        assert await asyncio.wait_for(waiting[0].closed_by_server(), DEADLINE)
        await expect_events(events, labels, [*(("VNC_CONNECTED", f"w{i}")
                                               for i in range(limit + 1)),
                                             ("VNC_DISCONNECTED", "w0")])
        # The viewers were never disturbed.
        frame = await asyncio.wait_for(viewers[0].full_frame(), DEADLINE)
        assert frame.width > 0
        for client in [*viewers, *waiting[1:]]:
            await client.close()


@requires_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("connections", [2, None], ids=["connections=2", "default"])
async def test_qemu_connections_bound(connections: int | None) -> None:
    """The witness: what QEMU 7.2 does at and beyond ``connections`` (default 32)."""
    await connections_scenario("qemu", connections)


@pytest.mark.parametrize("connections", [2, None], ids=["connections=2", "default"])
async def test_simulator_connections_bound_as_qemu(connections: int | None,
                                                   figures: Callable[[str, object], None]
                                                   ) -> None:
    await connections_scenario("sim", connections)
    if connections is None:
        figures("VNC: connections bound (QEMU's default, as QEMU 7.2 enforces it)",
                f"{DEFAULT_CONNECTIONS} connecting + {DEFAULT_CONNECTIONS} initialised")


# -- password guessing -----------------------------------------------------------------


@asynccontextmanager
async def password_listener(events: list[str] | None = None) -> AsyncIterator[VncListener]:
    """A listener with a password; *events* collects the names of the events it emits."""
    def record(name: str, server: VncEndpoint, client: VncEndpoint) -> None:
        if events is not None:
            events.append(name)

    listener = VncListener(HOST, 0, port=0, on_event=record, screen=lambda: ["x"],
                           password="secret")
    await listener.start()
    try:
        yield listener
    finally:
        await listener.close()


async def guess(port: int, source: str, password: str) -> bool:
    """One VNC Authentication attempt from *source*: True if the password was right."""
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
    client = RfbClient(reader, writer)
    try:
        await client.read_version()
        await client.send_version(8)
        try:
            await client.security(password)
        except AuthFailed:
            return False
        return True
    finally:
        await client.close()


async def attack(port: int, sources: list[str], seconds: float, workers: int = 16) -> int:
    """Guess as fast as the server lets *workers* parallel connections; answers received."""
    answered = 0
    deadline = time.monotonic() + seconds

    async def worker(number: int) -> None:
        nonlocal answered
        turn = number
        while time.monotonic() < deadline:
            source = sources[turn % len(sources)]
            turn += workers
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    assert not await guess(port, source, "wrong")
                    answered += 1

    await asyncio.gather(*(worker(n) for n in range(workers)))
    return answered


def schedule_bound(backoff: AuthBackoff, seconds: float) -> int:
    """Guesses one address can have checked in *seconds*, by the back-off's own rules."""
    count, elapsed, delay = 1, 0.0, backoff.first_delay
    while elapsed + delay <= seconds:
        elapsed += delay
        count += 1
        delay = min(delay * 2, backoff.max_delay)
    return count


@pytest.mark.slow
async def test_guessing_from_one_address_backs_off(figures: Callable[[str, object], None]
                                                   ) -> None:
    seconds = 3.0
    events: list[str] = []
    async with password_listener(events) as listener:
        guesses = await attack(listener.port, [HOST], seconds)
        emitted = len(events)
        backoff = AuthBackoff()
        assert 1 <= guesses <= schedule_bound(backoff, seconds), guesses
        # Another address is not held up by the first one's back-off.
        started = time.monotonic()
        assert await guess(listener.port, "127.0.0.2", "secret")
        assert time.monotonic() - started < 1.0
    figures("VNC guesses per second achieved by an attacker (one address, 16 connections)",
            f"{guesses / seconds:.2f} ({guesses} in {seconds:g} s; "
            f"{emitted / seconds:.0f} VNC events/s to each monitor meanwhile)")


@pytest.mark.slow
async def test_guessing_from_many_addresses_is_bounded_globally(
        figures: Callable[[str, object], None]) -> None:
    seconds = 2.0
    sources = [f"127.0.{n // 250}.{n % 250 + 2}" for n in range(200)]
    async with password_listener() as listener:
        guesses = await attack(listener.port, sources, seconds, workers=32)
        limit = AuthBackoff().global_interval
        assert 1 <= guesses <= seconds / limit + 1, guesses
        # The attack over, the right password works at once.
        assert await asyncio.wait_for(guess(listener.port, HOST, "secret"), 2 * limit + 1)
    figures("VNC guesses per second achieved by an attacker (200 addresses, 32 connections)",
            f"{guesses / seconds:.2f} ({guesses} in {seconds:g} s; bound "
            f"{1 / limit:g}/s)")


async def test_backoff_rules_on_a_manual_clock() -> None:
    now = [0.0]
    backoff = AuthBackoff(global_interval=0.25, first_delay=0.5, max_delay=2.0,
                          max_addresses=2, forget_after=10.0, clock=lambda: now[0])
    await backoff.admit("a")
    assert backoff.wait_for("b") == pytest.approx(0.25)  # the global slot is taken
    now[0] = 0.25
    for delay in (0.5, 1.0, 2.0, 2.0):  # doubling, capped
        backoff.failed("a")
        assert backoff.wait_for("a") == pytest.approx(delay)
    backoff.succeeded("a")
    assert backoff.wait_for("a") == 0.0
    for host in ("x", "y", "z"):  # at most two addresses remembered
        backoff.failed(host)
    assert backoff.wait_for("x") == 0.0 and backoff.wait_for("z") > 0
    now[0] += 13.0  # quiet for longer than forget_after: forgotten at the next failure
    backoff.failed("w")
    assert backoff.wait_for("y") == 0.0 and backoff.wait_for("z") == 0.0


def test_rate_limited_log_says_once_a_second_with_a_count(caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("test.vnc"), interval=1.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.vnc"):
        for number in range(1000):  # 1000 errors in 2.5 s
            now[0] = number / 400
            log.warning("accept() failed")
    assert [r.getMessage() for r in caplog.records] == [
        "accept() failed", "accept() failed (and 399 more since the last report)",
        "accept() failed (and 399 more since the last report)"]


# -- 500 peers against qmpevents serve under a low RLIMIT_NOFILE ------------------------

FD_LIMIT = 128
PEERS = 500


def _fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def connect_silent_peers(port: int, count: int) -> list[socket.socket]:
    """*count* peers that connect and never say a word.

    Paced (16 handshakes in flight) while the server accepts; once a handshake
    stalls, the server has stopped accepting, and the rest are started at once to
    wait in the kernel (a burst beyond the backlog would only measure SYN retries).
    """
    loop = asyncio.get_running_loop()
    peers: list[socket.socket] = []
    in_flight = asyncio.Semaphore(16)
    saturated = False

    async def one() -> None:
        nonlocal saturated
        peer = socket.socket()
        peer.setblocking(False)
        peers.append(peer)
        async with in_flight:
            if saturated:
                peer.connect_ex((HOST, port))
                return
            try:
                await asyncio.wait_for(loop.sock_connect(peer, (HOST, port)), 0.25)
            except (TimeoutError, OSError):
                saturated = True

    await asyncio.gather(*(one() for _ in range(count)))
    return peers


@pytest.mark.subprocess
@pytest.mark.parametrize("connections", [None, PEERS], ids=["default", "connections=500"])
async def test_qmp_reachable_with_500_vnc_peers(tmp_path: Any, connections: int | None,
                                                figures: Callable[[str, object], None]
                                                ) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * PEERS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * PEERS), hard))
    display = free_display()
    qmp_path = str(tmp_path / "qmp.sock")
    extra = [] if connections is None else ["--vnc-connections", str(connections)]

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))

    proc = await asyncio.create_subprocess_exec(
        *QMPEVENTS, "serve", "--qmp", f"unix:{qmp_path}", "--vnc", f"{HOST}:{display}", *extra,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, preexec_fn=low_limit)
    peers: list[socket.socket] = []
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(DEADLINE):
            while b"VNC listening" not in await proc.stderr.readline():
                pass
        started = time.monotonic()
        peers = await connect_silent_peers(5900 + display, PEERS)
        # The server takes what it will: up to its bound, or to its fd reserve.
        held = DEFAULT_CONNECTIONS if connections is None else FD_LIMIT - DEFAULT_FD_RESERVE
        async with asyncio.timeout(DEADLINE):
            while _fds_of(proc.pid) < held:
                await asyncio.sleep(0.02)
        before = time.monotonic()
        async with asyncio.timeout(5.0), qmpevents.connect(f"unix:{qmp_path}") as qmp:
            status = await qmp.execute("query-status")
        qmp_seconds = time.monotonic() - before
        assert status["status"] == "running"
        left = FD_LIMIT - _fds_of(proc.pid)
        assert left >= DEFAULT_FD_RESERVE - 1, left  # less the QMP connection, if still open
        elapsed = time.monotonic() - started
    finally:
        for peer in peers:
            peer.close()
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), DEADLINE)
    text = err.decode()
    assert "Traceback" not in text and "out of system resource" not in text, text[-2000:]
    warnings = [line for line in text.splitlines() if "VNC: not accepting" in line]
    assert len(warnings) <= elapsed + 2, warnings
    figures(f"VNC: fds left when {PEERS} VNC peers connect (RLIMIT_NOFILE {FD_LIMIT}, "
            f"{'default bound' if connections is None else '--vnc-connections 500'})",
            f"{left}; QMP query-status answered in {qmp_seconds * 1000:.0f} ms; "
            f"{len(warnings)} accept warnings in {elapsed:.1f} s")


# -- one RFB module, and no pycryptodome needed to import it ---------------------------


@pytest.mark.subprocess
def test_vnc_modules_import_without_pycryptodome() -> None:
    """The base install (no ``vnc`` extra) imports both VNC ends; only DES needs Crypto."""
    script = (
        "import sys; sys.modules['Crypto'] = None\n"
        "import qmpevents.rfb, qmpevents.vnc_client, qmpevents.sim.vnc, qmpevents.cli.demo\n"
        "assert qmpevents.vnc_client.PixelFormat is qmpevents.rfb.PixelFormat\n"
        "try:\n"
        "    qmpevents.rfb.vnc_auth_response('pw', bytes(16))\n"
        "except ImportError:\n"
        "    print('DES needs the vnc extra')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=DEADLINE)
    assert (done.returncode, done.stdout, done.stderr) == (0, "DES needs the vnc extra\n", "")
