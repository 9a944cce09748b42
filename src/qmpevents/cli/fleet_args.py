"""Command-line pieces shared by the fleet commands: durations, sizes, NATS credentials."""

from __future__ import annotations

import argparse
import datetime
import re
import ssl
import time

from qmpevents.fleet.broker import BrokerOptions, CredentialsError, read_user_password
from qmpevents.tls import TLSCredsError, client_context

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"(\d+)([kmgt]?)(?:i?b)?", re.IGNORECASE)


def duration(text: str) -> float:
    """``90``, ``30s``, ``10m``, ``2h``, ``7d``: seconds (> 0)."""
    found = _DURATION.fullmatch(text.strip())
    if found is None or float(found.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration such as 30s, 10m, 7d")
    return float(found.group(1)) * _UNITS[found.group(2)]


def size(text: str) -> int:
    """``1048576``, ``512M``, ``1G``, ``64KiB``: bytes (> 0)."""
    found = _SIZE.fullmatch(text.strip())
    if found is None or int(found.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 512M or 1G")
    return int(found.group(1)) * _SIZE_UNITS[found.group(2).lower()]


def since(text: str) -> float | str:
    """``all``, a duration back from now (``10m``), or a time (``2026-12-01T15:00:00``)."""
    if text == "all":
        return "all"
    try:
        return time.time() - duration(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected all, a duration (10m) or a time (2026-12-01T15:00:00)"
        ) from None
    return when.timestamp()  # a naive time is local time


def add_listen_argument(parser: argparse.ArgumentParser, help: str,
                        default: str | None = None) -> None:
    """``--listen HOST:PORT``: where the Prometheus metrics are served."""
    parser.add_argument("--listen", default=default, metavar="HOST:PORT", help=help)


def add_credentials_arguments(parser: argparse.ArgumentParser, *, tls_prefix: str) -> None:
    """NATS authentication; TLS as ``--{tls_prefix}tls-creds DIR``."""
    group = parser.add_argument_group("NATS credentials")
    group.add_argument("--creds", metavar="FILE", help="a NATS .creds file (JWT and nkey seed)")
    group.add_argument("--nkey", metavar="FILE", help="an nkey seed file")
    group.add_argument("--user-password-file", metavar="FILE",
                       help="a file with the user on line 1 and the password on line 2")
    if tls_prefix:
        group.add_argument(f"--{tls_prefix}tls-creds", metavar="DIR",
                           help="TLS to NATS with ca-cert.pem (client-cert.pem and "
                                "client-key.pem if the server verifies clients) in DIR")
        group.add_argument(f"--{tls_prefix}tls-hostname", metavar="NAME",
                           help="the name the NATS server certificate must carry")


def broker_options(args: argparse.Namespace, servers: list[str], *, tls_prefix: str,
                   name: str) -> BrokerOptions:
    """The connection options the arguments ask for; ValueError on a usage error."""
    prefix = tls_prefix.replace("-", "_")
    tls_dir: str | None = getattr(args, f"{prefix}tls_creds")
    tls_hostname: str | None = getattr(args, f"{prefix}tls_hostname")
    context: ssl.SSLContext | None = None
    if tls_dir is not None:
        try:
            context = client_context(tls_dir)
        except (TLSCredsError, ssl.SSLError) as exc:
            raise CredentialsError(str(exc)) from None
    elif tls_hostname is not None:
        raise CredentialsError(f"--{tls_prefix}tls-hostname needs --{tls_prefix}tls-creds")
    user = password = None
    if args.user_password_file is not None:
        user, password = read_user_password(args.user_password_file)
    return BrokerOptions(servers, creds=args.creds, nkey=args.nkey, user=user,
                         password=password, tls=context, tls_hostname=tls_hostname, name=name)
