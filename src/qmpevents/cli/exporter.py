"""``qmpevents exporter TARGET... --listen HOST:PORT``: Prometheus metrics of this host's VMs.

The VMs are followed as ``watch`` follows them; the series are described in
:mod:`qmpevents.fleet.metrics` (events by VM and name, BLOCK_IO_ERROR by
device/operation/action, run state, VNC clients, connection state and
reconnects).  ``qmpevents agent --listen`` serves the same series.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from qmpevents.cli.common import fail, make_note
from qmpevents.cli.fleet_args import add_listen_argument
from qmpevents.cli.follow import add_follower_command, check_targets, follow_vms, run_session
from qmpevents.cli.targets import TargetError
from qmpevents.fleet.deps import MissingDependency, require

HELP = "serve Prometheus metrics of one or many VMs"
DESCRIPTION = ("Follow VMs as watch does and serve their events, run states, VNC clients "
               "and connection states as Prometheus metrics.")

EXAMPLES = """\
examples:
  qmpevents exporter /run/qemu-server/ --listen 127.0.0.1:9650
  curl -s http://127.0.0.1:9650/metrics | grep qmpevents_block_io_errors_total

Series: qmpevents_events_total{vm,event}, qmpevents_block_io_errors_total{vm,
device,operation,action}, qmpevents_vm_run_state{vm,state} (1 for the current
state, from query-status, refreshed after each state event),
qmpevents_vnc_clients{vm}, qmpevents_target_connected{vm},
qmpevents_target_reconnects_total{vm}.

exit status: 0 stopped by Ctrl-C/SIGTERM, 1 cannot listen, 2 usage error,
3 a target cannot be reached at start
"""


def register(subparsers: Any) -> None:
    parser = add_follower_command(subparsers, "exporter", run, help=HELP,
                                  description=DESCRIPTION, epilog=EXAMPLES)
    add_listen_argument(parser, "serve /metrics here (default 127.0.0.1:9650; port 0: any)",
                        default="127.0.0.1:9650")


def run(args: argparse.Namespace) -> int:
    try:
        check_targets(args)
        require("prometheus_client")
    except TargetError as exc:
        return fail("exporter", exc)
    except MissingDependency as exc:
        return fail("exporter", exc, 1)
    return asyncio.run(_export(args))


async def _export(args: argparse.Namespace) -> int:
    from qmpevents.fleet.metrics import FleetMetrics, serve

    note = make_note("exporter")
    metrics = FleetMetrics()
    try:
        stop_http, port = serve(metrics.registry, args.listen)
    except ValueError as exc:
        note(f"error: --listen {exc}")
        return 2
    except OSError as exc:
        note(f"error: --listen {args.listen}: {exc.strerror or exc}")
        return 1
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    vms = follow_vms(args, metrics.on_event, note, on_link=metrics.on_link)
    try:
        return await run_session(
            vms, done, None, note,
            started=lambda: note(f"metrics on http://{args.listen.rpartition(':')[0]}:{port}"
                                 "/metrics"))
    finally:
        await metrics.stop()
        stop_http()
