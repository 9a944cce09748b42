"""The fleet path end to end against a real nats-server: agents, broker faults, consumers.

3 agents (processes) follow 10 simulated VMs each and publish into one
JetStream server; the broker is SIGKILLed and restarted while the VMs keep
emitting, then an agent is SIGKILLed with a spool full of unpublished events
and restarted.  The stream must hold every event exactly once, in order per
VM, byte for byte what the VM sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
from cli_process import Cli, short_dir
from fleet_support import NatsServer, nats_cluster, poll, read_stream, stream_count

import qmpevents
from qmpevents.fleet import FleetEvent
from qmpevents.recording import read_recording
from qmpevents.sim import SimulatedVM

AGENTS = 3
VMS_PER_AGENT = 10


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


async def test_three_agents_thirty_vms_broker_and_agent_killed(
        tmp_path: Path, figures: Callable[[str, object], None]) -> None:
    broker = NatsServer(tmp_path / "nats")
    await broker.start()
    try:
        async with hosts(tmp_path, AGENTS, VMS_PER_AGENT) as made:
            await asyncio.gather(*(h.start_agent(broker.url) for h in made))
            total = AGENTS * VMS_PER_AGENT
            # A fault over QMP, as management software would inject it.
            async with qmpevents.connect(f"unix:{made[0].vms[0].socket_path}") as qmp:
                await qmp.execute("x-sim-io-error", {"device": "disk0", "operation": "read"})
            started = time.monotonic()
            for host in made:
                host.emit(20)
            expected = 1 + total * 20
            await until_stored([broker.url], expected)
            figures("fleet: events/s through 3 agents into JetStream (3 x 10 VMs)",
                    f"{expected / (time.monotonic() - started):,.0f}")

            await broker.kill()  # mid-stream: the VMs keep emitting, the agents spool
            for host in made:
                host.emit(6)
            expected += total * 6
            await poll(lambda: sum(h.spooled() for h in made) == expected, what="spooled")
            await broker.start()  # same port, same store
            restarted = time.monotonic()
            for host in made:
                host.emit(4)
            expected += total * 4
            await until_stored([broker.url], expected)
            figures("fleet: broker restart to every spooled event stored (720 + 480 events)",
                    f"{time.monotonic() - restarted:.2f} s")

            await broker.kill()  # now an agent dies with unpublished events in its spool
            victim = made[0]
            victim.emit(5)
            await poll(lambda: victim.spooled() == 1 + VMS_PER_AGENT * 35, what="spooled")
            assert victim.agent is not None
            await victim.agent.kill()  # SIGKILL
            expected += VMS_PER_AGENT * 5
            await broker.start()
            await victim.start_agent(broker.url)  # resumes from its spool
            for host in made:
                host.emit(2)
            expected += total * 2
            await until_stored([broker.url], expected)
            check_exactly_once_in_order(await read_stream([broker.url], expected), made)
            assert await stream_count([broker.url]) == expected  # no duplicate stored
    finally:
        await broker.stop()


async def until_stored(servers: list[str], count: int, timeout: float = 30) -> None:
    """Poll the stream's message count (JetStream pushes no notice of it)."""
    deadline = time.monotonic() + timeout
    while (stored := await stream_count(servers)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{stored} of {count} events stored")
        await asyncio.sleep(0.05)
    assert stored == count


async def test_republishing_the_spool_stores_nothing_twice(tmp_path: Path) -> None:
    """Nats-Msg-Id and the duplicate window: a crash between ack and cursor is harmless."""
    broker = NatsServer(tmp_path / "nats")
    await broker.start()
    try:
        async with hosts(tmp_path, 1, 2) as made:
            host = made[0]
            await host.start_agent(broker.url)
            host.emit(10)
            await until_stored([broker.url], 20)
            assert host.agent is not None
            await host.agent.kill()
            (host.spool / "cursor").unlink()  # as if no acknowledgement had been recorded
            await host.start_agent(broker.url)
            host.emit(1)
            await until_stored([broker.url], 22)
            check_exactly_once_in_order(await read_stream([broker.url], 22), made)
    finally:
        await broker.stop()


async def test_a_three_node_cluster_survives_a_node(tmp_path: Path) -> None:
    """Agents told of n1 only learn the cluster from it; n1 dies; nothing is lost."""
    async with nats_cluster(tmp_path / "cluster") as nodes, hosts(tmp_path, 2, 3) as made:
        urls = [node.url for node in nodes]
        for host in made:
            await host.start_agent(nodes[0].url, extra=("--replicas", "3"))
        for host in made:
            host.emit(10)
        await until_stored(urls, 60)
        await nodes[0].kill()
        alive = urls[1:]
        for host in made:
            host.emit(10)
        await until_stored(alive, 120)
        check_exactly_once_in_order(await read_stream(alive, 120), made)
