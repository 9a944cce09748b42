"""Real NATS servers and Prometheus for the fleet tests: started on loopback, in temp dirs.

A :class:`NatsServer` keeps its port and store, so a test can SIGKILL it and
start it again as the same broker.  Readiness is awaited (the server's log
says "Server is ready"; a cluster answers JetStream requests), never slept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from qmpevents.fleet import FleetEvent, fleet_events
from qmpevents.fleet.broker import BrokerOptions

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
                 cluster_port: int | None = None, routes: tuple[int, ...] = ()) -> None:
        self.directory = directory
        self.name = name
        self.port = port or free_port()
        self.cluster_port = cluster_port
        self.routes = routes
        self.proc: asyncio.subprocess.Process | None = None
        self.log = directory / f"{name}.log"
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        args = [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port),
                "-sd", str(self.directory / f"{self.name}-store"), "-l", str(self.log),
                "--server_name", self.name]
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
    """How many messages the stream holds (0 when it does not exist yet)."""
    import nats
    import nats.js.errors

    nc = await nats.connect(servers=servers, connect_timeout=2, max_reconnect_attempts=1)
    try:
        try:
            info = await nc.jetstream().stream_info(stream)
        except nats.js.errors.NotFoundError:
            return 0
        return int(info.state.messages)
    finally:
        await nc.close()


def env_without_proxy() -> dict[str, str]:
    """The environment for child processes, without HTTP proxies (loopback only)."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
