"""Lazy imports of the optional ``fleet`` extra, with a message that says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from qmpevents.errors import QMPEventsError

_PACKAGES = {"nats": "nats-py", "prometheus_client": "prometheus-client"}


class MissingDependency(QMPEventsError):
    """An optional package of the ``fleet`` extra is not installed."""


def require(module: str) -> ModuleType:
    """Import *module* (``nats``, ``prometheus_client``...) or explain how to get it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is None or exc.name.split(".")[0] != top:
            raise
        package = _PACKAGES.get(top, top)
        raise MissingDependency(
            f"{package} is not installed (pip install 'qmpevents[fleet]')") from None
