"""What every sub-command says the same way: its parser, its notes, its errors.

A note is ``qmpevents COMMAND: message`` on stderr; an error is ``qmpevents
COMMAND: error: message`` on stderr and an exit status (2 for a usage error).
Both are made terminal-safe (:func:`~qmpevents.cli.escape.safe`): a note
quotes what a server said (a VM's name, an error's description).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from qmpevents.cli.argtypes import positive_float
from qmpevents.cli.escape import safe

Note = Callable[[str], None]


def add_command(subparsers: Any, name: str, *, help: str, description: str,
                epilog: str) -> argparse.ArgumentParser:
    """A sub-command's parser, its epilog (examples, exit statuses) printed as written."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help, description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def add_globs(parser: Any, flag: str, help: str, metavar: str = "NAME") -> None:
    """A repeatable option collecting its values in a list (empty when not given), on a
    parser or an argument group."""
    parser.add_argument(flag, action="append", default=[], metavar=metavar, help=help)


def add_fsync_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--fsync always|interval|never`` and ``--fsync-interval S``: when *what* is synced."""
    parser.add_argument("--fsync", choices=("always", "interval", "never"), default="interval",
                        help=f"when to force {what} to disk (default interval)")
    parser.add_argument("--fsync-interval", type=positive_float, default=1.0, metavar="S",
                        help="with --fsync interval: at most S seconds between fsyncs")


def make_note(command: str) -> Note:
    """``note(message)``: one line on stderr, flushed (stdout may be a pipe to jq)."""
    def note(message: str) -> None:
        sys.stderr.write(f"qmpevents {command}: {safe(message)}\n")
        sys.stderr.flush()
    return note


def fail(command: str, message: object, status: int = 2) -> int:
    """Say ``qmpevents COMMAND: error: MESSAGE`` on stderr; returns *status* (the exit)."""
    print(f"qmpevents {command}: error: {safe(str(message))}", file=sys.stderr)
    return status


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 event``, ``2 events``, ``0 events`` (*nouns*: an irregular plural)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def colour_wanted(choice: str) -> bool:
    """``--color auto|always|never``: auto is on a terminal without NO_COLOR."""
    return choice == "always" or (choice == "auto" and sys.stdout.isatty()
                                  and "NO_COLOR" not in os.environ)
