"""An asyncio QMP server on the sans-IO protocol core.

* :class:`QMPServer` -- listeners (``unix:PATH``, ``tcp:HOST:PORT``), one
  monitor per connection, events encoded once and broadcast to negotiated
  monitors, bounded output per monitor (see :mod:`qmpevents.server.monitor`);
* :class:`CommandTable` / :class:`CommandSpec` / :class:`Param` -- commands
  with QAPI-style argument checking and QEMU's error texts;
* :func:`server_context` / :func:`client_context` -- TLS contexts from a
  directory laid out as QEMU's ``tls-creds-x509``.
"""

from qmpevents.addresses import (
    Address,
    AddressError,
    TcpAddress,
    UnixAddress,
    check_allowed,
    parse_address,
)
from qmpevents.protocol import QUEUE_DEPTH
from qmpevents.server.arguments import Param, SchemaChecker, check_arguments
from qmpevents.server.broadcaster import Broadcaster
from qmpevents.server.dispatch import CommandSpec, CommandTable
from qmpevents.server.monitor import Monitor
from qmpevents.server.server import DEFAULT_MAX_OUTBOUND, QMPServer, ServerOptions
from qmpevents.tls import TLSCredsError, client_context, server_context

__all__ = [
    "DEFAULT_MAX_OUTBOUND",
    "QUEUE_DEPTH",
    "Address",
    "AddressError",
    "Broadcaster",
    "CommandSpec",
    "CommandTable",
    "Monitor",
    "Param",
    "QMPServer",
    "SchemaChecker",
    "ServerOptions",
    "TLSCredsError",
    "TcpAddress",
    "UnixAddress",
    "check_allowed",
    "check_arguments",
    "client_context",
    "parse_address",
    "server_context",
]
