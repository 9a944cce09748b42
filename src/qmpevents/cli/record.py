"""``qmpevents record TARGET... -o FILE``: durable recording of every event."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from qmpevents.catalog import Event, UnknownEvent
from qmpevents.cli.targets import TargetError, expand
from qmpevents.cli.watch import Attachments, add_target_arguments
from qmpevents.codec import encode_json
from qmpevents.recording import RecordingWriter

EXAMPLES = """\
examples:
  qmpevents record /tmp/vm.sock -o incident.jsonl
  qmpevents record /run/qemu-server/ -o host.jsonl --fsync always
  qmpevents replay incident.jsonl --print

Each line: {"vm": NAME, "received": EPOCH, "direction": "event", "message": {...}}.
--fsync always: a crash loses nothing written; interval (default): at most the
last --fsync-interval seconds; never: whatever the OS had not written.
A torn last line left by a crash is skipped when the file is read.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "record", help="record every event of one or many VMs to a JSON-lines file",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(parser)
    parser.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="append records to FILE")
    parser.add_argument("--fsync", choices=("always", "interval", "never"), default="interval")
    parser.add_argument("--fsync-interval", type=float, default=1.0, metavar="S")
    parser.add_argument("--count", type=int, metavar="N", help="stop after N events")
    parser.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        for spec in args.targets:
            expand(spec)
        writer = RecordingWriter(args.output, fsync=args.fsync, interval=args.fsync_interval)
    except (TargetError, OSError) as exc:
        print(f"qmpevents record: error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_record(args, writer))
    finally:
        writer.close()
        print(f"qmpevents record: {writer.records} events written to {args.output}",
              file=sys.stderr)


async def _record(args: argparse.Namespace, writer: RecordingWriter) -> int:
    done = asyncio.get_running_loop().create_future()

    def note(message: str) -> None:
        sys.stderr.write(f"qmpevents record: {message}\n")

    async def on_event(vm: str, event: Event | UnknownEvent) -> None:
        raw = event.raw if event.raw is not None else encode_json(event.to_wire()).encode()
        writer.write(vm, raw)
        if args.count is not None and writer.records >= args.count and not done.done():
            done.set_result(0)

    attachments = Attachments(args.targets, args.rescan, on_event, note)
    if await attachments.start():
        await attachments.stop()
        return 3
    rescan = asyncio.create_task(attachments.rescan_forever())
    try:
        async with asyncio.timeout(args.timeout):
            status: int = await done
    except TimeoutError:
        status = 0
    finally:
        rescan.cancel()
        await attachments.stop()
    return status
