"""Benchmark of the fleet path: agent -> JetStream -> consumer, and the agent's memory.

    .venv/bin/python benchmarks/bench_fleet.py [--quick]

* throughput: simulated VMs emit RTC_CHANGE events (seed profile, no
  throttling); the same events are read (a) by a local ``qmpevents watch
  DIR --json`` to /dev/null and (b) through ``qmpevents agent`` (spool,
  JetStream publish with acks) into a real nats-server and out again through
  ``qmpevents watch nats://... --json`` to /dev/null.  Both clocks run from
  the first event emitted to the reader's exit after the last one.
  Target: fleet >= 0.5x local.  Then each half alone, to show where the time
  goes: the agent (events emitted until the stream stored them) and the
  consumer (``watch nats:// --since all`` over events already stored); and
  the CPU time per event of each reader process (user + system: a figure
  that a machine busy with other work changes less than events/s).
* outage: 1,000 VMs attached to one agent; the broker is killed and the VMs
  emit 1,000 events/s for 60 s (10 s with --quick): the events go to the
  spool on disk, the agent's RSS stays flat (<= 100 MiB).  Then the broker
  is restarted: how long until the stream holds every event.

Needs nats-server (Debian's package) and the ``fleet`` extra.  Exits 1 if a
target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from qmpevents.sim import SimulatedVM

QMPEVENTS = (sys.executable, "-c", "import sys; from qmpevents.cli import main; sys.exit(main())")
NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"
TARGET_RATIO = 0.5
TARGET_RSS_MIB = 100.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Broker:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.log = directory / "nats.log"

    async def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        self.proc = await asyncio.create_subprocess_exec(
            NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port),
            "-sd", str(self.directory / "store"), "-l", str(self.log),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        while not (self.log.exists() and b"Server is ready" in self.log.read_bytes()[offset:]):
            await asyncio.sleep(0.02)  # polling the log: nats-server signals nothing else

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stored(self) -> int:
        import nats
        import nats.js.errors

        nc = await nats.connect(self.url)
        try:
            return int((await nc.jetstream().stream_info("QMP")).state.messages)
        except nats.js.errors.NotFoundError:
            return 0
        finally:
            await nc.close()


async def cli(*args: str, stdout: int | None = asyncio.subprocess.DEVNULL
              ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *QMPEVENTS, *args, stdin=asyncio.subprocess.DEVNULL, stdout=stdout,
        stderr=asyncio.subprocess.PIPE)


async def wait_err(proc: asyncio.subprocess.Process, text: str, times: int = 1) -> None:
    """Read the command's stderr until *text* was seen *times* times."""
    assert proc.stderr is not None
    seen = 0
    while seen < times:
        line = await asyncio.wait_for(proc.stderr.readline(), 120)
        if not line:
            raise RuntimeError(f"stderr ended waiting for {text!r}")
        seen += text in line.decode()


def drain_stderr(proc: asyncio.subprocess.Process) -> asyncio.Task[bytes]:
    assert proc.stderr is not None
    return asyncio.ensure_future(proc.stderr.read())


async def start_vms(directory: str, count: int) -> list[SimulatedVM]:
    vms = []
    for index in range(count):
        vm = SimulatedVM(qmp=[f"unix:{directory}/vm{index}.sock"], max_outbound=1 << 28)
        await vm.start()
        vms.append(vm)
    return vms


def emit(vms: Sequence[SimulatedVM], per_vm: int) -> None:
    for n in range(per_vm):
        for vm in vms:
            vm.machine.rtc_change(n)


def children_cpu() -> float:
    """CPU seconds of the children that exited (and were waited for) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu() -> float:
    """CPU seconds of this process (the simulated VMs) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds of a running process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed_read(reader: asyncio.subprocess.Process, vms: Sequence[SimulatedVM],
                     per_vm: int) -> tuple[float, float]:
    """Emit, then wait for the reader to exit after the last event: events/s, CPU s."""
    drained = drain_stderr(reader)
    cpu = children_cpu()
    started = time.perf_counter()
    emit(vms, per_vm)
    status = await asyncio.wait_for(reader.wait(), 300)
    elapsed = time.perf_counter() - started
    err = await drained
    if status != 0:
        raise RuntimeError(f"reader exited {status}: {err.decode()[-500:]}")
    return len(vms) * per_vm / elapsed, children_cpu() - cpu


async def until_stored(broker: Broker, count: int) -> None:
    while await broker.stored() < count:
        await asyncio.sleep(0.02)  # polling the stream's count: JetStream notifies nothing


async def throughput(work: Path, vm_count: int, per_vm: int) -> dict[str, float]:
    """Events/s: local watch, the fleet path, and its two halves alone (where time goes)."""
    total = vm_count * per_vm
    sock_dir = tempfile.mkdtemp(prefix="qmpev-bf-", dir="/tmp")
    vms = await start_vms(sock_dir, vm_count)
    broker = Broker(work)
    agent = None
    try:
        watch = await cli("watch", sock_dir, "--json", "--count", str(total))
        await wait_err(watch, "attached", vm_count)
        local, local_cpu = await timed_read(watch, vms, per_vm)

        await broker.start()
        agent = await cli("agent", sock_dir, "--nats", broker.url, "--host", "bench",
                          "--spool", str(work / "spool"))
        await wait_err(agent, "attached", vm_count)
        agent_err = drain_stderr(agent)
        consumer = await cli("watch", broker.url, "--json", "--count", str(total))
        await wait_err(consumer, "reading stream")
        assert broker.proc is not None
        broker_cpu = process_cpu(broker.proc.pid)
        vms_cpu = own_cpu()
        fleet, consumer_cpu = await timed_read(consumer, vms, per_vm)
        vms_cpu = own_cpu() - vms_cpu
        agent_cpu = process_cpu(agent.pid)
        broker_cpu = process_cpu(broker.proc.pid) - broker_cpu

        started = time.perf_counter()  # the agent alone: VMs -> stored in the stream
        emit(vms, per_vm)
        await until_stored(broker, 2 * total)
        agent_alone = total / (time.perf_counter() - started)

        # The consumer alone: the stream's first *total* events, already stored.
        consumer = await cli("watch", broker.url, "--json", "--since", "all",
                             "--count", str(total))
        drained = drain_stderr(consumer)
        started = time.perf_counter()
        if await asyncio.wait_for(consumer.wait(), 300) != 0:
            raise RuntimeError(f"consumer failed: {(await drained).decode()[-500:]}")
        consumer_alone = total / (time.perf_counter() - started)
        await drained
        agent.send_signal(signal.SIGTERM)
        await agent.wait()
        await agent_err
        return {"local": local, "fleet": fleet, "agent": agent_alone,
                "consumer": consumer_alone, "local_cpu": local_cpu / total * 1e6,
                "agent_cpu": agent_cpu / total * 1e6, "consumer_cpu": consumer_cpu / total * 1e6,
                "broker_cpu": broker_cpu / total * 1e6, "vms_cpu": vms_cpu / total * 1e6}
    finally:
        await tear_down(agent, broker, vms, sock_dir)


async def tear_down(agent: asyncio.subprocess.Process | None, broker: Broker,
                    vms: list[SimulatedVM], sock_dir: str) -> None:
    """Whatever a run started, stopped: the agent, the broker, the VMs, their sockets."""
    if agent is not None and agent.returncode is None:
        agent.kill()
        await agent.wait()
    await broker.kill()
    for vm in vms:
        await vm.close()
    shutil.rmtree(sock_dir, ignore_errors=True)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def spool_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.jsonl"))


async def outage(work: Path, vm_count: int, seconds: int) -> dict[str, float]:
    sock_dir = tempfile.mkdtemp(prefix="qmpev-bo-", dir="/tmp")
    vms = await start_vms(sock_dir, vm_count)
    broker = Broker(work / "outage")  # its own store: the throughput run's events are not ours
    spool = work / "outage-spool"
    agent = None
    try:
        await broker.start()
        agent = await cli("agent", sock_dir, "--nats", broker.url, "--host", "bench",
                          "--spool", str(spool))
        await wait_err(agent, "attached", vm_count)
        agent_err = drain_stderr(agent)
        emit(vms, 1)
        while await broker.stored() < vm_count:
            await asyncio.sleep(0.1)  # polling the stream's count
        before = rss_mib(agent.pid)
        await broker.kill()
        peak = before
        started = time.monotonic()
        for second in range(seconds):
            emit(vms, 1)  # 1 event per VM per second
            while time.monotonic() < started + second + 1:
                await asyncio.sleep(0.05)
                peak = max(peak, rss_mib(agent.pid))
        spooled = spool_bytes(spool)
        after = rss_mib(agent.pid)
        total = vm_count * (seconds + 1)
        await broker.start()
        restarted = time.monotonic()
        while await broker.stored() < total:
            await asyncio.sleep(0.05)
        drain = time.monotonic() - restarted
        agent.send_signal(signal.SIGTERM)
        await agent.wait()
        await agent_err
        return {"before": before, "peak": peak, "after": after, "spooled": spooled,
                "events": total, "drain": drain}
    finally:
        await tear_down(agent, broker, vms, sock_dir)


async def main(quick: bool) -> int:
    failed = False
    with tempfile.TemporaryDirectory(prefix="qmpev-bench-fleet-") as tmp:
        work = Path(tmp)
        per_vm = 2_000 if quick else 10_000
        rates = await throughput(work, 10, per_vm)
        ratio = rates["fleet"] / rates["local"]
        print(f"throughput, 10 VMs x {per_vm:,} events: local watch --json "
              f"{rates['local']:,.0f}/s, agent -> JetStream -> watch nats:// --json "
              f"{rates['fleet']:,.0f}/s ({ratio:.2f}x; target >= {TARGET_RATIO}x); alone: "
              f"agent to stored {rates['agent']:,.0f}/s, watch nats:// --since all "
              f"{rates['consumer']:,.0f}/s; CPU per event: local watch "
              f"{rates['local_cpu']:.1f} us, agent {rates['agent_cpu']:.1f} us, "
              f"watch nats:// {rates['consumer_cpu']:.1f} us, nats-server "
              f"{rates['broker_cpu']:.1f} us, the VMs (this process) {rates['vms_cpu']:.1f} us")
        failed |= ratio < TARGET_RATIO
        seconds = 10 if quick else 60
        figures = await outage(work, 1000, seconds)
        print(f"outage, 1,000 VMs, broker down {seconds} s at 1,000 events/s: agent RSS "
              f"{figures['before']:.1f} -> peak {figures['peak']:.1f} MiB "
              f"(target <= {TARGET_RSS_MIB:.0f}), spool {figures['spooled'] / 2**20:.1f} MiB "
              f"on disk; broker restart to all {figures['events']:,.0f} events stored: "
              f"{figures['drain']:.2f} s")
        failed |= figures["peak"] > TARGET_RSS_MIB
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    os.environ.pop("NO_COLOR", None)
    raise SystemExit(asyncio.run(main(parser.parse_args().quick)))
