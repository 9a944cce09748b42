"""``qmpevents exec TARGET COMMAND [KEY=VALUE...]``: run one command, print the reply."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import msgspec

from qmpevents.addresses import Address
from qmpevents.cli.argtypes import positive_float
from qmpevents.cli.common import fail, make_note
from qmpevents.cli.escape import json_safe
from qmpevents.cli.filters import unknown_note
from qmpevents.cli.render import encode_value, event_json
from qmpevents.cli.targets import (
    TargetError,
    add_tls_arguments,
    client_options,
    describe_error,
    expand,
)
from qmpevents.client import QMPClient
from qmpevents.errors import MonitorBusy, QMPError, QMPEventsError

EXAMPLES = """\
examples:
  qmpevents exec /tmp/vm.sock query-status
  qmpevents exec unix:/tmp/vm.sock x-sim-io-error device=ide0-hd1 operation=write
  qmpevents exec tcp:127.0.0.1:4444 x-sim-rtc-change --args '{"offset": 78}'
  qmpevents exec /tmp/vm.sock system_powerdown --wait SHUTDOWN --timeout 60

KEY=VALUE arguments are optional and are the command's, also after an option
(--wait EVENT takes no filter; a repeated KEY: the last wins); VALUE is read as
JSON when it parses (78, true, null, [..]) and as a string otherwise.  --wait
listens before the
command is sent, so the event it causes cannot be missed; the event is
printed (one JSON line, as received; one laid out over lines by pretty=on is
joined in QEMU's compact layout) after the reply.  What the server sent
is printed terminal-safe: a character that is not printable is written as its
JSON escape (\\u001b, \\u202e), the same JSON to jq; a number beyond a double's
range (1e400) is written 1e999.
exit status: 0 success, 1 QMP error reply (class and description on stderr),
no reply or no --wait event within --timeout, 2 usage error, 3 target unreachable
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "exec", help="run one QMP command and print its reply", epilog=EXAMPLES,
        usage="qmpevents exec [options] TARGET COMMAND [KEY=VALUE ...]",
        description="Run one QMP command and print its reply: indented JSON on a "
                    "terminal, one JSON line when piped.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", metavar="TARGET",
                        help="unix:PATH, tcp:HOST:PORT or a socket path")
    parser.add_argument("qmp_command", metavar="COMMAND")
    # A default: argparse then no longer names it as required when COMMAND is missing.
    parser.add_argument("arguments", nargs="*", default=[], metavar="KEY=VALUE",
                        help="the command's arguments, if it takes any")
    parser.add_argument("--args", dest="json_args", metavar="JSON",
                        help="the arguments as one JSON object")
    parser.add_argument("--timeout", type=positive_float, default=10.0, metavar="S",
                        help="give up after S seconds (default 10)")
    parser.add_argument("--wait", metavar="EVENT",
                        help="then wait for this event (a name or glob) and print it")
    add_tls_arguments(parser)
    parser.set_defaults(handler=run)


def parse_arguments(pairs: list[str], json_args: str | None) -> dict[str, Any]:
    """KEY=VALUE pairs and/or a JSON object to the command's arguments."""
    arguments: dict[str, Any] = {}
    if json_args is not None:
        try:
            loaded = msgspec.json.decode(json_args)
        except msgspec.DecodeError as exc:
            raise ValueError(f"--args is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ValueError("--args must be a JSON object")
        arguments.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"bad argument {pair!r}: expected KEY=VALUE")
        try:
            arguments[key] = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            arguments[key] = raw
    return arguments


def run(args: argparse.Namespace) -> int:
    try:
        targets = expand(args.target)
        arguments = parse_arguments(args.arguments, args.json_args)
        options = client_options(args)
    except (TargetError, ValueError) as exc:
        return fail("exec", exc)
    if len(targets) != 1:
        return fail("exec", f"{args.target!r} must name exactly one VM")
    target = targets[0]
    wait = args.wait.upper() if args.wait else None
    if (unknown := unknown_note([wait])) is not None:
        make_note("exec")(unknown)
    return asyncio.run(_exec(target.connect_address, args.qmp_command, arguments, args.timeout,
                             options.for_address(target.address), wait))


async def _exec(address: Address, command: str, arguments: dict[str, Any], timeout: float,
                options: dict[str, Any], wait: str | None) -> int:
    client = QMPClient(address, connect_timeout=timeout, **options)
    try:
        await client.connect()
    except MonitorBusy as exc:  # reached, and it says which address
        _say(str(exc))
        return 3
    except (OSError, TimeoutError, QMPEventsError) as exc:
        _say(f"cannot reach {address}: {describe_error(exc)}")
        return 3
    try:
        waiter = client.wait_for(wait, timeout=timeout) if wait is not None else None
        try:
            reply = await client.execute(command, arguments or None, timeout=timeout)
        except BaseException:
            if waiter is not None:
                waiter.close()  # never awaited: stop listening
            raise
        _print_reply(reply)
        if waiter is not None:
            try:
                event = await waiter
            except TimeoutError:
                _say(f"no {wait} event within {timeout:g} s")
                return 1
            except (OSError, QMPEventsError) as exc:
                _say(f"no {wait} event: {describe_error(exc)}")
                return 1
            print(json_safe(event_json(event).strip()), flush=True)
    except QMPError as exc:
        _say(f"{exc.error_class}: {exc.desc}")
        return 1
    except (OSError, TimeoutError, QMPEventsError) as exc:
        _say(f"{command}: no reply: {describe_error(exc)}")
        return 1
    finally:
        await client.close()
    return 0


def _say(message: str) -> None:
    """``qmpevents exec: MESSAGE`` on stderr, terminal-safe (it quotes the server)."""
    make_note("exec")(message)


def _print_reply(reply: Any) -> None:
    """Indented on a terminal, one line in a pipe; terminal-safe either way."""
    if sys.stdout.isatty():  # each line escaped on its own: the indentation stays
        text = "\n".join(json_safe(line) for line in encode_value(reply, indent=2).split("\n"))
    else:
        text = json_safe(encode_value(reply))
    print(text, flush=True)
