"""``qmpevents watch TARGET...``: a live event tail from one or many VMs.

Each VM has its own task; a VM that goes away is reported on stderr and
retried, and directories/globs are re-scanned so new VMs are attached.  All
tasks feed one bounded queue, so a flood from one VM slows its reader
instead of growing memory.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from qmpevents.catalog import Event, UnknownEvent
from qmpevents.cli.filters import EventFilter, FilterError
from qmpevents.cli.render import json_line, text_line
from qmpevents.cli.targets import Target, TargetError, expand, is_pattern
from qmpevents.client import QMPClient, Subscription
from qmpevents.errors import QMPEventsError

log = logging.getLogger(__name__)

EXAMPLES = """\
examples:
  qmpevents watch /tmp/vm.sock
  qmpevents watch /run/qemu-server/ --event SHUTDOWN --json | jq .vm
  qmpevents watch 'unix:/tmp/a.sock' tcp:127.0.0.1:4444 --event 'VNC_*' --count 3
  qmpevents watch /tmp/vm.sock --match data.action=stop --until STOP --timeout 30

exit status: 0 condition met (--count/--until) or interrupted without one,
1 --timeout expired first, 2 usage error, 3 a target cannot be reached
"""

RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 5.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "watch", help="live event tail from one or many VMs", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help="print JSON lines with the source VM added")
    parser.add_argument("--event", action="append", default=[], metavar="NAME",
                        help="only events whose name matches (glob, repeatable)")
    parser.add_argument("--match", action="append", default=[], metavar="KEY=VALUE",
                        help="only events whose data field matches (data.action=stop)")
    parser.add_argument("--count", type=int, metavar="N", help="exit 0 after N events")
    parser.add_argument("--until", metavar="EVENT", help="exit 0 after this event")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="exit 1 if the condition is not met within S seconds")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    parser.set_defaults(handler=run)


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="+", metavar="TARGET",
                        help="unix:PATH, tcp:HOST:PORT, a socket path, a directory or a glob")
    parser.add_argument("--rescan", type=float, default=1.0, metavar="S",
                        help="re-scan directories and globs every S seconds (default 1)")


class Attachments:
    """One task per VM, started from fixed targets and re-scanned patterns."""

    def __init__(self, specs: list[str], rescan: float, on_event: Any,
                 note: Any) -> None:
        self._specs = specs
        self._rescan = rescan
        self._on_event = on_event
        self._note = note
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> list[Target]:
        """Connect every fixed target once; returns those that could not be reached.

        The first connection is kept and followed: probing and reconnecting
        would lose the events sent in between.
        """
        fixed = [t for spec in self._specs if not is_pattern(spec) for t in expand(spec)]
        results = await asyncio.gather(*(self._open(t) for t in fixed), return_exceptions=True)
        unreachable = []
        for target, result in zip(fixed, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, OSError | QMPEventsError | TimeoutError):
                    raise result
                self._note(f"{target.name}: cannot connect to {target.address}: "
                           f"{result or type(result).__name__}")
                unreachable.append(target)
        opened = [r for r in results if not isinstance(r, BaseException)]
        if unreachable:
            for client, _ in opened:
                await client.close()
            return unreachable
        for target, first in zip(fixed, opened, strict=True):
            self._attach(target, pattern=False, first=first)
        self._scan()
        return []

    @staticmethod
    async def _open(target: Target) -> tuple[QMPClient, Subscription]:
        """Subscribe, then connect: no event after negotiation can slip by."""
        client = QMPClient(target.address)
        events = client.events()
        await client.connect()
        return client, events

    def _scan(self) -> None:
        for spec in self._specs:
            if is_pattern(spec):
                for target in expand(spec):
                    if target.address not in self._tasks:
                        self._attach(target, pattern=True)

    async def rescan_forever(self) -> None:
        while True:
            await asyncio.sleep(self._rescan)
            self._scan()

    def _attach(self, target: Target, *, pattern: bool,
                first: tuple[QMPClient, Subscription] | None = None) -> None:
        task = asyncio.create_task(self._follow(target, pattern, first))
        self._tasks[target.address] = task
        task.add_done_callback(lambda _: self._tasks.pop(target.address, None))

    async def _follow(self, target: Target, pattern: bool,
                      opened: tuple[QMPClient, Subscription] | None) -> None:
        """Stream one VM's events; report losses and returns; retry."""
        delay = RETRY_DELAY
        lost = False
        while True:
            try:
                if opened is None:
                    opened = await self._open(target)
                client, events = opened
                try:
                    if lost:
                        self._note(f"{target.name}: back")
                    lost = False
                    delay = RETRY_DELAY
                    async for event in events:
                        await self._on_event(target.name, event)
                finally:
                    await client.close()
                reason = "disconnected"
            except (OSError, QMPEventsError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
            opened = None
            if not lost:
                self._note(f"{target.name}: lost ({reason}); retrying")
                lost = True
            path = target.address[5:] if target.address.startswith("unix:") else None
            if pattern and path is not None and not os.path.exists(path):
                self._note(f"{target.name}: gone (socket removed)")
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)

    async def stop(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


def run(args: argparse.Namespace) -> int:
    try:
        for spec in args.targets:
            expand(spec)
        event_filter = EventFilter(args.event, args.match)
    except (TargetError, FilterError) as exc:
        print(f"qmpevents watch: error: {exc}", file=sys.stderr)
        return 2
    if args.count is not None and args.count < 1:
        print("qmpevents watch: error: --count must be at least 1", file=sys.stderr)
        return 2
    colour = args.color == "always" or (args.color == "auto" and sys.stdout.isatty()
                                        and "NO_COLOR" not in os.environ)
    return asyncio.run(_watch(args, event_filter, colour))


async def _watch(args: argparse.Namespace, event_filter: EventFilter, colour: bool) -> int:
    done = asyncio.get_running_loop().create_future()
    seen = 0
    until = args.until.upper() if args.until else None

    def note(message: str) -> None:
        sys.stderr.write(f"qmpevents watch: {message}\n")
        sys.stderr.flush()

    async def on_event(vm: str, event: Event | UnknownEvent) -> None:
        nonlocal seen
        if done.done() or not event_filter(event):
            return
        line = json_line(vm, event) if args.json else text_line(vm, event, colour=colour)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        seen += 1
        if (args.count is not None and seen >= args.count) or event.name == until:
            done.set_result(0)

    attachments = Attachments(args.targets, args.rescan, on_event, note)
    unreachable = await attachments.start()
    if unreachable:
        await attachments.stop()
        return 3
    rescan = asyncio.create_task(attachments.rescan_forever())
    try:
        async with asyncio.timeout(args.timeout):
            status: int = await done
    except TimeoutError:
        note(f"timed out after {args.timeout:g} s ({seen} events)")
        status = 1
    finally:
        rescan.cancel()
        await attachments.stop()
    return status
