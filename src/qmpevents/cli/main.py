"""``qmpevents``: entry point and sub-command registry.

Each sub-command lives in its own module exposing ``register(subparsers)``,
which adds its parser and sets ``handler`` (a function taking the parsed
arguments and returning the exit status).  Usage errors exit 2 with one line;
no traceback reaches the user unless ``-vv`` asks for debugging.  A closed
stdout (``| head``) ends a command quietly with status 141, as SIGPIPE would.
Log records (the library's warnings quote what a server sent) are made
terminal-safe as every other line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from typing import Any

from qmpevents import __version__
from qmpevents.cli.escape import safe

_DESCRIPTION = """\
QMP events from both ends: serve a simulated VM that emits them, watch,
record and replay them from real QEMU or the simulator, run commands.

examples:
  qmpevents demo
  qmpevents serve --qmp unix:/tmp/vm.sock --drive ide0-hd1,werror=stop
  qmpevents watch /tmp/vm.sock --event 'VNC_*' --count 3
  qmpevents exec /tmp/vm.sock query-status
"""

#: Sub-command modules, in the order ``--help`` lists them.
COMMANDS = ("demo", "serve", "watch", "exec", "record", "replay", "agent", "exporter")


class SafeFormatter(logging.Formatter):
    """Log records with their message escaped (:func:`~qmpevents.cli.escape.safe`): a
    WARNING quoting a server's error description cannot drive the terminal.  A
    traceback (``-vv``) is escaped line by line, so it keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = safe(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _lines_safe(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _lines_safe(super().formatStack(stack_info))


def _lines_safe(text: str) -> str:
    return "\n".join(safe(line) for line in text.split("\n"))


def configure_logging(verbose: int) -> None:
    """The root logger to stderr at the level *verbose* asks for, messages escaped."""
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    logging.basicConfig(
        level={0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG),
        handlers=[handler])


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qmpevents", description=_DESCRIPTION,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"qmpevents {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log to stderr (-v info, -vv debug and tracebacks)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                       parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"qmpevents.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"qmpevents.cli.{name}":
                raise
            continue
        module.register(subparsers)
    for command in subparsers.choices.values():  # also after the command: watch -v
        command.set_defaults(command_parser=command)  # says its own usage errors
        if "-v" in command._option_string_actions:
            continue
        command.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                             help="log to stderr (-v info, -vv debug and tracebacks)")
    return parser


def _take_late_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace,
                         extra: list[str]) -> None:
    """``exec``'s KEY=VALUE arguments after an option (``--wait EVENT a=1``) are
    its arguments too: argparse takes positionals only before; anything else
    left over is a usage error of the command it was given to."""
    if args.command == "exec" and all(_KEY_VALUE.match(word) for word in extra):
        args.arguments += extra
        return
    command: argparse.ArgumentParser = getattr(args, "command_parser", parser)
    command.error(f"unrecognized arguments: {' '.join(extra)}")


_KEY_VALUE = re.compile(r"[^-=][^=]*=")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports every command: Ctrl-C may land here
    except KeyboardInterrupt:
        return 130
    args, extra = parser.parse_known_args(argv)
    if extra:
        _take_late_arguments(parser, args, extra)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    configure_logging(args.verbose)
    try:
        status: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # stdout closed early (| head): stop quietly, as cat does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit cannot fail again
        return 128 + signal.SIGPIPE
    except Exception as exc:  # the last line of defence: one line, no traceback
        if args.verbose >= 2:
            raise
        sys.stderr.write(f"qmpevents {args.command}: error: "
                         f"{safe(str(exc) or type(exc).__name__)}\n")
        return 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
