"""Real NATS servers and Prometheus for the fleet tests: started on loopback, in temp dirs.

A :class:`NatsServer` keeps its port and store, so a test can SIGKILL it and
start it again as the same broker.  Readiness is awaited (the server's log
says "Server is ready"; a cluster answers JetStream requests), never slept.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
from cli_process import Cli, short_dir

from qmpevents.fleet import FleetEvent, fleet_events
from qmpevents.fleet.broker import BrokerOptions, StreamSettings, connect, ensure_stream
from qmpevents.recording import read_recording
from qmpevents.sim import SimulatedVM

NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
DEADLINE = 20.0


def free_port() -> int:
    """A loopback port free right now (kept by the test for the broker's restarts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def poll(condition: Callable[[], bool], timeout: float = DEADLINE,
               what: str = "condition") -> None:
    """Poll *condition* until true, with a deadline (files and logs give no events)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.02)


class NatsServer:
    """One nats-server with JetStream (a cluster member when *routes* are given)."""

    def __init__(self, directory: Path, *, name: str = "n1", port: int | None = None,
                 cluster_port: int | None = None, routes: tuple[int, ...] = (),
                 extra: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.name = name
        self.port = port or free_port()
        self.cluster_port = cluster_port
        self.routes = routes
        self.extra = extra
        self.proc: asyncio.subprocess.Process | None = None
        self.log = directory / f"{name}.log"
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        args = [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port),
                "-sd", str(self.directory / f"{self.name}-store"), "-l", str(self.log),
                "--server_name", self.name, *self.extra]
        if self.cluster_port is not None:
            args += ["--cluster_name", "qmpev", "--cluster",
                     f"nats://127.0.0.1:{self.cluster_port}",
                     "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        offset = self.log.stat().st_size if self.log.exists() else 0
        self.proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise RuntimeError(f"nats-server exited: {self.log.read_text()[-2000:]}")
            return self.log.exists() and b"Server is ready" in self.log.read_bytes()[offset:]

        await poll(ready, what=f"nats-server {self.name} ready")

    async def kill(self) -> None:
        """SIGKILL: no chance to flush or say goodbye."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        self.proc = None

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                await self.kill()
        self.proc = None


@contextlib.asynccontextmanager
async def nats_cluster(directory: Path, size: int = 3) -> AsyncIterator[list[NatsServer]]:
    """*size* JetStream servers routed to each other on loopback."""
    cluster_ports = [free_port() for _ in range(size)]
    servers = [NatsServer(directory, name=f"n{i + 1}", cluster_port=cluster_ports[i],
                          routes=tuple(p for p in cluster_ports if p != cluster_ports[i]))
               for i in range(size)]
    try:
        await asyncio.gather(*(server.start() for server in servers))
        yield servers
    finally:
        await asyncio.gather(*(server.stop() for server in servers))


async def read_stream(servers: list[str], count: int, *, subject: str = "qmp.>",
                      timeout: float = DEADLINE) -> list[FleetEvent]:
    """The first *count* events of the stream (from its start), with a deadline."""
    found: list[FleetEvent] = []
    async with asyncio.timeout(timeout):
        async with fleet_events(BrokerOptions(servers), subject=subject, since="all") as events:
            async for item in events:
                found.append(item)
                if len(found) >= count:
                    break
    return found


async def stream_count(servers: list[str], stream: str = "QMP") -> int:
    """How many messages the stream holds (0: no stream yet; -1: no answer yet)."""
    import nats
    import nats.errors
    import nats.js.errors

    nc = await nats.connect(servers=servers, connect_timeout=2, max_reconnect_attempts=1)
    try:
        try:
            info = await nc.jetstream().stream_info(stream)
        except nats.js.errors.NotFoundError:
            return 0
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
            return -1  # a cluster electing a leader: ask again
        return int(info.state.messages)
    finally:
        await nc.close()


class Host:
    """One host: a directory of simulated VMs, an agent following it, what the VMs emitted."""

    def __init__(self, name: str, sock_dir: str, spool: Path) -> None:
        self.name = name
        self.sock_dir = sock_dir
        self.spool = spool
        self.vms: list[SimulatedVM] = []
        self.emitted: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.agent: Cli | None = None

    async def start_vms(self, count: int) -> None:
        for index in range(count):
            vm = SimulatedVM(qmp=[f"unix:{self.sock_dir}/vm{index}.sock"],
                             drives=["disk0,werror=report"], name=f"vm{index}")
            await vm.start()
            vm.machine.subscribe(self.emitted[f"vm{index}"].append)
            self.vms.append(vm)

    async def start_agent(self, *servers: str, extra: tuple[str, ...] = ()) -> Cli:
        args = [arg for url in servers for arg in ("--nats", url)]
        self.agent = await Cli.start("agent", self.sock_dir, *args, "--host", self.name,
                                     "--spool", str(self.spool), "--fsync", "always",
                                     "--rescan", "0.2", *extra)
        for _ in self.vms:  # directories are scanned: one "attached" line per VM
            await self.agent.wait_line("attached", "err", timeout=20)
        return self.agent

    def emit(self, rounds: int) -> None:
        """*rounds* events per VM: RTC changes and disk errors (the report policy)."""
        for vm in self.vms:
            for n in range(rounds):
                if n % 2:
                    vm.machine.io_error("disk0", "write")
                else:
                    vm.machine.rtc_change(n)

    def spooled(self) -> int:
        return sum(len(list(read_recording(str(p)))) for p in self.spool.glob("*.jsonl"))

    async def close(self) -> None:
        if self.agent is not None:
            await self.agent.kill()
        for vm in self.vms:
            await vm.close()


@contextlib.asynccontextmanager
async def hosts(tmp_path: Path, count: int, vms: int) -> AsyncIterator[list[Host]]:
    with contextlib.ExitStack() as dirs:
        made = [Host(f"h{i}", dirs.enter_context(short_dir(f"fl{i}")), tmp_path / f"spool{i}")
                for i in range(count)]
        try:
            for host in made:
                await host.start_vms(vms)
            yield made
        finally:
            for host in made:
                await host.close()


def check_exactly_once_in_order(found: list[FleetEvent], made: list[Host]) -> None:
    """The stream holds what each VM emitted, each once, in the VM's order, as sent."""
    assert len({fe.msg_id for fe in found}) == len(found), "a message id twice"
    got: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for fe in found:
        assert fe.event.raw is not None
        got[fe.host, fe.vm].append(msgspec.json.decode(fe.event.raw))
    for host in made:
        for vm, emitted in host.emitted.items():
            assert got[host.name, vm] == emitted, f"{host.name}/{vm}"


async def until_stored(servers: list[str], count: int, timeout: float = 30) -> None:
    """Poll the stream's message count (JetStream pushes no notice of it)."""
    deadline = time.monotonic() + timeout
    while (stored := await stream_count(servers)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{stored} of {count} events stored")
        await asyncio.sleep(0.05)
    assert stored == count


@contextlib.asynccontextmanager
async def jetstream(tmp_path: Path) -> AsyncIterator[tuple[NatsServer, Any, Any]]:
    """A nats-server with the QMP stream, and a connection to it; both ended on exit."""
    broker = NatsServer(tmp_path / "nats")
    await broker.start()
    try:
        nc = await connect(BrokerOptions([broker.url]))
        try:
            js = nc.jetstream()
            await ensure_stream(js, StreamSettings("QMP"))
            yield broker, nc, js
        finally:
            await nc.close()
    finally:
        await broker.stop()
