"""``qmpevents replay FILE``: a recorded incident, served again over QMP or printed.

Serving turns a recording into a QMP server: once the first client has
negotiated, the recorded event lines are sent byte for byte, with the
original gaps between them scaled by ``--speed`` (or none at all), so
management software can be tested against what really happened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from qmpevents.addresses import AddressError
from qmpevents.catalog import decode_event
from qmpevents.cli.argtypes import positive_float
from qmpevents.cli.common import plural
from qmpevents.cli.render import json_line, raw_line, text_line
from qmpevents.recording import ReadReport, Record, read_recording
from qmpevents.server import CommandSpec, CommandTable, QMPServer, parse_address

EXAMPLES = """\
examples:
  qmpevents replay incident.jsonl --print
  qmpevents replay incident.jsonl --serve unix:/tmp/replay.sock --speed 10
  qmpevents replay incident.jsonl --serve unix:/tmp/replay.sock --as-fast-as-possible

Serving waits for a client to negotiate, replays, then closes and exits 0.
The timeline starts when a client negotiates; if every client leaves before
its end (a probe such as `qmpevents exec ... query-status`), it starts again
from the beginning for the next client.  After the last event the server
still answers commands for 1 s, then closes.
The replay server answers query-status and query-version; other commands get
CommandNotFound.  A torn last line (a crash while recording) is reported
on stderr and skipped.  --print shows a recorded message that is not an
event (a list, a string, no timestamp) raw, or with --json skips it; either
way they are counted on stderr.

exit status: 0 done, 1 --vm matched no event, 2 usage error or unreadable FILE
"""

REPLAY_VERSION = {"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": "qmpevents replay"}
LINGER = 1.0
"""Seconds the server still answers commands after the last event, before it closes."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay", help="replay a recording as a QMP server, or print it",
        description="Replay a recording as a QMP server (the recorded event lines "
                    "byte for byte, with the original timing scaled), or print it.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", metavar="FILE", help="a recording made by qmpevents record")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--serve", metavar="ADDRESS", help="unix:PATH or tcp:HOST:PORT")
    mode.add_argument("--print", action="store_true", help="print the recorded events")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=positive_float, default=1.0, metavar="X",
                      help="play X times faster than recorded (default 1)")
    pace.add_argument("--as-fast-as-possible", action="store_true",
                      help="no gaps between events")
    parser.add_argument("--vm", action="append", default=[], metavar="NAME",
                        help="only events of this VM (repeatable)")
    parser.add_argument("--json", action="store_true", help="with --print: JSON lines")
    parser.set_defaults(handler=run)


def _load(args: argparse.Namespace) -> list[Record]:
    report = ReadReport()
    records = [r for r in read_recording(args.file, report)
               if r.direction == "event" and (not args.vm or r.vm in args.vm)]
    if report.torn_tail:
        print("qmpevents replay: the last line was torn (a crash while recording); skipped",
              file=sys.stderr)
    if report.bad_lines:
        print(f"qmpevents replay: {plural(report.bad_lines, 'malformed line')} skipped",
              file=sys.stderr)
    return records


def run(args: argparse.Namespace) -> int:
    try:
        records = _load(args)
    except OSError as exc:
        print(f"qmpevents replay: error: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if args.vm and not records:
        print(f"qmpevents replay: no event of VM {', '.join(args.vm)} in {args.file}",
              file=sys.stderr)
        return 1
    if args.print:
        _print(records, args.json)
        return 0
    try:
        address = parse_address(args.serve)
    except AddressError as exc:
        print(f"qmpevents replay: error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(address, records, 0.0 if args.as_fast_as_possible
                              else 1.0 / args.speed))


def _print(records: list[Record], as_json: bool) -> None:
    """Every record as an event line; one that is not an event never ends the listing."""
    colour = sys.stdout.isatty()
    odd = 0
    for record in records:
        message = record.message_bytes()
        try:
            event = decode_event(message)
            line = json_line(record.vm, event) if as_json else text_line(
                record.vm, event, colour=colour)
        except Exception:  # a list, a string, no timestamp: whatever was recorded
            odd += 1
            if as_json:
                continue
            line = raw_line(record.vm, message, colour=colour)
        print(line)
    if odd:
        odd_records = plural(odd, "record is not an event", "records are not events")
        print(f"qmpevents replay: {odd_records} ({'skipped' if as_json else 'shown raw'})",
              file=sys.stderr)


def _commands() -> CommandTable:
    def query_status(_: dict[str, Any]) -> Any:
        return {"status": "running", "singlestep": False, "running": True}

    def query_version(_: dict[str, Any]) -> Any:
        return REPLAY_VERSION

    return CommandTable([CommandSpec("query-status", query_status),
                         CommandSpec("query-version", query_version)])


async def _serve(address: Any, records: list[Record], scale: float) -> int:
    server = QMPServer([address], _commands(), version=REPLAY_VERSION)
    audience, emptied = asyncio.Event(), asyncio.Event()
    server.broadcaster.on_join(audience.set)

    def left() -> None:
        if not len(server.broadcaster):
            emptied.set()

    server.broadcaster.on_leave(left)
    await server.start()
    print(f"qmpevents replay: {plural(len(records), 'event')}; waiting for a client on {address}",
          file=sys.stderr)
    try:
        while True:
            await audience.wait()
            emptied.clear()
            if await _play(server, emptied, records, scale):
                break
            audience.clear()  # everyone left before the end: start again for the next client
        print("qmpevents replay: done", file=sys.stderr)
        await asyncio.sleep(LINGER)  # commands sent with the last events still get replies
    finally:
        await server.close()
    return 0


async def _play(server: QMPServer, emptied: asyncio.Event, records: list[Record],
                scale: float) -> bool:
    """One run of the timeline from its start; False as soon as the audience has left."""
    previous = records[0].received if records else 0.0
    for record in records:
        delay = (record.received - previous) * scale
        previous = record.received
        if delay > 0:
            with contextlib.suppress(TimeoutError):  # the recording's own pacing
                await asyncio.wait_for(emptied.wait(), delay)
        if emptied.is_set() or not len(server.broadcaster):
            return False
        server.broadcaster.publish_line(record.message_bytes() + b"\r\n")
    return True
