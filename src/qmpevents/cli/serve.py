"""``qmpevents serve``: run a simulated VM with a QMP server (and optionally VNC).

The option names are a contract other tools depend on; they follow QEMU's
(``-qmp``, ``-vnc``, ``-drive``, ``-no-shutdown``, ``-S``).  The process ends
as QEMU does: exit 0 after ``quit`` or a guest shutdown without
``--no-shutdown``, and after SIGTERM/SIGINT (which first send
SHUTDOWN(host-signal) to the monitors).  Socket files are removed on the way out.

``--tls-creds DIR`` serves QMP over TLS on every ``tcp:`` listener from a
directory laid out as QEMU's ``tls-creds-x509`` (``ca-cert.pem``,
``server-cert.pem``, ``server-key.pem``); ``--tls-verify-peer`` then requires
a client certificate signed by ``ca-cert.pem``, as QEMU's ``verify-peer=on``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

from qmpevents.catalog import DEFAULT_PROFILE, PROFILES
from qmpevents.cli.argtypes import non_negative_float, positive_int
from qmpevents.server import DEFAULT_MAX_OUTBOUND, Address, AddressError, parse_address
from qmpevents.sim.block import DriveConfig, parse_drive
from qmpevents.sim.vm import SimulatedVM, parse_vnc
from qmpevents.tls import server_context

DEFAULT_QMP = "unix:./qmp.sock"


def _address(text: str) -> Address:
    try:
        return parse_address(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _drive(text: str) -> DriveConfig:
    try:
        return parse_drive(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _vnc(text: str) -> str:
    try:
        parse_vnc(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _mode(text: str) -> int:
    """An octal permission mode, 0 to 0777: nothing else means a socket mode."""
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an octal mode from 0 to 0777, "
                                         "like 0600")
    return mode


EXAMPLES = """\
examples:
  qmpevents serve --qmp unix:/tmp/vm.sock
  qmpevents serve --qmp unix:/tmp/vm.sock --qmp tcp:127.0.0.1:4444 --profile qemu-7.2
  qmpevents serve --drive ide0-hd0,werror=stop --drive ide0-hd1,rerror=ignore --no-shutdown -S
  qmpevents serve --vnc 127.0.0.1:1 --vnc-password-file pw.txt
  qmpevents exec /tmp/vm.sock x-sim-io-error device=ide0-hd0 operation=write

exit status: 0 after quit, a guest shutdown (without --no-shutdown) or
SIGTERM/SIGINT; 1 when an address cannot be bound; 2 on usage errors
"""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="run a simulated VM that emits QMP events",
        description="Run a simulated VM serving QMP (and VNC) with QEMU's semantics. "
                    "Simulation controls: x-sim-io-error, x-sim-rtc-change, "
                    "x-sim-guest-reset, x-sim-guest-shutdown.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qmp", action="append", type=_address,
                        metavar="unix:PATH|tcp:HOST:PORT[,pretty=on]",
                        help=f"QMP listener, repeatable (default {DEFAULT_QMP}); pretty=on "
                             "writes QEMU's pretty-printed JSON (QEMU's -qmp-pretty)")
    parser.add_argument("--vnc", type=_vnc, metavar="HOST:DISPLAY",
                        help="VNC listener on port 5900+DISPLAY")
    parser.add_argument("--vnc-connections", type=positive_int, metavar="N",
                        help="at most N VNC clients connecting and N connected, as QEMU's "
                             "-vnc ...,connections=N (default 32)")
    parser.add_argument("--vnc-password-file", type=Path, metavar="FILE",
                        help="enable VNC authentication with the password in FILE "
                             "(an empty file: every login fails until change-vnc-password)")
    parser.add_argument("--drive", action="append", type=_drive, default=[],
                        metavar="ID[,werror=A][,rerror=A][,media=cdrom]",
                        help="a drive; actions ignore|report|stop|enospc "
                             "(default werror=enospc, rerror=report); media=cdrom: an "
                             "empty ide-cd drive (eject, blockdev-change-medium)")
    parser.add_argument("--no-shutdown", action="store_true",
                        help="a guest shutdown stops the VM instead of exiting")
    parser.add_argument("-S", dest="start_paused", action="store_true",
                        help="start in prelaunch (paused) state")
    parser.add_argument("--profile", choices=PROFILES, default=DEFAULT_PROFILE,
                        help="events as the spec says (seed) or as QEMU 7.2 emits them")
    parser.add_argument("--name", default=None,
                        help="the VM's name: query-name's answer in both profiles (watch "
                             "and record show the VM under it), HMP 'info name' in the "
                             "qemu-7.2 profile, the VNC desktop name; none by default, as "
                             "QEMU (then watch names the VM by its socket's path)")
    parser.add_argument("--powerdown-delay", type=non_negative_float, default=1.0,
                        metavar="SECONDS",
                        help="how long the guest takes to shut down after system_powerdown")
    parser.add_argument("--ignore-acpi", action="store_true",
                        help="the guest ignores system_powerdown (no guest OS)")
    clients = parser.add_mutually_exclusive_group()
    clients.add_argument("--single-client", action="store_true",
                         help="one client per QMP socket at a time, as QEMU's chardev "
                              "(the default with --profile qemu-7.2)")
    clients.add_argument("--multi-client", action="store_true",
                         help="several clients per QMP socket at once "
                              "(the default with --profile seed)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow TCP listeners on non-loopback addresses (no authentication!)")
    parser.add_argument("--socket-mode", type=_mode, default=0o600, metavar="OCTAL",
                        help="mode of created unix sockets (default 0600)")
    parser.add_argument("--max-outbound", type=positive_int, default=DEFAULT_MAX_OUTBOUND,
                        metavar="BYTES",
                        help="unsent output after which a monitor that does not read is "
                             f"disconnected (default {DEFAULT_MAX_OUTBOUND})")
    parser.add_argument("--tls-creds", type=Path, metavar="DIR",
                        help="serve QMP over TLS on tcp: listeners with the certificates in DIR "
                             "(QEMU's tls-creds-x509 names: ca-cert.pem, server-cert.pem, "
                             "server-key.pem)")
    parser.add_argument("--tls-verify-peer", action="store_true",
                        help="with --tls-creds: require a client certificate signed by "
                             "DIR/ca-cert.pem (QEMU's verify-peer=on)")
    parser.set_defaults(handler=run)


def _fail(message: str, status: int) -> int:
    sys.stderr.write(f"qmpevents serve: error: {message}\n")
    return status


def run(args: argparse.Namespace) -> int:
    password: str | None = None
    if args.vnc_connections is not None and args.vnc is None:
        return _fail("--vnc-connections needs --vnc", 2)
    if args.vnc_password_file is not None:
        if args.vnc is None:
            return _fail("--vnc-password-file needs --vnc", 2)
        try:
            password = args.vnc_password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            return _fail(f"--vnc-password-file: {exc.strerror}: {args.vnc_password_file}", 2)
    tls: ssl.SSLContext | None = None
    if args.tls_verify_peer and args.tls_creds is None:
        return _fail("--tls-verify-peer needs --tls-creds", 2)
    if args.tls_creds is not None:
        try:
            tls = server_context(args.tls_creds, verify_peer=args.tls_verify_peer)
        except (OSError, ValueError) as exc:  # TLSCredsError, ssl.SSLError
            return _fail(f"--tls-creds: {exc}", 2)
    try:
        vm = SimulatedVM(
            qmp=args.qmp or [parse_address(DEFAULT_QMP)], drives=args.drive,
            no_shutdown=args.no_shutdown, start_paused=args.start_paused, profile=args.profile,
            vnc=args.vnc, vnc_password=password, vnc_connections=args.vnc_connections,
            name=args.name,
            powerdown_delay=args.powerdown_delay, ignore_acpi=args.ignore_acpi,
            single_client=args.single_client, multi_client=args.multi_client,
            allow_remote=args.allow_remote,
            socket_mode=args.socket_mode, max_outbound=args.max_outbound, tls=tls)
    except ValueError as exc:  # AddressError (non-loopback), duplicate drive id
        return _fail(str(exc), 2)
    try:
        return asyncio.run(_serve(vm))
    except OSError as exc:  # a bind that failed: say where (asyncio's error does not)
        named = [str(address) for address in vm.addresses
                 if getattr(address, "path", None) == exc.filename]
        where = (named[0] if named else exc.filename
                 or " or ".join(str(address) for address in vm.addresses))
        return _fail(f"cannot listen on {where}: {exc.strerror or exc}", 1)


async def _serve(vm: SimulatedVM) -> int:
    loop = asyncio.get_running_loop()
    await vm.start()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, vm.shutdown_by_signal)
    try:
        for address in vm.addresses:
            sys.stderr.write(f"qmpevents serve: QMP listening on {address}\n")
        if vm.vnc_port is not None:
            sys.stderr.write(f"qmpevents serve: VNC listening on port {vm.vnc_port}\n")
        sys.stderr.flush()
        status = await vm.wait_closed()
    finally:
        await vm.close()
    return status if status is not None else 0
