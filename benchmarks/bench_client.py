"""Client benchmark: qmpevents vs qemu.qmp vs msgspec's in-memory decode ceiling.

    .venv/bin/python benchmarks/bench_client.py [--quick]

Every contender runs in a fresh subprocess, rounds are interleaved, and each
consumer reads the same pre-encoded stream (a seeded mix of the 8 spec events
in both the ``seed`` and ``qemu-7.2`` shapes, exact QEMU lines) from a minimal
sender process over a unix socket: greeting, answer ``qmp_capabilities``, blast
the stream, close.  Three measurements:

* throughput -- typed, validated events/s end to end, read with ``async for
  ev in qmp.events()`` (``ours``) and with its ``batches()`` (``batches``),
  with the ratios to qemu.qmp (its documented ``async for event in
  qmp.events``) and to the ceiling (``msgspec.json.Decoder(catalog.AnyEvent).decode_lines`` on the
  whole stream in memory), and to ``bare``: blocking reads of the same socket
  decoded by the same msgspec decoder, with no client at all -- the most
  any typed client built on it can reach here;
* latency -- emit -> delivered at 10k events/s; the sender writes each event
  alone with its CLOCK_MONOTONIC send time in the data of an unknown event,
  sleeping between events (it does not busy-wait a core: on 2 cores a
  spinning sender competes with the client it measures);
* peak RSS -- 1M events sent as fast as possible to a consumer that sleeps
  1 ms per event, for a bounded time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qmpevents.client import Overflow

HERE = Path(__file__).resolve()
VNC_SERVER = {"auth": "none", "family": "ipv4", "service": "5910", "host": "127.0.0.1",
              "websocket": False}
VNC_CLIENT = {"family": "ipv4", "service": "44302", "host": "127.0.0.1", "websocket": False,
              "x509_dname": None, "sasl_username": None}
DATA: dict[str, dict[str, Any] | None] = {
    "BLOCK_IO_ERROR": {"device": "ide0-hd1", "node-name": "#block290", "operation": "write",
                       "action": "report", "reason": "Input/output error", "nospace": None},
    "RESET": {"guest": True, "reason": "guest-reset"},
    "RTC_CHANGE": {"offset": 97754175, "qom-path": "/machine/unattached/device[9]"},
    "SHUTDOWN": {"guest": False, "reason": "host-qmp-quit"},
    "STOP": None,
    "VNC_CONNECTED": {"server": VNC_SERVER, "client": VNC_CLIENT},
    "VNC_INITIALIZED": {"server": VNC_SERVER, "client": VNC_CLIENT},
    "VNC_DISCONNECTED": {"server": VNC_SERVER, "client": VNC_CLIENT},
}
GREETING = (b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, '
            b'"package": "bench"}, "capabilities": ["oob"]}}\r\n')


def make_stream(count: int, seed: int = 7) -> bytes:
    """*count* event lines exactly as QEMU writes them, in a seeded mix."""
    from qmpevents.catalog import PROFILES, Timestamp, build_event
    from qmpevents.codec import encode_message

    rng = random.Random(seed)
    names = list(DATA)
    start = 1_795_701_759_000_000
    lines = []
    for index in range(count):
        name = rng.choice(names)
        stamp = Timestamp.from_float((start + index * 137) / 1e6)
        lines.append(encode_message(build_event(name, DATA[name], stamp, rng.choice(PROFILES))))
    return b"".join(lines)


# --- sender -----------------------------------------------------------------

def _negotiate(conn: socket.socket) -> None:
    """Greet, then answer qmp_capabilities (its id echoed; no newline needed)."""
    conn.sendall(GREETING)
    decoder = json.JSONDecoder()
    buf = ""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            raise SystemExit("client left during negotiation")
        buf += chunk.decode()
        text = buf.lstrip()
        try:
            request, _ = decoder.raw_decode(text)
        except ValueError:
            continue
        reply: dict[str, Any] = {"return": {}}
        if "id" in request:
            reply["id"] = request["id"]
        conn.sendall(json.dumps(reply).encode() + b"\r\n")
        return


def run_sender(path: str, stream_file: str | None, rate: int, count: int) -> None:
    # Read before "ready": the consumer's clock runs from its negotiation on,
    # and reading 30 MB then took 10-20 ms of it.
    data = b"" if stream_file is None else Path(stream_file).read_bytes()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    print("ready", flush=True)
    conn, _ = listener.accept()
    with conn:
        _negotiate(conn)
        if rate:
            _paced(conn, rate, count)
        else:
            assert stream_file is not None
            view = memoryview(data)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for start in range(0, len(data), 1 << 20):
                    conn.sendall(view[start:start + (1 << 20)])
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):  # until the consumer hangs up
                pass


def _paced(conn: socket.socket, rate: int, count: int) -> None:
    """One event per write every 1/rate s, stamped with its send time.

    The sender sleeps until each event is due (a late wake-up only delays the
    send, and the stamp is taken after it, so the measure stays honest)."""
    interval = 1_000_000_000 // rate
    head = b'{"timestamp": {"seconds": 1795701759, "microseconds": 248443}, ' \
           b'"event": "BENCH_PING", "data": {"sent": '
    due = time.monotonic_ns()
    for _ in range(count):
        due += interval
        ahead = due - time.monotonic_ns()
        if ahead > 0:
            time.sleep(ahead / 1e9)
        conn.sendall(head + str(time.monotonic_ns()).encode() + b"}}\r\n")


# --- consumers --------------------------------------------------------------

def _rss_mib() -> float:
    """Peak RSS of this process image (VmHWM; ru_maxrss would include the parent's
    peak, which Linux carries across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _disconnect(qmp: Any) -> None:
    """qemu.qmp re-raises the server's hang-up (EOFError) from disconnect()."""
    with contextlib.suppress(Exception):
        await qmp.disconnect()


async def ours_throughput(path: str, expect: int) -> dict[str, Any]:
    import qmpevents

    count = 0
    qmp = qmpevents.connect(f"unix:{path}")
    stream = qmp.events()  # subscribed before connecting: the sender starts at once
    async with qmp:
        start = time.perf_counter()
        async for _ev in stream:
            count += 1
        elapsed = time.perf_counter() - start
    assert count == expect, (count, expect)
    return {"events": count, "seconds": elapsed}


async def batches_throughput(path: str, expect: int) -> dict[str, Any]:
    """ours with ``batches()``: the async-iterator step once per read, not per event."""
    import qmpevents

    count = 0
    qmp = qmpevents.connect(f"unix:{path}")
    stream = qmp.events()
    async with qmp:
        start = time.perf_counter()
        async for batch in stream.batches():
            for _ev in batch:
                count += 1
        elapsed = time.perf_counter() - start
    assert count == expect, (count, expect)
    return {"events": count, "seconds": elapsed}


async def qemu_throughput(path: str, expect: int) -> dict[str, Any]:
    from qemu.qmp import QMPClient

    qmp = QMPClient("bench")
    await qmp.connect(path)
    count = 0
    start = time.perf_counter()
    async for _event in qmp.events:  # its documented usage; it never ends by itself
        count += 1
        if count == expect:
            break
    elapsed = time.perf_counter() - start
    await _disconnect(qmp)
    return {"events": count, "seconds": elapsed}


def ceiling_throughput(stream_file: str, expect: int) -> dict[str, Any]:
    import msgspec

    from qmpevents.catalog import AnyEvent

    data = Path(stream_file).read_bytes()
    decoder = msgspec.json.Decoder(AnyEvent)
    start = time.perf_counter()
    events = decoder.decode_lines(data)
    elapsed = time.perf_counter() - start
    assert len(events) == expect
    return {"events": len(events), "seconds": elapsed}


def bare_throughput(path: str, expect: int) -> dict[str, Any]:
    """The most a typed client can get from this socket: blocking 64 KiB reads
    decoded by msgspec per line-aligned block, with no event loop, no
    framing rules, no ``raw`` and no delivery.  Neither ours nor any client
    built on this decoder can be faster than this over the same socket."""
    import msgspec

    from qmpevents.catalog import AnyEvent

    decoder = msgspec.json.Decoder(AnyEvent)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    held = b""
    while b"\n" not in held:  # the greeting
        held += conn.recv(65536)
    conn.sendall(b'{"execute": "qmp_capabilities", "id": 1}\r\n')
    held = held[held.index(b"\n") + 1:]
    while b"\n" not in held:  # its reply
        held += conn.recv(65536)
    held = held[held.index(b"\n") + 1:]
    count = 0
    start = time.perf_counter()
    while chunk := conn.recv(65536):
        data = held + chunk
        cut = data.rfind(b"\n") + 1
        count += len(decoder.decode_lines(data[:cut]))
        held = data[cut:]
    elapsed = time.perf_counter() - start
    conn.close()
    assert count == expect, (count, expect)
    return {"events": count, "seconds": elapsed}


async def ours_latency(path: str, expect: int) -> dict[str, Any]:
    import qmpevents

    samples = []
    qmp = qmpevents.connect(f"unix:{path}")
    stream = qmp.events()
    async with qmp:
        async for ev in stream:
            assert isinstance(ev, qmpevents.UnknownEvent) and ev.data is not None
            samples.append(time.monotonic_ns() - ev.data["sent"])
    assert len(samples) == expect
    return {"samples": samples}


async def qemu_latency(path: str, expect: int) -> dict[str, Any]:
    from qemu.qmp import QMPClient

    qmp = QMPClient("bench")
    await qmp.connect(path)
    samples = []
    async for event in qmp.events:
        data = event["data"]
        assert isinstance(data, dict)
        samples.append(time.monotonic_ns() - data["sent"])
        if len(samples) == expect:
            break
    await _disconnect(qmp)
    return {"samples": samples}


async def ours_rss(path: str, duration: float, overflow: Overflow) -> dict[str, Any]:
    import qmpevents

    delivered = 0
    qmp = qmpevents.connect(f"unix:{path}")
    stream = qmp.events(overflow=overflow)
    async with qmp:
        deadline = time.monotonic() + duration
        async for _ev in stream:
            delivered += 1
            await asyncio.sleep(0.001)
            if time.monotonic() >= deadline:
                break
        dropped = stream.dropped
    return {"rss_mib": _rss_mib(), "delivered": delivered, "dropped": dropped}


async def qemu_rss(path: str, duration: float) -> dict[str, Any]:
    from qemu.qmp import QMPClient

    qmp = QMPClient("bench")
    await qmp.connect(path)
    delivered = 0
    deadline = time.monotonic() + duration
    async for _event in qmp.events:
        delivered += 1
        await asyncio.sleep(0.001)
        if time.monotonic() >= deadline:
            break
    rss = _rss_mib()
    backlog = qmp.events._queue.qsize()
    await _disconnect(qmp)
    return {"rss_mib": rss, "delivered": delivered, "buffered": backlog}


def run_consumer(args: argparse.Namespace) -> None:
    kind, contender = args.kind, args.contender
    result: dict[str, Any]
    if kind == "throughput" and contender == "ceiling":
        result = ceiling_throughput(args.stream, args.count)
    elif kind == "throughput" and contender == "bare":
        result = bare_throughput(args.socket, args.count)
    elif kind == "throughput":
        fn = {"ours": ours_throughput, "ours-batches": batches_throughput,
              "qemu": qemu_throughput}[contender]
        result = asyncio.run(fn(args.socket, args.count))
    elif kind == "latency":
        fn = ours_latency if contender == "ours" else qemu_latency
        result = asyncio.run(fn(args.socket, args.count))
    elif contender.startswith("ours"):
        overflow: Overflow = "drop-oldest" if contender == "ours-drop" else "block"
        result = asyncio.run(ours_rss(args.socket, args.duration, overflow))
    else:
        result = asyncio.run(qemu_rss(args.socket, args.duration))
    print(json.dumps(result))


# --- orchestration ----------------------------------------------------------

def _child(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(HERE), *argv], stdout=subprocess.PIPE,
                            text=True)


def run_one(kind: str, contender: str, workdir: str, count: int, *, stream: str = "",
            rate: int = 0, duration: float = 0.0) -> dict[str, Any]:
    args = ["--role", "consumer", "--kind", kind, "--contender", contender,
            "--count", str(count), "--stream", stream, "--duration", str(duration)]
    if contender == "ceiling":
        consumer = _child(*args)
        out, _ = consumer.communicate()
        return dict(json.loads(out))
    path = os.path.join(workdir, f"s{time.monotonic_ns()}.sock")
    sender = _child("--role", "sender", "--socket", path, "--stream", stream,
                    "--rate", str(rate), "--count", str(count))
    assert sender.stdout is not None
    if sender.stdout.readline().strip() != "ready":
        raise SystemExit("sender failed to start")
    consumer = _child(*args, "--socket", path)
    out, _ = consumer.communicate()
    sender.kill()
    sender.wait()
    if consumer.returncode:
        raise SystemExit(f"{contender} {kind} failed")
    return dict(json.loads(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller, faster run")
    parser.add_argument("--role", default="main", choices=["main", "sender", "consumer"])
    parser.add_argument("--kind", default="throughput")
    parser.add_argument("--contender", default="ours")
    parser.add_argument("--socket", default="")
    parser.add_argument("--stream", default="")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--rate", type=int, default=0)
    parser.add_argument("--duration", type=float, default=0.0)
    args = parser.parse_args()
    if args.role == "sender":
        run_sender(args.socket, args.stream or None, args.rate, args.count)
    elif args.role == "consumer":
        run_consumer(args)
    else:
        orchestrate(args.quick)


def _load() -> str:
    """The machine's load: figures measured on a busy machine say so."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def orchestrate(quick: bool) -> None:
    events = 50_000 if quick else 200_000
    rounds = 2 if quick else 5  # best of five: one contender's rounds varied 2x here
    ping_count = 5_000 if quick else 20_000
    flood = 300_000 if quick else 1_000_000
    rss_seconds = 3.0 if quick else 8.0
    with tempfile.TemporaryDirectory(prefix="qmpev-bench-") as workdir:
        stream = os.path.join(workdir, "stream.jsonl")
        Path(stream).write_bytes(make_stream(events))
        flood_file = os.path.join(workdir, "flood.jsonl")
        Path(flood_file).write_bytes(make_stream(flood, seed=8))
        print(f"stream: {events} events, {os.path.getsize(stream) / events:.0f} bytes/event, "
              f"{rounds} interleaved rounds, one fresh process per run; {_load()}")

        contenders = (("qemu.qmp", "qemu"), ("ours", "ours"), ("batches", "ours-batches"),
                      ("ceiling", "ceiling"), ("bare", "bare"))
        rates: dict[str, list[float]] = {name: [] for name, _ in contenders}
        for _ in range(rounds):
            for name, contender in contenders:
                result = run_one("throughput", contender, workdir, events, stream=stream)
                rates[name].append(result["events"] / result["seconds"])
        best = {name: max(values) for name, values in rates.items()}
        print("\nthroughput, events/s (best of rounds; all rounds in brackets)")
        for name, values in rates.items():
            print(f"  {name:9s} {best[name]:>12,.0f}   [{', '.join(f'{v:,.0f}' for v in values)}]")
        for name, how in (("ours", "async for ev in qmp.events()"),
                          ("batches", "async for batch in qmp.events().batches()")):
            print(f"  {name:7s} / qemu.qmp = {best[name] / best['qemu.qmp']:4.1f}x "
                  f"(target >= 35x), / ceiling = {best[name] / best['ceiling']:.2f} "
                  f"(target >= 0.75)   [{how}]")
        print(f"  bare / qemu.qmp = {best['bare'] / best['qemu.qmp']:.1f}x, "
              f"ours / bare = {best['ours'] / best['bare']:.2f}   (bare: socket reads and "
              "msgspec alone, no client)")

        print(f"\nlatency emit -> delivered at 10k events/s, {ping_count} events")
        for name, contender in (("ours", "ours"), ("qemu.qmp", "qemu")):
            samples = sorted(run_one("latency", contender, workdir, ping_count,
                                     rate=10_000)["samples"])
            p50 = statistics.median(samples) / 1000
            p99 = samples[int(len(samples) * 0.99) - 1] / 1000
            target = "   (target p99 <= 250 us)" if name == "ours" else ""
            print(f"  {name:9s} p50 {p50:8.0f} us   p99 {p99:8.0f} us{target}")

        print(f"\npeak RSS, {flood:,} events sent, consumer sleeps 1 ms/event, "
              f"{rss_seconds:.0f} s run")
        for name, contender in (("ours (block)", "ours"), ("ours (drop-oldest)", "ours-drop"),
                                ("qemu.qmp", "qemu")):
            result = run_one("rss", contender, workdir, flood, stream=flood_file,
                             duration=rss_seconds)
            extra = ", ".join(f"{k} {v:,}" for k, v in result.items() if k != "rss_mib")
            target = "   (target <= 64 MiB)" if contender == "ours" else ""
            print(f"  {name:19s} {result['rss_mib']:7.1f} MiB   ({extra}){target}")
    print(f"\nafter the run: {_load()}")


if __name__ == "__main__":
    main()
