"""``watch nats://...`` and ``record nats://...``: the fleet stream as a source.

``nats://HOST:PORT[/SUBJECT-FILTER]`` (several URLs: servers of one
cluster) reads the JetStream stream the agents fill.  The filters
(``--event``, ``--match``, ``--host``, ``--vm``), the output and the exit
statuses are those of a local watch; ``--since`` replays history and
``--durable NAME`` resumes where the named consumer stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import msgspec

from qmpevents.catalog import Event, UnknownEvent
from qmpevents.cli.common import add_globs, colour_wanted, fail, make_note, plural
from qmpevents.cli.escape import json_safe
from qmpevents.cli.filters import FilterError, build_filter, unknown_note
from qmpevents.cli.fleet_args import add_credentials_arguments, broker_options, since
from qmpevents.cli.follow import finished_by, signals_resolve, until
from qmpevents.cli.output import Output
from qmpevents.cli.render import json_prefix, json_rest, text_line
from qmpevents.client import EventFilter
from qmpevents.fleet.subjects import DEFAULT_STREAM, STREAM_SUBJECTS

if TYPE_CHECKING:
    from qmpevents.fleet.consumer import FleetEvent

SCHEMES = ("nats://", "tls://")
#: How long closing the consumer may take (a durable one acknowledges its last event).
CLOSE_GRACE = 1.0

_encode = msgspec.json.Encoder().encode


class StreamTargetError(ValueError):
    """A nats:// target that cannot be understood (a usage error)."""


def is_stream(targets: list[str]) -> bool:
    return any(t.startswith(SCHEMES) for t in targets)


def add_stream_arguments(parser: argparse.ArgumentParser, command: str,
                         local: Callable[[argparse.Namespace], int]) -> None:
    """The options of a nats:// source (``--tls-creds`` is the target's TLS option), and
    the command's handler: the stream for nats:// targets, else *local* (see :func:`run`)."""
    parser.set_defaults(handler=lambda args: run(args, command, local))
    group = parser.add_argument_group("nats:// targets (the fleet stream)")
    group.add_argument("--since", type=since, metavar="DURATION|TIME|all",
                       help="start with the stream's events since then (10m, "
                            "2026-12-01T15:00:00, all); default: new events only")
    group.add_argument("--durable", metavar="NAME",
                       help="a durable consumer: resumes after the last event it handled")
    add_globs(group, "--host", "only events of this host (glob, repeatable)")
    add_globs(group, "--vm", "only events of this VM (glob, repeatable)")
    group.add_argument("--stream", default=DEFAULT_STREAM, metavar="NAME",
                       help=f"the JetStream stream (default {DEFAULT_STREAM})")
    add_credentials_arguments(parser, tls_prefix="")


def parse_targets(targets: list[str]) -> tuple[list[str], str]:
    """Servers and the one subject filter of the nats:// targets."""
    servers, filters = [], set()
    for target in targets:
        if not target.startswith(SCHEMES):
            raise StreamTargetError(f"{target}: nats:// targets cannot be mixed with local ones")
        parts = urlsplit(target)
        if not parts.hostname:
            raise StreamTargetError(f"{target}: expected nats://HOST:PORT[/SUBJECT-FILTER]")
        try:
            port = parts.port or 4222
        except ValueError:
            raise StreamTargetError(f"{target}: bad port") from None
        auth = f"{parts.netloc.rpartition('@')[0]}@" if "@" in parts.netloc else ""
        servers.append(f"{parts.scheme}://{auth}{parts.hostname}:{port}")
        subject = parts.path.lstrip("/")
        if subject:
            filters.add(subject)
    if len(filters) > 1:
        raise StreamTargetError("the nats:// targets name different subject filters")
    return servers, filters.pop() if filters else STREAM_SUBJECTS


def run(args: argparse.Namespace, command: str,
        local: Callable[[argparse.Namespace], int]) -> int:
    """``watch``/``record``: nats:// targets read the stream; local ones are *local*'s."""
    if is_stream(args.targets):
        return watch(args) if command == "watch" else record(args)
    if (misplaced := check_local(args)) is not None:
        return fail(command, misplaced)
    return local(args)


def check_local(args: argparse.Namespace) -> str | None:
    """A usage error for stream-only options given with local targets, else None."""
    for flag in ("since", "durable", "host", "vm"):
        if getattr(args, flag):
            return f"--{flag} needs a nats:// target"
    return None


class _Source:
    """Filters and the stream of one command."""

    def __init__(self, args: argparse.Namespace, command: str) -> None:
        servers, self.subject = parse_targets(args.targets)
        self.options = broker_options(args, servers, tls_prefix="", name=f"qmpevents {command}")
        self.hosts: list[str] = args.host
        self.vms: list[str] = args.vm

    def wanted(self, host: str, vm: str) -> bool:
        return ((not self.hosts or any(fnmatchcase(host, p) for p in self.hosts))
                and (not self.vms or any(fnmatchcase(vm, p) for p in self.vms)))


def fleet_json_line(host: str, vm: str, line: str) -> str:
    """A local watch's JSON line (``"vm"`` first) with ``"host"`` before it (terminal-safe
    as the rest: the host name comes from the message's headers)."""
    return '{"host": ' + json_safe(_encode(host).decode()) + ", " + line[1:]


class FleetJsonLines:
    """``fleet_json_line(host, vm, json_line(vm, event))`` of each event, its ``"host"`` and
    ``"vm"`` members encoded once per (host, VM)."""

    MAX_PREFIXES = 4096

    def __init__(self) -> None:
        self._prefixes: dict[tuple[str, str], str] = {}

    def __call__(self, host: str, vm: str, event: Event | UnknownEvent) -> str:
        prefix = self._prefixes.get((host, vm))
        if prefix is None:
            if len(self._prefixes) >= self.MAX_PREFIXES:
                self._prefixes.clear()
            prefix = self._prefixes[host, vm] = fleet_json_line(host, vm, json_prefix(vm))
        return prefix + json_rest(event)


async def _follow(args: argparse.Namespace, source: _Source, command: str,
                  handle: Callable[[FleetEvent], Awaitable[bool]], timeout: float | None,
                  on_timeout: Callable[[], int], on_signal: Callable[[int], int],
                  started: Callable[[], None], stopped: asyncio.Future[int] | None = None,
                  ) -> int:
    """Read the stream, calling *handle* per FleetEvent until it returns True (exit 0).

    *timeout* is wall time from this call, as a local watch's: connecting to a
    broker that accepts and stalls, making the consumer and reading all count;
    then ``on_timeout()``.  *stopped* may be resolved by the caller too (a
    closed stdout sets its exception, which is raised).
    """
    from qmpevents.fleet.broker import BrokerError
    from qmpevents.fleet.consumer import fleet_events

    note = make_note(command)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    if stopped is None:
        stopped = loop.create_future()
    done = stopped
    with signals_resolve(done, on_signal):
        events = fleet_events(source.options, subject=source.subject, stream=args.stream,
                              since=args.since, durable=args.durable)
        try:
            opening = asyncio.ensure_future(events.open())
            if not await finished_by(opening, done, deadline):
                return done.result() if done.done() else on_timeout()
            try:
                opening.result()
            except BrokerError as exc:
                note(f"error: {exc}")
                return 3

            async def read() -> None:
                async for fleet_event in events:
                    if source.wanted(fleet_event.host, fleet_event.vm) and \
                            await handle(fleet_event):
                        break
                if not done.done():  # the condition, or the end of the stream
                    done.set_result(0)

            started()
            reader = asyncio.ensure_future(read())
            reader.add_done_callback(lambda _: _raise_into(reader, done))
            try:
                status = await until(done, deadline)
                return on_timeout() if status is None else status
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        finally:
            with contextlib.suppress(TimeoutError):  # a broker that stalls: exit anyway
                async with asyncio.timeout(CLOSE_GRACE):
                    await events.close()
            if events.skipped:
                note(f"{plural(events.skipped, 'message')} that are not QMP events skipped")


def _raise_into(task: asyncio.Future[None], done: asyncio.Future[int]) -> None:
    """A reader that failed fails the command (its exception is raised by *done*)."""
    if not task.cancelled() and (exc := task.exception()) is not None and not done.done():
        done.set_exception(exc)


def watch(args: argparse.Namespace) -> int:
    """``qmpevents watch nats://...``."""
    from qmpevents.fleet.deps import MissingDependency, require

    try:
        source = _Source(args, "watch")
        event_filter: EventFilter = build_filter(args.event, args.match)
    except (ValueError, FilterError) as exc:
        return fail("watch", exc)
    if (unknown := unknown_note([*args.event, args.until])) is not None:
        make_note("watch")(unknown)
    try:
        require("nats")
    except MissingDependency as exc:
        return fail("watch", exc, 1)
    return asyncio.run(_watch(args, source, event_filter))


async def _watch(args: argparse.Namespace, source: _Source, event_filter: EventFilter) -> int:
    """Print the stream's events through :class:`~qmpevents.cli.output.Output`, as a local
    watch: a stdout nobody reads slows the reading down but never stops ``--timeout``."""
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[int] = loop.create_future()

    output = Output(ends=stopped)  # a closed pipe (| head) ends the watch
    write = output.write
    colour = colour_wanted(args.color)
    final_name = args.until.upper() if args.until else None
    has_condition = args.count is not None or final_name is not None
    seen = 0
    json_lines = FleetJsonLines()
    every = event_filter.passes_all
    timed_out = False

    async def handle(item: FleetEvent) -> bool:
        nonlocal seen
        event = item.event
        final = final_name is not None and fnmatchcase(event.name, final_name)
        shown = every or event_filter(event)
        if not (shown or final):
            return False
        if args.json:
            line = json_lines(item.host, item.vm, event)
        else:
            line = text_line(f"{item.host}/{item.vm}", event, colour=colour)
        await write(line + "\n")
        seen += shown
        return final or (args.count is not None and seen >= args.count)

    def on_timeout() -> int:
        nonlocal timed_out
        timed_out = True
        make_note("watch")(f"timed out after {args.timeout:g} s ({plural(seen, 'event')})")
        return 1

    deadline = None if args.timeout is None else loop.time() + args.timeout
    try:
        status = await _follow(
            args, source, "watch", handle, args.timeout, on_timeout,
            lambda signum: 128 + signum if has_condition else 0,
            lambda: make_note("watch")(f"reading stream {args.stream} ({source.subject})"),
            stopped)
        # Every line shown before the exit: within the deadline, or once it has passed,
        # if the reader takes them within FINAL_GRACE.
        if not await output.drained_by(deadline, timed_out=timed_out) and not timed_out:
            return on_timeout()
        return status
    finally:
        output.close()


def record(args: argparse.Namespace) -> int:
    """``qmpevents record nats://... -o FILE``: a recording of the stream's events."""
    from qmpevents.cli.record import open_writer, write_error
    from qmpevents.fleet.deps import MissingDependency, require

    if args.all_messages:
        return fail("record", "--all-messages needs local targets (the stream holds events "
                              "only)")
    try:
        source = _Source(args, "record")
        require("nats")
    except ValueError as exc:
        return fail("record", exc)
    except MissingDependency as exc:
        return fail("record", exc, 1)
    writer = open_writer(args)
    if writer is None:
        return 2
    written = 0
    failure: list[OSError] = []

    async def handle(item: FleetEvent) -> bool:
        """One record per event: its payload, decoded as an event object, is one JSON
        text, kept on the record's line (RecordingWriter), so it cannot add records."""
        nonlocal written
        raw = item.event.raw
        assert raw is not None  # decoded from the stream's bytes
        try:
            writer.write(f"{item.host}/{item.vm}", raw, received=item.received)
        except OSError as exc:
            failure.append(exc)
            return True
        written += 1
        return args.count is not None and written >= args.count

    try:
        status = asyncio.run(_follow(
            args, source, "record", handle, args.timeout, lambda: 0, lambda _: 0,
            lambda: make_note("record")(f"recording stream {args.stream} ({source.subject}) "
                                        f"to {args.output} (Ctrl-C to stop)")))
    finally:
        writer.close()
        print(f"qmpevents record: {written} events written to {args.output}", file=sys.stderr)
    if failure:
        write_error(args.output, failure[0])
        return 1
    return status
