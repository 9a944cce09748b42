"""The commands that follow VMs (watch, record, agent, exporter) follow them one way.

The following itself is the library's :class:`~qmpevents.client.vms.VMs`
(sockets, directories waited for, globs, VMs coming and going, reconnects,
naming, TLS); this module adds the command line's side: the target
arguments, the notes on stderr for each change of a VM's state, and the
session (signals, ``--timeout``, exit status 3 for an unreachable target).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

from qmpevents.cli.argtypes import positive_float
from qmpevents.cli.common import Note, add_command
from qmpevents.cli.targets import add_tls_arguments, client_options, describe_error, expand
from qmpevents.client.targets import Target
from qmpevents.client.vms import OnEvent, OnLink, Trace, VMs, VMState

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def add_follower_command(subparsers: Any, name: str, handler: Callable[[Any], int] | None,
                         *, help: str, description: str,
                         epilog: str) -> argparse.ArgumentParser:
    """The parser of a command that follows VMs: its targets and their options first;
    *handler* runs the command (None: one is set later, see ``add_stream_arguments``)."""
    parser = add_command(subparsers, name, help=help, description=description, epilog=epilog)
    add_target_arguments(parser)
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="+", metavar="TARGET",
                        help="unix:PATH, tcp:HOST:PORT, a socket path, a directory or a glob")
    parser.add_argument("--rescan", type=positive_float, default=1.0, metavar="S",
                        help="re-scan directories and globs every S seconds (default 1)")
    add_tls_arguments(parser)


def check_targets(args: argparse.Namespace) -> None:
    """TargetError for a target or a TLS option that cannot be understood (a usage error);
    else the TLS settings are kept as ``args.client_options``."""
    for spec in args.targets:
        expand(spec)
    args.client_options = client_options(args)


def state_notes(note: Note, rescan: float,
                on_disconnect: Callable[[str], None] | None = None) -> Callable[[VMState], None]:
    """*on_state* for :class:`VMs`: each change of a VM's state as a note on stderr.

    *on_disconnect* hears of a fixed target's VM whose connection simply ended
    (``--exit-on-disconnect``), before its note.
    """

    def on_state(state: VMState) -> None:
        if state.target is None:  # waiting: a directory or glob that names no VM yet
            note(f"{state.vm}: {state.detail}; waiting (re-scanned every {rescan:g} s)")
            return
        target, error = state.target, state.error
        reason = describe_error(error) if error is not None else state.detail
        if state.status == "attached":
            note(f"{state.vm}: attached ({target.address})")
        elif state.status == "back":
            note(f"{state.vm}: back")
        elif state.status == "lost":
            if error is None and not state.scanned and on_disconnect is not None:
                on_disconnect(state.vm)
                return  # the command ends here: no "retrying"
            note(f"{target.name}: lost ({reason}); retrying")
        elif state.status == "unreachable":
            note(f"{target.name}: cannot connect ({reason}); retrying")
        elif state.status == "gone":
            note(f"{target.name}: gone ({reason})")
        elif state.status == "failed":
            note(f"{target.name}: no longer followed: internal error: {error!r}")

    return on_state


def follow_vms(args: argparse.Namespace, on_event: OnEvent, note: Note, *,
               trace: Callable[[Target], Trace] | None = None, on_link: OnLink | None = None,
               on_disconnect: Callable[[str], None] | None = None) -> VMs:
    """The VMs of ``args.targets`` (checked by :func:`check_targets`), each event to *on_event*."""
    options = args.client_options
    return VMs(args.targets, rescan=args.rescan, on_event=on_event,
               on_state=state_notes(note, args.rescan, on_disconnect), on_link=on_link,
               trace=trace, ssl=options.ssl, server_hostname=options.server_hostname)


@contextlib.contextmanager
def signals_resolve(done: asyncio.Future[int], on_signal: Callable[[int], int]) -> Iterator[None]:
    """While inside, SIGINT/SIGTERM resolve *done* with ``on_signal(signum)``."""
    loop = asyncio.get_running_loop()

    def interrupted(signum: int) -> None:
        if not done.done():
            done.set_result(on_signal(signum))

    for signum in SIGNALS:
        loop.add_signal_handler(signum, interrupted, signum)
    try:
        yield
    finally:
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)


async def finished_by(task: asyncio.Future[Any], done: asyncio.Future[int],
                      deadline: float | None) -> bool:
    """Whether *task* (connecting) finished before the loop's clock reached *deadline*
    and before *done* (a signal, an error) resolved; if not, it is cancelled."""
    try:
        async with asyncio.timeout_at(deadline):
            await asyncio.wait((task, done), return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        pass
    if task.done():
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False


async def until(done: asyncio.Future[int], deadline: float | None) -> int | None:
    """*done*'s result, or None when the loop's clock reaches *deadline* first (an
    exception set on *done* is raised)."""
    try:
        async with asyncio.timeout_at(deadline):
            return await asyncio.shield(done)
    except TimeoutError:
        if done.done():  # resolved at the deadline: the condition wins
            return done.result()
        return None


async def run_session(vms: VMs, done: asyncio.Future[int], timeout: float | None, note: Note,
                      *, on_timeout: Callable[[], int] = lambda: 0,
                      on_signal: Callable[[int], int] = lambda _: 0,
                      started: Callable[[], None] | None = None) -> int:
    """Follow the VMs until *done* resolves, *timeout* expires or SIGINT/SIGTERM.

    *timeout* is wall time from this call, whatever the targets do: connecting
    (a silent socket, a stalled TLS handshake) and asking names count.
    Returns 3 when a fixed target cannot be reached at start (each said),
    else *done*'s result, ``on_timeout()`` or ``on_signal(signum)``;
    ``on_timeout`` is called once the VMs are closed, so the events they held
    are delivered (and counted) first.  *started* is called once every fixed
    target is connected.  An exception set on *done* (stdout closed, disk
    full) is raised.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    status: int | None = None
    with signals_resolve(done, on_signal):
        try:
            starting = asyncio.ensure_future(vms.start())
            if not await finished_by(starting, done, deadline):
                status = done.result() if done.done() else None
            else:
                unreachable = starting.result()
                for target, error in unreachable:
                    note(f"{target.name}: cannot connect to {target.address}: "
                         f"{describe_error(error)}")
                if unreachable:
                    return 3
                if started is not None:
                    started()
                status = await until(done, deadline)
        finally:
            await vms.close()
    return on_timeout() if status is None else status
