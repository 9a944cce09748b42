"""``qmpevents agent TARGET... --nats URL``: every event of this host's VMs into JetStream.

The VMs are followed as ``watch`` follows them (:mod:`qmpevents.cli.follow`); each
event is appended to the durable spool, then published from it in order
(:mod:`qmpevents.fleet`), so a broker outage or an agent restart loses
nothing that was spooled.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from collections.abc import Callable
from typing import Any

from qmpevents.cli.argtypes import positive_int
from qmpevents.cli.common import add_fsync_arguments, fail, make_note
from qmpevents.cli.fleet_args import (
    add_credentials_arguments,
    add_listen_argument,
    broker_options,
    duration,
    size,
)
from qmpevents.cli.follow import add_follower_command, check_targets, follow_vms, run_session
from qmpevents.cli.targets import TargetError
from qmpevents.client import QMPEvent
from qmpevents.fleet.broker import DEFAULT_DUPLICATE_WINDOW, DEFAULT_MAX_AGE, StreamSettings
from qmpevents.fleet.deps import MissingDependency, require
from qmpevents.fleet.spool import DEFAULT_MAX_BYTES, Spool, SpoolLocked
from qmpevents.fleet.subjects import DEFAULT_STREAM

HELP = "publish this host's VM events to NATS JetStream"
DESCRIPTION = ("Follow this host's VMs as watch does and publish every event to NATS "
               "JetStream, at least once, through a durable local spool.")

EXAMPLES = """\
examples:
  qmpevents agent /run/qemu-server/ --nats nats://nats1:4222
  qmpevents agent '/tmp/vms/*.sock' --nats nats://a:4222 --nats nats://b:4222 --host web1
  qmpevents agent /run/qemu-server/ --nats nats://127.0.0.1:4222 --listen 127.0.0.1:9650
  qmpevents watch 'nats://nats1:4222/qmp.web1.>' --since 1h

Each event goes to subject qmp.<host>.<vm>.<EVENT> of stream --stream (created
when missing: subjects qmp.>, file storage, --max-age), its exact JSON as the
payload, with headers Qmp-Host, Qmp-Vm, Qmp-Received, Qmp-Seq and Nats-Msg-Id.
In subjects a name keeps printable ASCII but . * > %; any other character is
%XX per UTF-8 byte (web.1 -> web%2E1, a space -> %20), the empty name is %.

Every event is first appended to the spool (--spool DIR, a recording that
replay reads; --fsync as record's) and leaves it once JetStream acknowledged
it: while the broker is away the agent spools, and drains in order when it is
back; a restarted agent resumes from its spool.  When the spool reaches
--spool-max-bytes, NEW events are dropped (counted, warned) until publishing
frees space: what is spooled is never overwritten.

exit status: 0 stopped by Ctrl-C/SIGTERM (the spool is kept), 1 error,
2 usage error, 3 a target cannot be reached at start
"""


def _default_spool(stream: str) -> str:
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state, "qmpevents", f"agent-{stream}")


def register(subparsers: Any) -> None:
    parser = add_follower_command(subparsers, "agent", run, help=HELP,
                                  description=DESCRIPTION, epilog=EXAMPLES)
    parser.add_argument("--nats", action="append", required=True, metavar="URL",
                        help="a NATS server, nats://HOST:PORT (repeatable: a cluster)")
    parser.add_argument("--host", default=socket.gethostname().split(".")[0], metavar="NAME",
                        help="this host's name in subjects and headers (default: hostname)")
    parser.add_argument("--stream", default=DEFAULT_STREAM, metavar="NAME",
                        help=f"the JetStream stream (default {DEFAULT_STREAM})")
    parser.add_argument("--max-age", type=duration, default=DEFAULT_MAX_AGE, metavar="DURATION",
                        help="a created stream keeps events this long (default 7d)")
    parser.add_argument("--replicas", type=positive_int, default=1, metavar="N",
                        help="a created stream's replicas in a cluster (default 1)")
    parser.add_argument("--duplicate-window", type=duration, default=DEFAULT_DUPLICATE_WINDOW,
                        metavar="DURATION",
                        help="a created stream's de-duplication window (default 2m)")
    parser.add_argument("--spool", metavar="DIR",
                        help="the spool directory (default $XDG_STATE_HOME/qmpevents/"
                             "agent-STREAM)")
    parser.add_argument("--spool-max-bytes", type=size, default=DEFAULT_MAX_BYTES,
                        metavar="SIZE", help="bound of the spool on disk (default 1G)")
    add_fsync_arguments(parser, "spooled events")
    add_listen_argument(parser, "also serve Prometheus metrics (as the exporter command)")
    add_credentials_arguments(parser, tls_prefix="nats-")


def run(args: argparse.Namespace) -> int:
    note = make_note("agent")
    try:
        check_targets(args)
        args.broker = broker_options(args, args.nats, tls_prefix="nats-",
                                     name=f"qmpevents agent {args.host}")
        if any(not url.startswith(("nats://", "tls://")) for url in args.nats):
            raise TargetError("--nats expects nats://HOST:PORT")
        require("nats")
        if args.listen is not None:
            require("prometheus_client")
    except (TargetError, ValueError) as exc:
        return fail("agent", exc)
    except MissingDependency as exc:
        return fail("agent", exc, 1)
    spool = Spool(args.spool or _default_spool(args.stream), max_bytes=args.spool_max_bytes,
                  fsync=args.fsync, interval=args.fsync_interval)
    try:
        spool.open()
    except SpoolLocked as exc:
        return fail("agent", exc, 1)
    except OSError as exc:
        return fail("agent", f"{spool.directory}: {exc.strerror or exc}", 1)
    try:
        return asyncio.run(_agent(args, spool, note))
    finally:
        spool.close()


async def _agent(args: argparse.Namespace, spool: Spool, note: Callable[[str], None]) -> int:
    from qmpevents.fleet.agent import Intake
    from qmpevents.fleet.publisher import Publisher

    intake = Intake(args.host, spool)
    settings = StreamSettings(args.stream, max_age=args.max_age, replicas=args.replicas,
                              duplicate_window=args.duplicate_window)
    publisher = Publisher(spool, args.broker, settings, note=note)
    on_event = intake.on_event
    on_link = None
    stop_http: Callable[[], None] | None = None
    if args.listen is not None:
        from qmpevents.fleet.metrics import AgentMetrics, FleetMetrics, serve

        metrics = FleetMetrics()
        agent_metrics = AgentMetrics(metrics.registry)

        def spooled(vm: str, event: QMPEvent, kept: bool) -> None:
            if not kept:
                agent_metrics.dropped.inc()
            agent_metrics.spool_bytes.set(spool.pending_bytes)

        def published(count: int) -> None:
            agent_metrics.published.inc(count)
            agent_metrics.spool_bytes.set(spool.pending_bytes)

        async def both(vm: str, event: QMPEvent) -> None:
            await intake.on_event(vm, event)
            await metrics.on_event(vm, event)

        intake.on_spooled = spooled
        publisher.on_published = published
        publisher.on_link = lambda up: agent_metrics.broker_connected.set(1 if up else 0)
        on_event, on_link = both, metrics.on_link
        try:
            stop_http, port = serve(metrics.registry, args.listen)
        except (OSError, ValueError) as exc:
            note(f"error: --listen {args.listen}: {exc}")
            return 1
        note(f"metrics on http://{args.listen.rpartition(':')[0]}:{port}/metrics")
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    publishing = asyncio.create_task(publisher.run())

    def publisher_ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not done.done():
            done.set_exception(task.exception())  # type: ignore[arg-type]

    publishing.add_done_callback(publisher_ended)
    vms = follow_vms(args, on_event, note, on_link=on_link)
    try:
        return await run_session(
            vms, done, None, note,
            started=lambda: note(f"publishing as host {args.host} to stream {args.stream}; "
                                 f"spool {spool.directory}"))
    finally:
        while not publishing.done():  # nats-py may drop one cancellation (see publisher)
            publishing.cancel()
            await asyncio.wait({publishing}, timeout=1.0)
        if stop_http is not None:
            stop_http()
        note(f"{intake.received} events received, {publisher.published} published, "
             f"{spool.pending_bytes} bytes left in the spool, {spool.dropped} dropped")
