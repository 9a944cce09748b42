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
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import qmpevents
from qmpevents.catalog import SPEC_EVENTS, Event, UnknownEvent
from qmpevents.cli.argtypes import non_negative_float
from qmpevents.cli.common import plural
from qmpevents.cli.render import json_line, text_line
from qmpevents.client import QMPClient
from qmpevents.sim import SimulatedVM

_DESCRIPTION = """\
Run a simulated VM (two drives, a VNC listener) on a temporary socket, watch
it, and play a guest scenario that causes all 8 spec events, including a VNC
session; ends with a summary of the events seen.  Ctrl-C stops it cleanly.

exit status: 0 all 8 events seen, 1 some missing, 130 interrupted
"""

DRIVES = ("ide0-hd0,werror=stop", "ide0-hd1,werror=report,rerror=report")
VM_NAME = "demo-vm"
"""The simulated VM's name (its ``query-name``), which every event line shows."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="run a simulated VM and watch it emit all 8 events",
        description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  qmpevents demo\n  qmpevents demo --profile qemu-7.2 --json")
    parser.add_argument("--profile", choices=("seed", "qemu-7.2"), default="seed",
                        help="wire shape of the events (default: seed, the spec document)")
    parser.add_argument("--json", action="store_true",
                        help="print events as JSON lines: stdout then holds only JSON "
                             "(narration and summary go to stderr)")
    parser.add_argument("--pace", type=non_negative_float, default=0.4, metavar="S",
                        help="pause between scenario steps, for reading (default 0.4)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:  # the demo's VNC session needs DES (the optional ``vnc`` extra)
        import Crypto.Cipher.DES  # noqa: F401
    except ModuleNotFoundError:
        sys.stderr.write("qmpevents demo: needs the vnc extra: pip install 'qmpevents[vnc]'\n")
        return 1
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    return asyncio.run(_demo(args, colour))



class Watcher:
    """The user's view: a second QMP client printing every event it receives."""

    def __init__(self, json_lines: bool, colour: bool) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.seen = 0
        self._json = json_lines
        self._colour = colour
        self._progress = asyncio.Condition()

    def show(self, event: Event | UnknownEvent) -> None:
        if self._json:  # the shape of ``watch --json``: the event's JSON, "vm" first
            line = json_line(VM_NAME, event)
        else:
            line = text_line(VM_NAME, event, colour=self._colour)
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


def _say(text: str, colour: bool, *, json_lines: bool = False) -> None:
    """Narration: on stdout with the text tail, on stderr with --json (stdout is data)."""
    out = sys.stderr if json_lines else sys.stdout
    print(f"\x1b[2m# {text}\x1b[0m" if colour and not json_lines else f"# {text}",
          file=out, flush=True)


async def _demo(args: argparse.Namespace, colour: bool) -> int:
    """The demo, ended cleanly by Ctrl-C or SIGTERM at any point (exit 130 / 143)."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    interrupted: list[int] = []

    def interrupt(signum: int) -> None:
        if not interrupted:
            interrupted.append(signum)
            main.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt, signum)
    try:
        return await _run_demo(args, colour)
    except asyncio.CancelledError:
        if not interrupted:
            raise
        if sys.stderr.isatty():
            print(file=sys.stderr)  # after the ^C the terminal echoed
        print("qmpevents demo: interrupted", file=sys.stderr)
        return 128 + interrupted[0]
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _watch_in_background(watcher: Watcher, address: str) -> asyncio.Task[None]:
    """Start the watcher; once it is connected.  Its failure (stdout closed) ends the demo."""
    main = asyncio.current_task()
    assert main is not None
    ready = asyncio.Event()
    watching = asyncio.create_task(watcher.run(address, ready))

    def ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            main.cancel()

    watching.add_done_callback(ended)
    waiting = asyncio.create_task(ready.wait())
    try:
        await asyncio.wait((waiting, watching), return_when=asyncio.FIRST_COMPLETED)
        if watching.done():
            await watching  # raises its error
    except BaseException:  # Ctrl-C while connecting: the watcher must not outlive the VM
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        raise
    finally:
        waiting.cancel()
    return watching


async def _run_demo(args: argparse.Namespace, colour: bool) -> int:
    from qmpevents.sim.vnc import free_display

    display = free_display()
    started = time.monotonic()
    # a watcher and a driver share the socket: several clients, whatever the profile
    async with SimulatedVM(drives=DRIVES, no_shutdown=True, profile=args.profile,
                           vnc=f"127.0.0.1:{display}", name=VM_NAME,
                           multi_client=True) as vm:
        address = f"unix:{vm.socket_path}"
        _say(f"simulated VM on {vm.socket_path}, VNC on 127.0.0.1:{5900 + display}, "
             f"profile {args.profile}", colour, json_lines=args.json)
        watcher = Watcher(args.json, colour)
        watching = await _watch_in_background(watcher, address)
        try:
            async with qmpevents.connect(address) as qmp, qmp.listen() as caused:
                for text, action, expected in _scenario(qmp, display):
                    _say(text, colour, json_lines=args.json)
                    if not expected:
                        await action()
                        continue
                    async with qmp.expect(*expected, timeout=10):
                        await action()
                    await asyncio.sleep(args.pace)  # reading time for the user
                total = caused.qsize()
            await asyncio.wait_for(watcher.wait_seen(total), timeout=10)
        except asyncio.CancelledError:
            failure = watching.exception() if watching.done() and not watching.cancelled() \
                else None
            if failure is not None:
                raise failure from None  # e.g. BrokenPipeError: main() ends quietly
            raise
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
    elapsed = time.monotonic() - started
    missing = [name for name in SPEC_EVENTS if not watcher.counts[name]]
    verdict = (f"all {len(SPEC_EVENTS)} spec events seen" if not missing
               else f"missing {', '.join(missing)}")
    _say(f"done in {elapsed:.1f} s: {plural(watcher.seen, 'event')}, {verdict}", colour,
         json_lines=args.json)
    for name in SPEC_EVENTS + tuple(sorted(set(watcher.counts) - set(SPEC_EVENTS))):
        print(f"  {name:<18} {watcher.counts[name]}", file=sys.stderr if args.json else None)
    if missing:
        print(f"qmpevents demo: missing events: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


Step = tuple[str, Callable[[], Awaitable[Any]], tuple[str, ...]]


def _scenario(qmp: Any, display: int) -> list[Step]:
    def command(name: str, arguments: dict[str, Any] | None = None) -> Callable[[], Awaitable[Any]]:
        return lambda: qmp.execute(name, arguments)

    async def vnc_session() -> None:
        from qmpevents.vnc_client import handshake

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
