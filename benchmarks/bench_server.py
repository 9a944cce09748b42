"""Benchmark of the QMP server's event fan-out, its replies, and its memory per idle monitor.

    .venv/bin/python benchmarks/bench_server.py

* deliveries/s with 1, 10 and 100 negotiated monitors: the simulated VM emits
  RTC_CHANGE events (seed profile: no throttling) and a *separate reader
  process* drains every socket, so the figure is the server's core (build,
  encode once, queue, write) and not the reader's;
* encode-once: ``encode_message`` calls are counted and must equal the number
  of events, whatever the number of monitors;
* the encoding of ordinary replies: the server's stepped path (a reply that
  echoes a huge value is written a step per loop iteration) against one
  ``encode_message`` of the same reply, as a ratio measured in the same run;
* RSS of the server process with 1,000 idle negotiated monitors.

Targets (2-core machine): >= 300k deliveries/s with 100 monitors, the stepped
reply path at most 1.15x one ``encode_message``, <= 100 MiB RSS with 1,000
monitors.  Exits 1 if a target or the encode-once check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, cast
from unittest import mock

EVENTS = 20_000
BATCH = 200  # events emitted per loop iteration
TARGET_DELIVERIES = 300_000
TARGET_RSS_MIB = 100.0
TARGET_REPLY_RATIO = 1.15
ORDINARY_REPLIES: list[dict[str, Any]] = [
    {"return": {}, "id": 1},
    {"return": {"status": "running", "singlestep": False, "running": True}, "id": "qs-17"},
    {"error": {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}, "id": 3},
    {"return": [{"name": "query-status"}, {"name": "stop"}, {"name": "cont"}] * 20, "id": 4},
]


# --- the reader process ---------------------------------------------------------

def reader(path: str, monitors: int, lines_each: int) -> None:
    """Connect and negotiate *monitors* sockets, say "ready", then read until all lines came."""
    socks = []
    for _ in range(monitors):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        sock.sendall(b'{"execute": "qmp_capabilities"}\r\n')
        socks.append(sock)
    for sock in socks:  # greeting + negotiation reply
        seen = b""
        while seen.count(b"\n") < 2:
            seen += sock.recv(4096)
    print("ready", flush=True)
    if lines_each == 0:
        sys.stdin.readline()  # idle until told to go
        return
    selector = selectors.DefaultSelector()
    remaining = {}
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        remaining[sock] = lines_each
    while remaining:
        for key, _ in selector.select():
            sock = cast(socket.socket, key.fileobj)
            data = sock.recv(1 << 20)
            remaining[sock] -= data.count(b"\n")
            if remaining[sock] <= 0:
                selector.unregister(sock)
                del remaining[sock]
    print("done", flush=True)


def _spawn_reader(path: str, monitors: int, lines_each: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--reader", path, str(monitors), str(lines_each)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


async def _wait_line(proc: subprocess.Popen[str], expected: str) -> None:
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    if line.strip() != expected:
        raise RuntimeError(f"reader said {line!r}, expected {expected!r}")


# --- the server side ------------------------------------------------------------

def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def fan_out(monitors: int) -> tuple[float, int]:
    """Deliveries per second with *monitors* readers; also the encode count."""
    from qmpevents.codec import encode_message
    from qmpevents.sim import SimulatedVM

    encodes = 0

    def counting_encode(message: Any) -> bytes:
        nonlocal encodes
        encodes += 1
        return encode_message(message)

    path = os.path.join(tempfile.mkdtemp(prefix="qmpev-bench-"), "qmp.sock")
    with mock.patch("qmpevents.server.broadcaster.encode_message", counting_encode):
        async with SimulatedVM(qmp=[f"unix:{path}"], max_outbound=64 << 20) as vm:
            proc = _spawn_reader(path, monitors, EVENTS)
            await _wait_line(proc, "ready")
            while len(vm.server.broadcaster) < monitors:
                await asyncio.sleep(0.01)
            start = time.perf_counter()
            for batch in range(EVENTS // BATCH):
                for offset in range(BATCH):
                    vm.machine.rtc_change(batch * BATCH + offset)
                await asyncio.sleep(0)  # let this batch be written
            await _wait_line(proc, "done")
            elapsed = time.perf_counter() - start
            proc.wait()
    return EVENTS * monitors / elapsed, encodes


async def idle_rss(monitors: int) -> float:
    from qmpevents.sim import SimulatedVM

    path = os.path.join(tempfile.mkdtemp(prefix="qmpev-bench-"), "qmp.sock")
    async with SimulatedVM(qmp=[f"unix:{path}"]) as vm:
        proc = _spawn_reader(path, monitors, 0)
        await _wait_line(proc, "ready")
        while len(vm.server.broadcaster) < monitors:
            await asyncio.sleep(0.01)
        rss = _rss_mib()
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        proc.wait()
    return rss


def reply_encoding() -> tuple[float, float]:
    """(ns per ordinary reply: one ``encode_message``, the server's stepped path),
    best of interleaved rounds so that both see the same load."""
    import timeit

    from qmpevents.codec import encode_message
    from qmpevents.codec.encoder import MessageSteps
    from qmpevents.protocol.server import FIRST_REPLY_STEP

    def one_step() -> None:
        for reply in ORDINARY_REPLIES:
            encode_message(reply)

    def stepped() -> None:  # what ServerConnection does for each reply
        for reply in ORDINARY_REPLIES:
            steps = MessageSteps(reply)
            steps.next_piece(FIRST_REPLY_STEP)
            assert steps.done

    rounds, number = 15, 2000
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for index, func in enumerate((one_step, stepped)):
            best[index] = min(best[index], timeit.timeit(func, number=number))
    per = number * len(ORDINARY_REPLIES)
    return best[0] * 1e9 / per, best[1] * 1e9 / per


async def main() -> int:
    ok = True
    print(f"event fan-out ({EVENTS} RTC_CHANGE events, readers in a separate process)")
    for monitors in (1, 10, 100):
        rate, encodes = await fan_out(monitors)
        once = encodes == EVENTS
        ok &= once
        line = (f"  {monitors:>3} monitors: {rate:>12,.0f} deliveries/s  "
                f"({rate / monitors:>9,.0f} events/s)  encodes={encodes} "
                f"{'(once per event)' if once else '(NOT once per event!)'}")
        if monitors == 100:
            met = rate >= TARGET_DELIVERIES
            ok &= met
            line += f"  target >= {TARGET_DELIVERIES:,}: {'met' if met else 'MISSED'}"
        print(line, flush=True)
    plain, stepped = reply_encoding()
    met = stepped <= TARGET_REPLY_RATIO * plain
    ok &= met
    print(f"ordinary reply encoding: encode_message {plain:,.0f} ns, stepped path "
          f"{stepped:,.0f} ns ({stepped / plain:.2f}x)  target <= {TARGET_REPLY_RATIO}x: "
          f"{'met' if met else 'MISSED'}", flush=True)
    rss = await idle_rss(1000)
    met = rss <= TARGET_RSS_MIB
    ok &= met
    print(f"RSS with 1000 idle negotiated monitors: {rss:.1f} MiB  "
          f"target <= {TARGET_RSS_MIB:.0f} MiB: {'met' if met else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reader", nargs=3, metavar=("PATH", "MONITORS", "LINES"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        reader(args.reader[0], int(args.reader[1]), int(args.reader[2]))
    else:
        raise SystemExit(asyncio.run(main()))
