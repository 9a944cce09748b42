"""The ``qmpevents`` command line."""

from qmpevents.cli.main import main

__all__ = ["main"]
