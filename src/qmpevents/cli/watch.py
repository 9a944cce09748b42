"""``qmpevents watch TARGET...``: a live event tail from one or many VMs.

Each VM has its own task and its own connection; a VM that goes away is
reported on stderr and retried, and directories/globs are re-scanned so VMs
that appear later are attached.  ``qmpevents record`` follows VMs the same way
(:class:`Attachments`, :func:`run_session`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from fnmatch import fnmatchcase
from typing import Any

from qmpevents.cli import stream
from qmpevents.cli.argtypes import positive_float, positive_int
from qmpevents.cli.filters import FilterError, build_filter
from qmpevents.cli.render import json_line, raw_line, text_line
from qmpevents.cli.stream import add_stream_arguments, is_stream
from qmpevents.cli.targets import (
    ClientOptions,
    Target,
    TargetError,
    add_tls_arguments,
    client_options,
    describe_error,
    display_name,
    expand,
    is_pattern,
    split_name,
)
from qmpevents.client import EventFilter, QMPClient, QMPEvent, Subscription
from qmpevents.errors import QMPEventsError

EXAMPLES = """\
examples:
  qmpevents watch /tmp/vm.sock
  qmpevents watch /run/qemu-server/ --event SHUTDOWN --json | jq .vm
  qmpevents watch unix:/tmp/a.sock tcp:127.0.0.1:4444 --event 'VNC_*' --count 3
  qmpevents watch /tmp/vm.sock --match data.action=stop --until SHUTDOWN --timeout 30
  qmpevents watch '/tmp/vms/*.sock' --rescan 0.2
  qmpevents watch web1=/var/lib/libvirt/qemu/domain-3-web1/monitor.sock --exit-on-disconnect
  qmpevents watch /run/qemu-server/      # a trailing / : a directory, waited for if missing

VMs are named NAME (NAME=ADDRESS), else by their own query-name, else by the
distinguishing part of the path (libvirt's domain-N-NAME directory for a
generic monitor.sock).

Filters: --event (a glob, repeatable) and --match (repeatable) must all hold;
--match VALUE is JSON when it parses (offset=78) and text otherwise
(action=stop).  --until ends on that event (a glob) whatever the filters say.
VMs that are lost, come back, appear or go away are reported on stderr.

exit status: 0 condition met (--count/--until), or stopped by Ctrl-C/SIGTERM
when none was given; 1 --timeout expired first; 2 usage error; 3 a target
cannot be reached at start; 128+N stopped by signal N before the condition
"""

RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 5.0

Note = Callable[[str], None]
OnEvent = Callable[[str, QMPEvent], Awaitable[None]]
Trace = Callable[[str, bytes], None]
OnLink = Callable[[Target, QMPClient | None], None]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "watch", help="live event tail from one or many VMs", epilog=EXAMPLES,
        description="A live event tail from one or many VMs: one line per event "
                    "(coloured on a terminal), or JSON lines with the source VM.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help="print JSON lines with the source VM added")
    parser.add_argument("--event", action="append", default=[], metavar="NAME",
                        help="only events whose name matches (glob, repeatable)")
    parser.add_argument("--match", action="append", default=[], metavar="KEY=VALUE",
                        help="only events whose data field matches (data.action=stop)")
    parser.add_argument("--count", type=positive_int, metavar="N",
                        help="exit 0 after N events")
    parser.add_argument("--until", metavar="EVENT", help="exit 0 after this event")
    parser.add_argument("--timeout", type=positive_float, metavar="S",
                        help="exit 1 if the condition is not met within S seconds")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour the text output (auto: on a terminal without NO_COLOR)")
    add_stream_arguments(parser)
    parser.add_argument("--exit-on-disconnect", action="store_true",
                        help="exit 0 when a VM named by a plain target (not a directory or "
                             "glob) disconnects, e.g. after quit, instead of retrying")
    parser.set_defaults(handler=run)


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="+", metavar="TARGET",
                        help="unix:PATH, tcp:HOST:PORT, a socket path, a directory or a glob")
    parser.add_argument("--rescan", type=positive_float, default=1.0, metavar="S",
                        help="re-scan directories and globs every S seconds (default 1)")
    add_tls_arguments(parser)


def check_targets(specs: list[str]) -> None:
    """Raise TargetError for a target that cannot be understood."""
    for spec in specs:
        expand(spec)


class Attachments:
    """One task per VM, started from fixed targets and re-scanned patterns.

    *note* reports a VM's life on stderr: ``attached`` (found by a scan),
    ``lost``, ``back``, ``gone`` (its socket was removed).  *trace*, when
    given, makes the traffic observer of each new connection.  *on_link*,
    when given, is told of each connection that comes up (with its client,
    for queries) and goes down (None): the exporter's connection metrics.
    """

    def __init__(self, specs: list[str], rescan: float, on_event: OnEvent, note: Note,
                 trace: Callable[[Target], Trace] | None = None,
                 options: ClientOptions | None = None,
                 on_link: OnLink | None = None,
                 on_disconnect: Callable[[str], None] | None = None) -> None:
        self._specs = specs
        self._on_link = on_link
        self._on_disconnect = on_disconnect  # a fixed target's VM went away
        self._options = options or ClientOptions()
        self._rescan = rescan
        self._on_event = on_event
        self._note = note
        self._trace = trace
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._lost: set[str] = set()  # addresses reported lost and not back yet
        self._names: dict[str, str] = {}  # address -> name shown (see targets.display_name)

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
                           f"{describe_error(result)}")
                unreachable.append(target)
        opened = [r for r in results if not isinstance(r, BaseException)]
        if unreachable:
            for client, _ in opened:
                await client.close()
            return unreachable
        for target, first in zip(fixed, opened, strict=True):
            self._attach(target, pattern=False, first=first)
        self._scan()
        for spec in self._specs:
            if is_pattern(spec) and not expand(spec):
                path = split_name(spec)[1]
                what = ("no such directory yet" if path.endswith("/") and not os.path.isdir(path)
                        else "no VM socket matches yet")
                self._note(f"{spec}: {what}; waiting (re-scanned every {self._rescan:g} s)")
        return []

    async def _open(self, target: Target) -> tuple[QMPClient, Subscription[QMPEvent]]:
        """Subscribe, then connect: no event after negotiation can slip by."""
        trace = self._trace(target) if self._trace is not None else None
        client = QMPClient(target.address, trace=trace,
                           **self._options.for_address(target.address))
        events = client.events()
        await client.connect()
        self._names[target.address] = await display_name(client, target)
        return client, events

    def _scan(self) -> None:
        for spec in self._specs:
            if is_pattern(spec):
                for target in expand(spec):
                    if target.address not in self._tasks:
                        self._attach(target, pattern=True)

    async def rescan_forever(self) -> None:
        while True:
            await asyncio.sleep(self._rescan)  # polling the file system, not synchronisation
            self._scan()

    def _attach(self, target: Target, *, pattern: bool,
                first: tuple[QMPClient, Subscription[QMPEvent]] | None = None) -> None:
        task = asyncio.create_task(self._follow(target, pattern, first))
        self._tasks[target.address] = task
        task.add_done_callback(lambda done: self._ended(target, done))

    def _ended(self, target: Target, task: asyncio.Task[None]) -> None:
        """A follower is over: a bug that ended it is said, never left unretrieved."""
        self._tasks.pop(target.address, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._note(f"{target.name}: no longer followed: internal error: {exc!r}")

    async def _follow(self, target: Target, pattern: bool,
                      opened: tuple[QMPClient, Subscription[QMPEvent]] | None) -> None:
        """Stream one VM's events; report losses and returns; retry."""
        delay = RETRY_DELAY
        failing = False  # a failure has been reported and nothing has worked since
        while True:
            try:
                if opened is None:
                    opened = await self._open(target)
                client, events = opened
                try:
                    name = self._names.get(target.address, target.name)
                    if target.address in self._lost:
                        self._lost.discard(target.address)
                        self._note(f"{name}: back")
                    elif pattern:
                        self._note(f"{name}: attached ({target.address})")
                    failing = False
                    delay = RETRY_DELAY
                    if self._on_link is not None:
                        self._on_link(target, client)
                    async for event in events:
                        await self._on_event(name, event)
                finally:
                    if self._on_link is not None:
                        self._on_link(target, None)
                    await client.close()
                if not pattern and self._on_disconnect is not None:
                    self._on_disconnect(name)
                reason = "disconnected"
                connected = True
            except (OSError, QMPEventsError, TimeoutError) as exc:
                reason = describe_error(exc)
                connected = opened is not None
            opened = None
            if connected:
                self._lost.add(target.address)
                self._note(f"{target.name}: lost ({reason}); retrying")
                failing = True
            elif not failing:
                self._note(f"{target.name}: cannot connect ({reason}); retrying")
                failing = True
            path = target.address[5:] if target.address.startswith("unix:") else None
            if pattern and path is not None and not os.path.exists(path):
                self._note(f"{target.name}: gone (socket removed)")
                return
            await asyncio.sleep(delay)  # retry backoff
            delay = min(delay * 2, MAX_RETRY_DELAY)

    async def stop(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)



def make_note(command: str) -> Note:
    def note(message: str) -> None:
        sys.stderr.write(f"qmpevents {command}: {message}\n")
        sys.stderr.flush()
    return note


async def run_session(attachments: Attachments, done: asyncio.Future[int],
                      timeout: float | None, *, on_timeout: Callable[[], int],
                      on_signal: Callable[[int], int],
                      started: Callable[[], None] | None = None) -> int:
    """Follow the VMs until *done* resolves, *timeout* expires or SIGINT/SIGTERM.

    Returns 3 when a fixed target cannot be reached at start, else *done*'s
    result, ``on_timeout()`` or ``on_signal(signum)``.  *started* is called
    once every fixed target is connected.  An exception set on
    *done* (stdout closed, disk full) is raised.
    """
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def interrupted(signum: int) -> None:
        if not done.done():
            done.set_result(on_signal(signum))

    for signum in signals:
        loop.add_signal_handler(signum, interrupted, signum)
    rescan: asyncio.Task[None] | None = None
    try:
        if await attachments.start():
            return 3
        if started is not None:
            started()
        rescan = asyncio.create_task(attachments.rescan_forever())
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(done)
        except TimeoutError:
            if done.done():  # resolved at the deadline: the condition wins
                return done.result()
            return on_timeout()
    finally:
        if rescan is not None:
            rescan.cancel()
        await attachments.stop()
        for signum in signals:
            loop.remove_signal_handler(signum)


def run(args: argparse.Namespace) -> int:
    if is_stream(args.targets):  # the fleet stream: cli/stream.py
        return stream.watch(args)
    if (misplaced := stream.check_local(args)) is not None:
        print(f"qmpevents watch: error: {misplaced}", file=sys.stderr)
        return 2
    try:
        check_targets(args.targets)
        args.client_options = client_options(args)
        event_filter = build_filter(args.event, args.match)
    except (TargetError, FilterError) as exc:
        print(f"qmpevents watch: error: {exc}", file=sys.stderr)
        return 2
    colour = args.color == "always" or (args.color == "auto" and sys.stdout.isatty()
                                        and "NO_COLOR" not in os.environ)
    return asyncio.run(_watch(args, event_filter, colour))


async def _watch(args: argparse.Namespace, event_filter: EventFilter, colour: bool) -> int:
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    seen = 0
    unrenderable = 0  # events shown raw because they could not be rendered
    until = args.until.upper() if args.until else None
    has_condition = args.count is not None or until is not None
    note = make_note("watch")

    def render(vm: str, event: QMPEvent) -> str:
        """The event's line; its raw bytes, counted, if it cannot be rendered."""
        nonlocal unrenderable
        try:
            return json_line(vm, event) if args.json else text_line(vm, event, colour=colour)
        except Exception:  # whatever a server sent, following goes on
            unrenderable += 1
            return raw_line(vm, event.raw or b"", colour=colour)

    async def on_event(vm: str, event: QMPEvent) -> None:
        nonlocal seen
        if done.done():
            return
        final = until is not None and fnmatchcase(event.name, until)
        shown = event_filter(event)
        if not (shown or final):
            return
        line = render(vm, event)
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except OSError as exc:  # a closed pipe (| head) ends the watch, not the VM
            done.set_exception(exc)
            return
        seen += shown
        if final or (args.count is not None and seen >= args.count):
            done.set_result(0)

    def on_timeout() -> int:
        note(f"timed out after {args.timeout:g} s ({seen} events)")
        return 1

    def on_signal(signum: int) -> int:
        return 128 + signum if has_condition else 0

    def on_disconnect(vm: str) -> None:
        if args.exit_on_disconnect and not done.done():
            note(f"{vm}: disconnected; exiting (--exit-on-disconnect)")
            done.set_result(0)

    attachments = Attachments(args.targets, args.rescan, on_event, note,
                              options=args.client_options, on_disconnect=on_disconnect)
    try:
        return await run_session(attachments, done, args.timeout, on_timeout=on_timeout,
                                 on_signal=on_signal)
    finally:
        if unrenderable:
            note(f"{unrenderable} events could not be rendered (shown raw)")
