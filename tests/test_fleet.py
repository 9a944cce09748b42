"""The fleet path end to end against a real nats-server: agents, broker faults, consumers.

3 agents (processes) follow 10 simulated VMs each and publish into one
JetStream server; the broker is SIGKILLed and restarted while the VMs keep
emitting, then an agent is SIGKILLed with a spool full of unpublished events
and restarted.  The stream must hold every event exactly once, in order per
VM, byte for byte what the VM sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fleet_support import (
    NatsServer,
    check_exactly_once_in_order,
    hosts,
    nats_cluster,
    poll,
    read_stream,
    stream_count,
    until_stored,
)

import qmpevents

pytestmark = pytest.mark.service  # starts nats-server / prometheus

AGENTS = 3
VMS_PER_AGENT = 10


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
            (host.spool / "cursor").unlink(missing_ok=True)  # as if no ack had been recorded
            await host.start_agent(broker.url)
            host.emit(1)
            await until_stored([broker.url], 22)
            check_exactly_once_in_order(await read_stream([broker.url], 22), made)
    finally:
        await broker.stop()


@pytest.mark.slow  # a cluster re-electing leaders after a node loss takes 5-20 s here
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
        # A cluster that lost its meta leader elects another (5-20 s here): the
        # consumer retries for 30 s, so the deadline must not be shorter.
        check_exactly_once_in_order(await read_stream(alive, 120, timeout=60), made)
