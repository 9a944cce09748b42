"""Benchmark of the fleet path: agent -> JetStream -> consumer, and the agent's memory.

    .venv/bin/python benchmarks/bench_fleet.py [--quick]

* throughput: simulated VMs emit RTC_CHANGE events (seed profile, no
  throttling; the loop turns every 16 rounds, so the VMs send as they emit);
  the same number of events is read (a) by a local ``qmpevents watch DIR
  --json`` to /dev/null and (b) through ``qmpevents agent`` (spool, JetStream
  publish with acks) into a real nats-server and out again through
  ``qmpevents watch nats://... --json`` to /dev/null.  Both clocks run from
  the first event emitted to the reader's exit after the last one.  Three
  turns of each, alternating (the agent runs in its own turns only); the
  best of each is compared, the turn-by-turn ratios are printed too (the
  machine is shared: a turn that other work disturbed is slower, never
  faster).  Target: fleet >= 0.5x local.  Then each half alone, to show
  where the time goes: the agent (events emitted until the stream stored
  them) and the consumer (``watch nats:// --since all`` over events already
  stored); and the CPU time per event of each process while the events
  flowed (user + system, start-up excluded: a figure that a machine busy
  with other work changes less than events/s).
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
#: Turns of each reader (local, fleet, local, ...): the best of each is compared.
ROUNDS = 3
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


#: Rounds (one event per VM) emitted between two turns of the event loop.
ROUNDS_PER_TURN = 16


async def emit(vms: Sequence[SimulatedVM], per_vm: int) -> None:
    """*per_vm* events from each VM, the loop turning every :data:`ROUNDS_PER_TURN` rounds.

    A VM's monitor writes what was queued once per loop iteration: emitting
    everything before the loop turns would send nothing until the last
    event, so every reader would start only then (the VMs of a host run on
    their own and send as they go).
    """
    for n in range(per_vm):
        for vm in vms:
            vm.machine.rtc_change(n)
        if n % ROUNDS_PER_TURN == ROUNDS_PER_TURN - 1:
            await asyncio.sleep(0)  # the VMs' output goes out while they emit


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
    """Emit, then wait for the reader to exit after the last event: events/s, and the
    reader's CPU seconds meanwhile (its start-up before the first event excluded)."""
    drained = drain_stderr(reader)
    cpu = children_cpu() + process_cpu(reader.pid)
    started = time.perf_counter()
    await emit(vms, per_vm)
    status = await asyncio.wait_for(reader.wait(), 300)
    elapsed = time.perf_counter() - started
    err = await drained
    if status != 0:
        raise RuntimeError(f"reader exited {status}: {err.decode()[-500:]}")
    return len(vms) * per_vm / elapsed, children_cpu() - cpu


async def until_stored(broker: Broker, count: int) -> None:
    while await broker.stored() < count:
        await asyncio.sleep(0.02)  # polling the stream's count: JetStream notifies nothing


async def start_agent(sock_dir: str, broker: Broker, work: Path, vm_count: int
                      ) -> tuple[asyncio.subprocess.Process, asyncio.Task[bytes]]:
    agent = await cli("agent", sock_dir, "--nats", broker.url, "--host", "bench",
                      "--spool", str(work / "spool"))
    await wait_err(agent, "attached", vm_count)
    return agent, drain_stderr(agent)


async def stop_agent(agent: asyncio.subprocess.Process, stderr: asyncio.Task[bytes]) -> None:
    agent.send_signal(signal.SIGTERM)
    await agent.wait()
    await stderr


async def throughput(work: Path, vm_count: int, per_vm: int, rounds: int) -> Figures:
    """Events/s of the local watch and of the fleet path, *rounds* times each, in turns
    (the agent runs during its own turns only); then the fleet's two halves alone."""
    total = vm_count * per_vm
    sock_dir = tempfile.mkdtemp(prefix="qmpev-bf-", dir="/tmp")
    vms = await start_vms(sock_dir, vm_count)
    broker = Broker(work)
    agent = None
    figures = Figures(total * rounds)
    try:
        await broker.start()
        assert broker.proc is not None
        for turn in range(rounds):
            watch = await cli("watch", sock_dir, "--json", "--count", str(total))
            await wait_err(watch, "attached", vm_count)
            rate, cpu = await timed_read(watch, vms, per_vm)
            figures.local.append(rate)
            figures.cpu["local watch"] += cpu

            agent, agent_err = await start_agent(sock_dir, broker, work, vm_count)
            consumer = await cli("watch", broker.url, "--json", "--count", str(total))
            await wait_err(consumer, "reading stream")
            agent_cpu, broker_cpu, vms_cpu = (process_cpu(agent.pid),
                                              process_cpu(broker.proc.pid), own_cpu())
            rate, cpu = await timed_read(consumer, vms, per_vm)
            figures.fleet.append(rate)
            figures.cpu["watch nats://"] += cpu
            figures.cpu["agent"] += process_cpu(agent.pid) - agent_cpu
            figures.cpu["nats-server"] += process_cpu(broker.proc.pid) - broker_cpu
            figures.cpu["the VMs (this process)"] += own_cpu() - vms_cpu
            if turn < rounds - 1:
                await stop_agent(agent, agent_err)
                agent = None

        assert agent is not None
        started = time.perf_counter()  # the agent alone: VMs -> stored in the stream
        await emit(vms, per_vm)
        await until_stored(broker, (rounds + 1) * total)
        figures.agent_alone = total / (time.perf_counter() - started)

        # The consumer alone: the stream's first *total* events, already stored.
        consumer = await cli("watch", broker.url, "--json", "--since", "all",
                             "--count", str(total))
        drained = drain_stderr(consumer)
        started = time.perf_counter()
        if await asyncio.wait_for(consumer.wait(), 300) != 0:
            raise RuntimeError(f"consumer failed: {(await drained).decode()[-500:]}")
        figures.consumer_alone = total / (time.perf_counter() - started)
        await drained
        await stop_agent(agent, agent_err)
        return figures
    finally:
        await tear_down(agent, broker, vms, sock_dir)


class Figures:
    """What :func:`throughput` measured."""

    def __init__(self, events: int) -> None:
        self.events = events  # per reader, over all rounds
        self.local: list[float] = []
        self.fleet: list[float] = []
        self.cpu: dict[str, float] = dict.fromkeys(
            ("local watch", "agent", "watch nats://", "nats-server", "the VMs (this process)"),
            0.0)
        self.agent_alone = self.consumer_alone = 0.0

    @property
    def ratio(self) -> float:
        """The best fleet round against the best local one (the least disturbed by other
        work on the machine)."""
        return max(self.fleet) / max(self.local)

    def report(self) -> str:
        rounds = ", ".join(f"{f / loc:.2f}x" for loc, f in zip(self.local, self.fleet,
                                                               strict=True))
        cpu = ", ".join(f"{name} {seconds / self.events * 1e6:.1f} us"
                        for name, seconds in self.cpu.items())
        return (f"local watch --json {max(self.local):,.0f}/s, agent -> JetStream -> watch "
                f"nats:// --json {max(self.fleet):,.0f}/s ({self.ratio:.2f}x, best of "
                f"{len(self.local)} turns each; turn by turn {rounds}; target >= "
                f"{TARGET_RATIO}x); alone: agent to stored {self.agent_alone:,.0f}/s, watch "
                f"nats:// --since all {self.consumer_alone:,.0f}/s; CPU per event while "
                f"reading: {cpu}")


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
        await emit(vms, 1)
        while await broker.stored() < vm_count:
            await asyncio.sleep(0.1)  # polling the stream's count
        before = rss_mib(agent.pid)
        await broker.kill()
        peak = before
        started = time.monotonic()
        for second in range(seconds):
            await emit(vms, 1)  # 1 event per VM per second
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
        rates = await throughput(work, 10, per_vm, ROUNDS)
        print(f"throughput, 10 VMs x {per_vm:,} events: {rates.report()}")
        failed |= rates.ratio < TARGET_RATIO
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
