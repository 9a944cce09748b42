"""``qmpevents record TARGET... -o FILE``: durable recording of every event.

With ``--all-messages`` every message of every connection is recorded, both
ways and in wire order: the greeting and replies as ``in``, commands as
``out``, events as ``event`` (so a replay finds them either way).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

from qmpevents.cli.argtypes import positive_float, positive_int
from qmpevents.cli.common import add_fsync_arguments, fail, make_note, plural
from qmpevents.cli.follow import add_follower_command, check_targets, follow_vms, run_session
from qmpevents.cli.stream import add_stream_arguments
from qmpevents.cli.targets import Target, TargetError
from qmpevents.client import QMPEvent
from qmpevents.client.vms import Trace
from qmpevents.codec import Framer, ParseError, encode_json
from qmpevents.codec.deep import qemu_text_is_json
from qmpevents.recording import Direction, RecordingWriter

log = logging.getLogger(__name__)

EXAMPLES = """\
examples:
  qmpevents record /tmp/vm.sock -o incident.jsonl
  qmpevents record /run/qemu-server/ -o host.jsonl --fsync always
  qmpevents record /tmp/vm.sock -o session.jsonl --all-messages --timeout 60
  qmpevents replay incident.jsonl --print

Each line: {"vm": NAME, "received": EPOCH, "direction": "event", "message": {...}};
with --all-messages also "in" (greeting, replies) and "out" (commands).
--fsync always: a crash loses nothing written; interval (default): at most the
last --fsync-interval seconds (synced on a timer, whether more events come or
not); never: every record goes to the OS at once, a machine crash loses what
the OS had not written.
A torn last line left by a crash is skipped when the file is read.
Ctrl-C or SIGTERM stops the recording: the file is flushed and closed, exit 0.

exit status: 0 stopped (--count, --timeout, signal), 1 write error,
2 usage error, 3 a target cannot be reached at start
"""


def register(subparsers: Any) -> None:
    parser = add_follower_command(
        subparsers, "record", None,
        help="record every event of one or many VMs to a JSON-lines file",
        description="Record every event of one or many VMs as JSON lines, with the "
                    "source VM and the time received; --all-messages records the "
                    "whole conversation both ways.", epilog=EXAMPLES)
    parser.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="append records to FILE")
    parser.add_argument("--all-messages", action="store_true",
                        help="record every message both ways, not only events")
    add_fsync_arguments(parser, "records")
    parser.add_argument("--count", type=positive_int, metavar="N",
                        help="stop after N events")
    parser.add_argument("--timeout", type=positive_float, metavar="S",
                        help="stop after S seconds (wall time from the start, connecting "
                             "included)")
    add_stream_arguments(parser, "record", _run_local)


def _run_local(args: argparse.Namespace) -> int:
    try:
        check_targets(args)
    except TargetError as exc:
        return fail("record", exc)
    writer = open_writer(args)
    if writer is None:
        return 2
    recorder = Recorder(writer)
    status = 1
    try:
        status = asyncio.run(_record(args, recorder))
    finally:
        try:
            writer.close()
        except OSError as exc:
            if status != 1:  # not said yet: the last records could not be written
                write_error(args.output, exc)
            status = 1
        if status != 1:
            print(f"qmpevents record: {plural(recorder.events, 'event')} "
                  f"({plural(writer.records, 'record')}) "
                  f"written to {args.output}", file=sys.stderr)
    return status


def open_writer(args: argparse.Namespace) -> RecordingWriter | None:
    """``-o FILE`` opened for appending as ``--fsync`` says; None once the error is said."""
    try:
        return RecordingWriter(args.output, fsync=args.fsync, interval=args.fsync_interval)
    except OSError as exc:
        write_error(args.output, exc)
        return None


def write_error(output: str, exc: OSError) -> None:
    """The one line a write error gets (the recording ends with exit status 1)."""
    fail("record", f"{output}: {exc.strerror or exc}")


class Recorder:
    """Writes events, or with a tracer every message, and counts the events."""

    def __init__(self, writer: RecordingWriter) -> None:
        self.writer = writer
        self.events = 0
        #: Set once the recording is to end: later messages are not written.
        self.stopped = False
        #: Called after each event written (the stop conditions).
        self.on_written: Callable[[], None] = lambda: None
        #: Called with a write error (it ends the recording).
        self.on_error: Callable[[OSError], None] = lambda exc: None
        self._sync_timer: asyncio.TimerHandle | None = None
        #: With a tracer: each connection's records until its VM's name is known.
        self._naming: dict[str, _Naming] = {}

    def write(self, vm: str, message: bytes, direction: Direction,
              received: float | None = None) -> None:
        if self.stopped:
            return
        try:
            self.writer.write(vm, message, direction=direction, received=received)
        except OSError as exc:
            self.on_error(exc)
            return
        self._schedule_sync()
        log.debug("%s: recorded %s message (%d bytes)", vm, direction, len(message))
        if direction == "event":
            self.events += 1
            self.on_written()

    def _schedule_sync(self) -> None:
        """``--fsync interval``: sync when due even if no record follows (the bound)."""
        due = self.writer.sync_due_in()
        if due is not None and self._sync_timer is None:
            self._sync_timer = asyncio.get_running_loop().call_later(due, self._sync_due)

    def _sync_due(self) -> None:
        self._sync_timer = None
        try:
            self.writer.sync_if_due()
        except OSError as exc:
            self.on_error(exc)
            return
        self._schedule_sync()

    def stop_syncing(self) -> None:
        """No more timer: the writer's close() does the last sync."""
        if self._sync_timer is not None:
            self._sync_timer.cancel()
            self._sync_timer = None

    async def on_event(self, vm: str, event: QMPEvent) -> None:
        raw = event.raw if event.raw is not None else encode_json(event.to_wire()).encode()
        self.write(vm, raw, "event")

    def tracer(self, target: Target) -> Trace:
        """One connection's traffic observer: splits the byte stream into messages.

        The codec's framer does the splitting, as the client's reader does:
        a read may end inside a message, a message may span lines (QEMU's
        ``pretty=on``), and what is not JSON is not recorded (a recording
        holds only valid records).  The records carry the VM's name as the
        follower gives it (see :class:`_Naming`), as without ``--all-messages``.
        """
        framer = _trace_framer()
        scheduled = False
        previous = self._naming.get(target.address)
        if previous is not None:  # a connection that failed before it was followed
            previous.settle(target.name)
        naming = self._naming[target.address] = _Naming(target, self.write)

        def take(items: list[_Traced | ParseError], received: float) -> None:
            for item in items:
                if isinstance(item, ParseError):
                    log.debug("%s: not recorded, not a message: %s", target.name, item.desc)
                else:
                    kind, message = item
                    naming.write(message, kind, received)

        def go_on(received: float) -> None:
            # The byte-by-byte work left (pretty output, a huge message): a slice a
            # loop iteration, as the client's own reader parses, never all at once.
            nonlocal scheduled
            scheduled = False
            take(framer.feed(b"", budget=TRACE_SLICE), received)
            schedule(received)

        def schedule(received: float) -> None:
            nonlocal scheduled
            if framer.pending and not scheduled:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:  # no loop to yield to: finish now
                    take(framer.feed(b""), received)
                    return
                scheduled = True
                loop.call_soon(go_on, received)

        def trace(direction: str, data: bytes) -> None:
            received = time.time()
            if direction == "out":
                naming.write(data, "out", received)
                return
            take(framer.feed(data, budget=TRACE_SLICE), received)
            schedule(received)

        return trace

    def settle_all(self) -> None:
        """The recording ends: the records of connections whose VM was never named
        (a connection that failed, or the end came first) go out under their path's name."""
        namings, self._naming = self._naming, {}
        for naming in namings.values():
            naming.settle_as_fallback()

    def on_link(self, target: Target, client: object) -> None:
        """The follower took the connection up, *target* named as the VM's events are
        (or it went down): the connection's records are written under that name."""
        naming = self._naming.pop(target.address, None)
        if naming is not None:
            naming.settle(target.name)


class _Naming:
    """One connection's records, under the name the follower gives the VM.

    The follower names a VM once it is connected (its ``query-name``, after
    the greeting and negotiation): until then the connection's records are
    held (a few messages, and the events the VM sent meanwhile), then written
    in order under that name.  An explicit ``NAME=ADDRESS`` is known at once.
    A server that sends more than :data:`NAMING_HOLD_LIMIT` bytes before it
    is named gets its path's name instead, so that holding stays bounded.
    """

    def __init__(self, target: Target, write: Callable[[str, bytes, Direction, float], None]
                 ) -> None:
        self._write = write
        self._fallback = target.name
        self._name: str | None = target.name if target.explicit else None
        self._held: list[tuple[bytes, Direction, float]] = []
        self._held_bytes = 0

    def write(self, message: bytes, direction: Direction, received: float) -> None:
        if self._name is None:
            self._held.append((message, direction, received))
            self._held_bytes += len(message)
            if self._held_bytes > NAMING_HOLD_LIMIT:
                self.settle_as_fallback()
        else:
            self._write(self._name, message, direction, received)

    def settle_as_fallback(self) -> None:
        self.settle(self._fallback)

    def settle(self, name: str) -> None:
        """Name the connection's records *name*, and write the held ones."""
        if self._name is not None:
            return
        self._name = name
        held, self._held = self._held, []
        for message, direction, received in held:
            self._write(name, message, direction, received)


NAMING_HOLD_LIMIT = 1 << 20
"""Bytes of one connection's records held until the follower names its VM."""

TRACE_SLICE = 4096
"""Bytes the tracer's exact parser takes per loop iteration (the client reader's pace)."""


class _Probe(msgspec.Struct):
    event: Any = None


_probe = msgspec.json.Decoder(_Probe).decode
_Traced = tuple[Direction, bytes]


def _trace_framer() -> Framer[_Traced]:
    """Server messages as (direction, bytes): ``event`` for an event, ``in`` otherwise.

    Each message is recorded as received: a line the fast path takes, and
    the exact text of one only the exact path can read (several messages on
    a line, one over several lines), or its value encoded if that text is
    QEMU's syntax but not JSON (single quotes, ``C0 80``).
    """

    def from_line(line: bytes) -> _Traced:
        return ("event" if _probe(line).event is not None else "in"), line

    def from_message(value: Any, raw: bytes) -> _Traced:
        is_event = isinstance(value, dict) and value.get("event") is not None
        kind: Direction = "event" if is_event else "in"
        return kind, raw if qemu_text_is_json(raw) else encode_json(value).encode()

    return Framer(from_line, from_message=from_message)


async def _record(args: argparse.Namespace, recorder: Recorder) -> int:
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    note = make_note("record")

    def written() -> None:
        if args.count is not None and recorder.events >= args.count and not done.done():
            recorder.stopped = True
            done.set_result(0)

    def failed(exc: OSError) -> None:
        if not done.done():
            done.set_exception(exc)

    recorder.on_written = written
    recorder.on_error = failed

    async def ignore(vm: str, event: QMPEvent) -> None:
        return None  # --all-messages: the tracer has written the event already

    vms = follow_vms(args, ignore if args.all_messages else recorder.on_event, note,
                     trace=recorder.tracer if args.all_messages else None,
                     on_link=recorder.on_link if args.all_messages else None)
    try:
        return await run_session(
            vms, done, args.timeout, note,
            started=lambda: note(f"recording to {args.output} (Ctrl-C to stop)"))
    except OSError as exc:
        recorder.stopped = True
        write_error(args.output, exc)
        return 1
    finally:
        recorder.settle_all()
        recorder.stop_syncing()
