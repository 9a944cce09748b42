"""``qmpevents watch TARGET...``: a live event tail from one or many VMs.

The VMs are followed by the library's :class:`~qmpevents.client.vms.VMs`
(:mod:`qmpevents.cli.follow`): each VM has its own connection; a VM that goes
away is reported on stderr and retried, and directories/globs are re-scanned
so VMs that appear later are attached.  This module filters and prints,
through :class:`~qmpevents.cli.output.Output`: a stdout nobody reads slows
the VMs down but never stops ``--timeout`` (wall time from the start).
"""

from __future__ import annotations

import argparse
import asyncio
from fnmatch import fnmatchcase
from typing import Any

from qmpevents.cli.argtypes import positive_float, positive_int
from qmpevents.cli.common import add_globs, colour_wanted, fail, make_note, plural
from qmpevents.cli.filters import FilterError, build_filter, unknown_note
from qmpevents.cli.follow import add_follower_command, check_targets, follow_vms, run_session
from qmpevents.cli.output import Output
from qmpevents.cli.render import json_line, raw_line, text_line
from qmpevents.cli.stream import add_stream_arguments
from qmpevents.cli.targets import TargetError
from qmpevents.client import EventFilter, QMPEvent

EXAMPLES = """\
examples:
  qmpevents watch /tmp/vm.sock
  qmpevents watch /run/qemu-server/ --event SHUTDOWN --json | jq .vm
  qmpevents watch unix:/tmp/a.sock tcp:127.0.0.1:4444 --event 'VNC_*' --count 3
  qmpevents watch /tmp/vm.sock --match data.action=stop --until SHUTDOWN --timeout 30
  qmpevents watch '/tmp/vms/*.sock' --rescan 0.2
  qmpevents watch web1=/var/lib/libvirt/qemu/domain-3-web1/monitor.sock --exit-on-disconnect
  qmpevents watch /run/qemu-server/      # a trailing / : a directory, waited for if missing
  qmpevents watch /var/lib/libvirt/qemu/ # and each domain-N-NAME/monitor.sock in it

VMs are named NAME (NAME=ADDRESS), else by their own query-name, else by the
distinguishing part of the path (libvirt's domain-N-NAME directory for a
generic monitor.sock).

Filters: --event (a glob, repeatable) and --match (repeatable) must all hold;
--match VALUE is JSON when it parses (offset=78) and text otherwise
(action=stop).  --until ends on that event (a glob) whatever the filters say.
VMs that are lost, come back, appear or go away are reported on stderr.
Text values holding a space, =, a quote or a backslash are quoted
(device="ide0 action=stop"); what a server sent is shown with its control
characters escaped; --json lines: "vm" is always the tool's.

exit status: 0 condition met (--count/--until), or stopped by Ctrl-C/SIGTERM
when none was given; 1 --timeout expired first; 2 usage error; 3 a target
cannot be reached at start; 128+N stopped by signal N before the condition
"""


def register(subparsers: Any) -> None:
    parser = add_follower_command(
        subparsers, "watch", None, help="live event tail from one or many VMs", epilog=EXAMPLES,
        description="A live event tail from one or many VMs: one line per event "
                    "(coloured on a terminal), or JSON lines with the source VM.")
    parser.add_argument("--json", action="store_true",
                        help="print JSON lines with the source VM added")
    add_globs(parser, "--event", "only events whose name matches (glob, repeatable)")
    add_globs(parser, "--match", "only events whose data field matches (data.action=stop)",
              metavar="KEY=VALUE")
    parser.add_argument("--count", type=positive_int, metavar="N",
                        help="exit 0 after N events")
    parser.add_argument("--until", metavar="EVENT", help="exit 0 after this event")
    parser.add_argument("--timeout", type=positive_float, metavar="S",
                        help="exit 1 if the condition is not met within S seconds (wall time "
                             "from the start, connecting included)")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour the text output (auto: on a terminal without NO_COLOR)")
    add_stream_arguments(parser, "watch", _run_local)
    parser.add_argument("--exit-on-disconnect", action="store_true",
                        help="exit 0 when a VM named by a plain target (not a directory or "
                             "glob) disconnects, e.g. after quit, instead of retrying")


def _run_local(args: argparse.Namespace) -> int:
    try:
        check_targets(args)
        event_filter = build_filter(args.event, args.match)
    except (TargetError, FilterError) as exc:
        return fail("watch", exc)
    if (unknown := unknown_note([*args.event, args.until])) is not None:
        make_note("watch")(unknown)
    return asyncio.run(_watch(args, event_filter, colour_wanted(args.color)))


async def _watch(args: argparse.Namespace, event_filter: EventFilter, colour: bool) -> int:
    loop = asyncio.get_running_loop()
    deadline = None if args.timeout is None else loop.time() + args.timeout
    done: asyncio.Future[int] = loop.create_future()

    output = Output(ends=done)  # a closed pipe (| head) ends the watch
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
        # Past the deadline (events held while a VM was named, delivered at the end):
        # written if there is room, never waited for.
        late = deadline is not None and loop.time() >= deadline
        if late and output.full:
            return
        line = render(vm, event)
        try:
            if not await output.write(line + "\n", block=not late):
                return
        except OSError:  # a closed pipe (| head): Output ended the watch, not the VM
            return
        seen += shown
        if final or (args.count is not None and seen >= args.count):
            done.set_result(0)

    def on_timeout() -> int:
        note(f"timed out after {args.timeout:g} s ({plural(seen, 'event')})")
        return 1

    def on_signal(signum: int) -> int:
        return 128 + signum if has_condition else 0

    def on_disconnect(vm: str) -> None:
        if not done.done():
            note(f"{vm}: disconnected; exiting (--exit-on-disconnect)")
            done.set_result(0)

    vms = follow_vms(args, on_event, note,
                     on_disconnect=on_disconnect if args.exit_on_disconnect else None)
    timed_out = False

    def timing_out() -> int:
        nonlocal timed_out
        timed_out = True
        return on_timeout()

    try:
        status = await run_session(vms, done, None if deadline is None else deadline - loop.time(),
                                   note, on_timeout=timing_out, on_signal=on_signal)
        # Every line shown before the exit: within the deadline, or once it has passed
        # (what was received before it), if the reader takes them within FINAL_GRACE.
        if not await output.drained_by(deadline, timed_out=timed_out) and not timed_out:
            return on_timeout()
        return status
    finally:
        output.close()
        if unrenderable:
            note(f"{plural(unrenderable, 'event')} could not be rendered (shown raw)")
