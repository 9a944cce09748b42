"""``qmpevents replay FILE``: a recorded incident, served again over QMP or printed.

Serving turns a recording into a QMP server: once the first client has
negotiated, the recorded event lines are sent byte for byte, with the
original gaps between them scaled by ``--speed`` (or none at all), so
management software can be tested against what really happened.

One QMP server is one VM, so it serves one VM's events and answers
``query-name`` with the VM's recorded name (``watch`` shows it under that
name).  A recording of several VMs is served one socket per VM
(``--serve unix:DIR/``: ``DIR/NAME.sock``), or one of them (``--vm NAME``);
merging them onto one socket would make one VM of several.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
from typing import Any

from qmpevents.addresses import Address, AddressError
from qmpevents.catalog import decode_event
from qmpevents.cli.argtypes import positive_float
from qmpevents.cli.common import fail, make_note, plural
from qmpevents.cli.follow import SIGNALS
from qmpevents.cli.render import json_line, raw_line, text_line
from qmpevents.recording import ReadReport, Record, read_recording
from qmpevents.server import CommandSpec, CommandTable, QMPServer, parse_address

EXAMPLES = """\
examples:
  qmpevents replay incident.jsonl --print
  qmpevents replay incident.jsonl --serve unix:/tmp/replay.sock --speed 10
  qmpevents replay incident.jsonl --serve unix:/tmp/replay.sock --as-fast-as-possible
  qmpevents replay host.jsonl --serve unix:/tmp/replay/ &   # several VMs: one socket each
  qmpevents watch /tmp/replay/                              # shows each under its name
  qmpevents replay host.jsonl --vm web2 --serve unix:/tmp/web2.sock

One socket serves one VM: its events, and its recorded name as query-name's
answer.  A recording of several VMs needs --vm NAME (one of them) or a
directory, --serve unix:DIR/ (a trailing /; created if missing): one socket
per VM, DIR/NAME.sock (characters other than letters, digits and _.@- in
NAME become _).
Serving waits for a client to negotiate (with a directory: one on every
VM's socket, as `watch DIR/` connects), replays, then closes and exits 0.
The timeline starts then; if every client leaves before
its end (a probe such as `qmpevents exec ... query-status`), it starts again
from the beginning for the next client.  After the last event the server
still answers commands for 1 s, then closes.
The replay server answers query-status, query-version and query-name; other
commands get CommandNotFound.  A torn last line (a crash while recording) is reported
on stderr and skipped.  --print shows a recorded message that is not an
event (a list, a string, no timestamp) raw, or with --json skips it; either
way they are counted on stderr.

exit status: 0 done, or SIGINT/SIGTERM (the sockets are removed); 1 --vm matched
no event or cannot listen; 2 usage error (several VMs for one socket),
unreadable FILE or one with no record in it
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
    mode.add_argument("--serve", metavar="ADDRESS",
                      help="unix:PATH or tcp:HOST:PORT for one VM; unix:DIR/ for one socket "
                           "per VM of the recording (DIR/NAME.sock)")
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
    records = []
    read = 0
    for record in read_recording(args.file, report):
        read += 1
        if record.direction == "event" and (not args.vm or record.vm in args.vm):
            records.append(record)
    if (report.bad_lines or report.torn_tail) and not read:  # whatever its last byte
        raise NotARecording(f"{args.file} is not a recording: no line of it is a record")
    if not read:  # empty, or blank lines only (record against a busy monitor leaves one)
        raise NotARecording(f"{args.file} holds no record")
    if report.torn_tail:
        print("qmpevents replay: the last line was torn (a crash while recording); skipped",
              file=sys.stderr)
    if report.bad_lines:
        print(f"qmpevents replay: {plural(report.bad_lines, 'malformed line')} skipped "
              f"(the first: line {report.first_bad_line})", file=sys.stderr)
    return records


class NotARecording(ValueError):
    """A file none of whose lines is a record."""


def run(args: argparse.Namespace) -> int:
    try:
        records = _load(args)
    except OSError as exc:
        print(f"qmpevents replay: error: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except NotARecording as exc:
        return fail("replay", exc)
    if args.vm and not records:
        make_note("replay")(f"no event of VM {', '.join(args.vm)} in {args.file}")
        return 1
    if args.print:
        _print(records, args.json)
        return 0
    try:
        addresses = _addresses(args.serve, _vms(records), args.file)
    except AddressError as exc:  # it names the recording's VMs: said terminal-safe
        return fail("replay", exc)
    try:
        return asyncio.run(_serve(addresses, records, 0.0 if args.as_fast_as_possible
                                  else 1.0 / args.speed))
    except OSError as exc:  # the socket cannot be made: in use, no such directory...
        print(f"qmpevents replay: error: cannot listen: {exc.strerror or exc}"
              f"{f': {exc.filename}' if exc.filename else ''}", file=sys.stderr)
        return 1


def _vms(records: list[Record]) -> list[str]:
    """The recording's VMs, in the order they first speak."""
    return list(dict.fromkeys(record.vm for record in records))


_UNSAFE = re.compile(r"[^A-Za-z0-9_.@-]")


def _addresses(spec: str, vms: list[str], file: str) -> dict[str, Address]:
    """Where each VM is served: *spec* itself for one VM, ``DIR/NAME.sock`` for a directory.

    AddressError (a usage error) for several VMs on one socket: one QMP server is
    one VM, and merged they would be shown as one.
    """
    path = spec[len("unix:"):] if spec.startswith("unix:") else spec
    if not spec.startswith("tcp:") and (path.endswith("/") or os.path.isdir(path)):
        os.makedirs(path, mode=0o700, exist_ok=True)
        addresses: dict[str, Address] = {}
        taken: set[str] = set()
        for vm in vms:
            stem = _UNSAFE.sub("_", vm) or "vm"
            unique, number = stem, 1
            while unique in taken:  # "a/b" and "a_b": both served, each on its own
                number += 1
                unique = f"{stem}-{number}"
            taken.add(unique)
            addresses[vm] = parse_address(f"unix:{os.path.join(path, unique)}.sock")
        return addresses
    address = parse_address(spec)
    if len(vms) > 1:
        shown = ", ".join(vms[:5]) + (", ..." if len(vms) > 5 else "")
        raise AddressError(
            f"{file} holds {len(vms)} VMs ({shown}) and one QMP socket serves one VM: "
            f"pick one with --vm NAME, or serve each on its own socket with "
            f"--serve unix:DIR/")
    return {vm: address for vm in vms} or {"": address}


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


def _commands(name: str) -> CommandTable:
    def query_status(_: dict[str, Any]) -> Any:
        return {"status": "running", "singlestep": False, "running": True}

    def query_version(_: dict[str, Any]) -> Any:
        return REPLAY_VERSION

    def query_name(_: dict[str, Any]) -> Any:
        return {"name": name} if name else {}  # the recorded VM's, as QEMU's -name

    return CommandTable([CommandSpec("query-status", query_status),
                         CommandSpec("query-version", query_version),
                         CommandSpec("query-name", query_name)])


class _Audience:
    """Who listens: *complete* once every VM's socket has a negotiated client (the
    timeline may start), *emptied* once no socket has any (it starts again)."""

    def __init__(self, servers: list[QMPServer]) -> None:
        self._servers = servers
        self.complete = asyncio.Event()
        self.emptied = asyncio.Event()
        for server in servers:
            server.broadcaster.on_join(self.changed)
            server.broadcaster.on_leave(self.changed)

    def changed(self) -> None:
        counts = [len(server.broadcaster) for server in self._servers]
        if all(counts):
            self.complete.set()
        if not any(counts):
            self.emptied.set()

    @property
    def gone(self) -> bool:
        return self.emptied.is_set() or not any(len(s.broadcaster) for s in self._servers)


async def _serve(addresses: dict[str, Address], records: list[Record], scale: float) -> int:
    """Serve until the recording has played (exit 0), or SIGINT/SIGTERM (exit 0,
    as ``serve``): either way the sockets are removed."""
    loop = asyncio.get_running_loop()
    serving = asyncio.current_task()
    assert serving is not None
    signalled = False

    def stop() -> None:
        nonlocal signalled
        signalled = True
        serving.cancel()

    servers = {vm: QMPServer([address], _commands(vm), version=REPLAY_VERSION)
               for vm, address in addresses.items()}
    audience = _Audience(list(servers.values()))
    started: list[QMPServer] = []
    for signum in SIGNALS:
        loop.add_signal_handler(signum, stop)
    try:
        for server in servers.values():
            await server.start()
            started.append(server)
        where = ", ".join(str(address) for address in addresses.values())
        note = make_note("replay")  # the addresses hold the recording's VM names
        if len(servers) == 1:
            note(f"{plural(len(records), 'event')}; waiting for a client on {where}")
        else:
            note(f"{plural(len(records), 'event')} of {len(servers)} VMs; "
                 f"waiting for a client on each of {where}")
        while True:
            await audience.complete.wait()
            audience.emptied.clear()
            if await _play(servers, audience, records, scale):
                break
            audience.complete.clear()  # everyone left before the end: start again
            audience.changed()  # for the next audience, which may be there already
        print("qmpevents replay: done", file=sys.stderr)
        await asyncio.sleep(LINGER)  # commands sent with the last events still get replies
    except asyncio.CancelledError:
        if not signalled:
            raise
    finally:
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)
        for server in started:
            await server.close()
    return 0


async def _play(servers: dict[str, QMPServer], audience: _Audience, records: list[Record],
                scale: float) -> bool:
    """One run of the timeline from its start; False as soon as the audience has left."""
    previous = records[0].received if records else 0.0
    for record in records:
        delay = (record.received - previous) * scale
        previous = record.received
        if delay > 0:
            with contextlib.suppress(TimeoutError):  # the recording's own pacing
                await asyncio.wait_for(audience.emptied.wait(), delay)
        if audience.gone:
            return False
        servers[record.vm].broadcaster.publish_line(record.message_bytes() + b"\r\n")
    return True
