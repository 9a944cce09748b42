"""The one error of a QEMU 7.2 command (or part of one) the simulated machine does not model."""

from __future__ import annotations

from qmpevents.protocol import CommandFailure

NOT_MODELLED = "The simulated machine does not model the command {name}"
"""The error (class ``GenericError``) of a QEMU 7.2 command the simulator does not model."""


def not_modelled(name: str) -> CommandFailure:
    """The failure to raise for command *name*."""
    return CommandFailure("GenericError", NOT_MODELLED.format(name=name))
