"""Targets on the command line: the library's target strings, plus TLS options.

Expansion and naming live in :mod:`qmpevents.client.targets` (re-exported
here for the commands); this module adds what only a command line has.
"""

from __future__ import annotations

import argparse
import ssl
from dataclasses import dataclass
from typing import Any

from qmpevents.client.targets import (
    Target,
    TargetError,
    display_name,
    expand,
    is_pattern,
    split_name,
)
from qmpevents.tls import TLSCredsError, client_context


def describe_error(exc: BaseException) -> str:
    """Why a connection failed, in a few words (``No such file or directory``)."""
    if isinstance(exc, TimeoutError):
        # "ADDRESS: what did not happen within N s": the what, not the address again
        _, sep, what = str(exc).partition(": ")
        return f"timed out ({what})" if sep and what else "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tls-creds DIR`` / ``--tls-hostname NAME`` for ``tcp:`` targets."""
    parser.add_argument("--tls-creds", metavar="DIR",
                        help="talk TLS to tcp: targets with QEMU's tls-creds-x509 files in DIR "
                             "(ca-cert.pem; client-cert.pem/client-key.pem if the server "
                             "verifies peers)")
    parser.add_argument("--tls-hostname", metavar="NAME",
                        help="the name the server certificate must carry (default: the host)")


def client_options(args: argparse.Namespace) -> ClientOptions:
    """How to reach targets: TLS settings for ``tcp:`` targets (a usage error if broken)."""
    if args.tls_creds is None:
        if args.tls_hostname is not None:
            raise TargetError("--tls-hostname needs --tls-creds")
        return ClientOptions()
    try:
        context = client_context(args.tls_creds)
    except (TLSCredsError, ssl.SSLError) as exc:
        raise TargetError(str(exc)) from None
    return ClientOptions(context, args.tls_hostname)


@dataclass(frozen=True)
class ClientOptions:
    """TLS settings; applied to ``tcp:`` targets only (unix sockets are never TLS)."""

    ssl: ssl.SSLContext | None = None
    server_hostname: str | None = None

    def for_address(self, address: str) -> dict[str, Any]:
        if self.ssl is None or not address.startswith("tcp:"):
            return {}
        return {"ssl": self.ssl, "server_hostname": self.server_hostname}


__all__ = ["ClientOptions", "Target", "TargetError", "add_tls_arguments", "client_options",
           "describe_error", "display_name", "expand", "is_pattern", "split_name"]
