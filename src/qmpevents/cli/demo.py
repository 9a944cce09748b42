"""``qmpevents demo``: the whole system on an embedded default, in one command.

A simulated VM (two drives with different error policies, a VNC listener,
``-no-shutdown``) on a temporary socket; a watcher on its own QMP connection
printing events as they arrive; and a scripted guest scenario that causes all
8 events of the spec, including a real VNC session.  Ends with a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import qmpevents
from qmpevents.catalog import SPEC_EVENTS, Event, UnknownEvent
from qmpevents.cli.render import text_line
from qmpevents.client import QMPClient
from qmpevents.sim import SimulatedVM
from qmpevents.vnc_client import handshake

DRIVES = ("ide0-hd0,werror=stop", "ide0-hd1,werror=report,rerror=report")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="run a simulated VM and watch it emit all 8 events",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  qmpevents demo\n  qmpevents demo --profile qemu-7.2 --json")
    parser.add_argument("--profile", choices=("seed", "qemu-7.2"), default="seed",
                        help="wire shape of the events (default: seed, the spec document)")
    parser.add_argument("--json", action="store_true", help="print events as JSON lines")
    parser.add_argument("--pace", type=float, default=0.4, metavar="S",
                        help="pause between scenario steps, for reading (default 0.4)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    return asyncio.run(_demo(args, colour))


def _free_vnc_display() -> int:
    """A display whose port (5900 + display) is free right now."""
    for display in range(50, 400):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", 5900 + display))
            except OSError:
                continue
            return display
    raise RuntimeError("no free VNC display between :50 and :399")


class Watcher:
    """The user's view: a second QMP client printing every event it receives."""

    def __init__(self, json_lines: bool, colour: bool) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.seen = 0
        self._json = json_lines
        self._colour = colour
        self._progress = asyncio.Condition()

    def show(self, event: Event | UnknownEvent) -> None:
        if self._json:
            line = (event.raw or b"").decode()
        else:
            line = text_line("demo-vm", event, colour=self._colour)
        print(line, flush=True)

    async def run(self, address: str, ready: asyncio.Event) -> None:
        client = QMPClient(address)
        events = client.events()  # subscribed before negotiation: nothing slips by
        async with client:
            ready.set()
            async for event in events:
                self.show(event)
                self.counts[event.name] += 1
                async with self._progress:
                    self.seen += 1
                    self._progress.notify_all()

    async def wait_seen(self, count: int) -> None:
        async with self._progress:
            await self._progress.wait_for(lambda: self.seen >= count)


def _say(text: str, colour: bool) -> None:
    print(f"\x1b[2m# {text}\x1b[0m" if colour else f"# {text}", flush=True)


async def _demo(args: argparse.Namespace, colour: bool) -> int:
    display = _free_vnc_display()
    started = time.monotonic()
    async with SimulatedVM(drives=DRIVES, no_shutdown=True, profile=args.profile,
                           vnc=f"127.0.0.1:{display}", name="demo-vm") as vm:
        address = f"unix:{vm.socket_path}"
        _say(f"simulated VM on {vm.socket_path}, VNC on 127.0.0.1:{5900 + display}, "
             f"profile {args.profile}", colour)
        watcher = Watcher(args.json, colour)
        ready = asyncio.Event()
        watching = asyncio.create_task(watcher.run(address, ready))
        await ready.wait()
        async with qmpevents.connect(address) as qmp, qmp.listen() as caused:
            for text, action, expected in _scenario(qmp, display):
                _say(text, colour)
                if not expected:
                    await action()
                    continue
                async with qmp.expect(*expected, timeout=10):
                    await action()
                await asyncio.sleep(args.pace)
            total = caused.qsize()
        await asyncio.wait_for(watcher.wait_seen(total), timeout=10)
        watching.cancel()
    elapsed = time.monotonic() - started
    _say(f"done in {elapsed:.1f} s; events seen:", colour)
    for name in SPEC_EVENTS + tuple(sorted(set(watcher.counts) - set(SPEC_EVENTS))):
        print(f"  {name:<18} {watcher.counts[name]}")
    missing = [name for name in SPEC_EVENTS if not watcher.counts[name]]
    if missing:
        print(f"missing: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


Step = tuple[str, Callable[[], Awaitable[Any]], tuple[str, ...]]


def _scenario(qmp: Any, display: int) -> list[Step]:
    def command(name: str, arguments: dict[str, Any] | None = None) -> Callable[[], Awaitable[Any]]:
        return lambda: qmp.execute(name, arguments)

    async def vnc_session() -> None:
        viewer = await handshake("127.0.0.1", 5900 + display)
        await viewer.full_frame()
        await viewer.close()

    return [
        ("the operator pauses the VM", command("stop"), ("STOP",)),
        ("and resumes it", command("cont"), ()),
        ("the guest fails a write on ide0-hd1 (werror=report)",
         command("x-sim-io-error", {"device": "ide0-hd1", "operation": "write"}),
         ("BLOCK_IO_ERROR",)),
        ("the guest fails a write on ide0-hd0 (werror=stop): the VM stops",
         command("x-sim-io-error", {"device": "ide0-hd0", "operation": "write"}),
         ("BLOCK_IO_ERROR", "STOP")),
        ("the operator fixes the disk and resumes", command("cont"), ()),
        ("the guest sets its clock 78 s ahead", command("x-sim-rtc-change", {"offset": 78}),
         ("RTC_CHANGE",)),
        ("the operator resets the VM", command("system_reset"), ("RESET",)),
        ("a VNC viewer connects, looks at the screen and leaves", vnc_session,
         ("VNC_CONNECTED", "VNC_INITIALIZED", "VNC_DISCONNECTED")),
        ("the guest powers off (-no-shutdown keeps the VM around)",
         command("x-sim-guest-shutdown"), ("SHUTDOWN", "STOP")),
    ]
