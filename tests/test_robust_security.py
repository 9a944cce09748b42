"""Security defaults: socket modes, loopback only, TLS (as QEMU's tls-creds-x509),
VNC passwords never logged, and a simulator whose commands run no program and
open no path.

Certificates are made per session with the ``openssl`` command line.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import shutil
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pki_support import make_pki

import qmpevents
from qmpevents.addresses import AddressError, TcpAddress
from qmpevents.sim.commands import build_command_table
from qmpevents.sim.vm import SimulatedVM
from qmpevents.testing import RawQMP
from qmpevents.tls import client_context, server_context
from qmpevents.vnc_client import AuthFailed, RfbClient

QMPEVENTS = (sys.executable, "-c", "import sys; from qmpevents.cli import main; sys.exit(main())")
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """QEMU-layout directories (see :func:`pki_support.make_pki`)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


async def _tls_vm(pki: dict[str, Path], verify_peer: bool) -> SimulatedVM:
    vm = SimulatedVM(qmp=["tcp:127.0.0.1:0"],
                     tls=server_context(pki["server"], verify_peer=verify_peer))
    await vm.start()
    return vm


def _port(vm: SimulatedVM) -> int:
    address = vm.addresses[0]
    assert isinstance(address, TcpAddress)
    return address.port


@pytest.mark.subprocess
async def test_tls_server_certificate_and_events(pki: dict[str, Path]) -> None:
    vm = await _tls_vm(pki, verify_peer=False)
    try:
        port = _port(vm)
        async with qmpevents.connect(f"tcp:127.0.0.1:{port}", ssl=client_context(pki["anonymous"]),
                                     server_hostname="localhost") as qmp:
            async with qmp.expect("STOP"):
                await qmp.execute("stop")
            assert (await qmp.execute("query-status"))["status"] == "paused"
        # The IP address is in the certificate too: no server_hostname needed.
        async with qmpevents.connect(f"tcp:127.0.0.1:{port}",
                                     ssl=client_context(pki["anonymous"])) as qmp:
            await qmp.execute("query-status")
        # A client that trusts another CA refuses the server.
        with pytest.raises(ssl.SSLCertVerificationError):
            await qmpevents.connect(f"tcp:127.0.0.1:{port}", ssl=client_context(pki["other"]))
        # A plain-text client gets no greeting: nothing readable comes back.
        plain = await RawQMP.tcp("127.0.0.1", port)
        await plain.send(b'{"execute": "qmp_capabilities"}\n')
        data = await asyncio.wait_for(plain.reader.read(), 5)
        assert b"QMP" not in data
        await plain.close()
    finally:
        await vm.close()


@pytest.mark.subprocess
async def test_tls_verify_peer_requires_a_client_certificate(pki: dict[str, Path]) -> None:
    vm = await _tls_vm(pki, verify_peer=True)
    try:
        port = _port(vm)
        async with qmpevents.connect(f"tcp:127.0.0.1:{port}",
                                     ssl=client_context(pki["client"])) as qmp:
            await qmp.execute("query-status")
        for who in ("anonymous", "stranger"):
            with pytest.raises((ssl.SSLError, ConnectionError, qmpevents.ConnectionLost,
                                TimeoutError)):
                qmp = await qmpevents.connect(f"tcp:127.0.0.1:{port}", connect_timeout=5,
                                              ssl=client_context(pki[who]))
                await qmp.execute("query-status")  # TLS 1.3: refused after the handshake
        assert vm.server.monitors == 0
    finally:
        await vm.close()


@pytest.mark.subprocess
def test_tls_only_on_tcp_and_needs_qemus_file_names(tmp_path: Path,
                                                    pki: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="TLS is for tcp"):
        qmpevents.QMPClient("unix:/tmp/x.sock", ssl=client_context(pki["client"]))
    with pytest.raises(ValueError, match=r"server-cert\.pem"):
        server_context(tmp_path)
    for file in ("server-cert.pem", "server-key.pem"):
        shutil.copy(pki["server"] / file, tmp_path)
    server_context(tmp_path)  # enough without verify-peer
    with pytest.raises(ValueError, match=r"ca-cert\.pem"):
        server_context(tmp_path, verify_peer=True)


@pytest.mark.subprocess
async def test_cli_serve_tls_creds_and_verify_peer(pki: dict[str, Path]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *QMPEVENTS, "serve", "--qmp", "tcp:127.0.0.1:0", "--tls-creds", str(pki["server"]),
        "--tls-verify-peer", stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stderr.readline(), 10)
        assert b"QMP listening on tcp:127.0.0.1:" in line, line
        port = int(line.rsplit(b":", 1)[1])
        async with qmpevents.connect(f"tcp:127.0.0.1:{port}",
                                     ssl=client_context(pki["client"])) as qmp:
            assert (await qmp.execute("query-status"))["running"] is True
    finally:
        proc.kill()
        await proc.wait()
    bad = await asyncio.create_subprocess_exec(
        *QMPEVENTS, "serve", "--tls-creds", "/nonexistent", stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(bad.communicate(), 10)
    assert bad.returncode == 2 and b"--tls-creds" in err


# -- sockets and addresses ---------------------------------------------------

async def test_unix_socket_is_0600_even_with_umask_0_and_configurable() -> None:
    old = os.umask(0)
    try:
        async with SimulatedVM() as vm:
            assert stat.S_IMODE(os.stat(vm.socket_path).st_mode) == 0o600
        async with SimulatedVM(socket_mode=0o660) as vm:
            assert stat.S_IMODE(os.stat(vm.socket_path).st_mode) == 0o660
    finally:
        os.umask(old)


@pytest.mark.subprocess
async def test_non_loopback_listeners_are_refused_unless_allowed() -> None:
    for address in ("tcp:0.0.0.0:0", "tcp:[::]:0", "tcp:192.0.2.1:4444"):
        with pytest.raises(AddressError, match="non-loopback"):
            SimulatedVM(qmp=[address])
    with pytest.raises(ValueError, match="non-loopback"):
        SimulatedVM(vnc="0.0.0.0:0", vnc_port=0)
    async with SimulatedVM(qmp=["tcp:0.0.0.0:0"], vnc="0.0.0.0:0", vnc_port=0,
                           allow_remote=True) as vm:
        assert vm.vnc_port
    proc = await asyncio.create_subprocess_exec(
        *QMPEVENTS, "serve", "--qmp", "tcp:0.0.0.0:0", stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 2 and b"non-loopback" in err


# -- secrets -------------------------------------------------------------------

SECRET = "Zq9!vnc"
NEW_SECRET = "Xw7?vnc"


async def test_vnc_passwords_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with SimulatedVM(vnc="127.0.0.1:0", vnc_port=0, vnc_password=SECRET) as vm:
        assert vm.vnc_port is not None
        async with qmpevents.connect(vm.socket_path) as qmp:
            for password in (SECRET, "wrong", ""):
                client = await RfbClient.connect("127.0.0.1", vm.vnc_port)
                try:
                    await client.read_version()
                    await client.send_version(8)
                    if password == SECRET:
                        await client.security(password)
                        await client.client_init()
                    else:
                        with pytest.raises(AuthFailed):
                            await client.security(password)
                finally:
                    await client.close()
            await qmp.execute("change-vnc-password", {"password": NEW_SECRET})
            with pytest.raises(qmpevents.QMPError):
                await qmp.execute("change-vnc-password", {"password": 12345678})
    assert caplog.records, "nothing was logged at all"
    for secret in (SECRET, NEW_SECRET, "12345678"):
        assert secret not in caplog.text


# -- the simulator's commands --------------------------------------------------

async def test_no_simulator_command_takes_a_path_or_runs_a_program(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """By design: list every command and its arguments; then run each one with
    program execution and file opening forbidden."""
    from qmpevents.protocol import Command
    from qmpevents.sim.machine import Machine

    machine = Machine(drives=[])
    table = build_command_table(machine)
    arguments = {name: dict(spec.schema) for name, spec in table._specs.items()}
    names = {param for schema in arguments.values() for param in schema}
    pathlike = ("path", "file", "dir", "fd", "script", "cmd", "command", "program", "url",
                "uri", "exec")
    assert not [n for n in names if any(word in n.lower() for word in pathlike)], names
    # Free text (strings without an enum) goes only to names and secrets.
    free_text = {name for schema in arguments.values() for name, param in schema.items()
                 if param.type == "string" and param.enum is None}
    assert free_text <= {"device", "password"}, free_text

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a command tried to run or open something: {args!r}")

    for module, name in ((subprocess, "Popen"), (os, "system"), (os, "popen"),
                         (os, "execv"), (os, "execvp"), (os, "posix_spawn"), (os, "fork"),
                         (os, "open"), (builtins, "open")):
        monkeypatch.setattr(module, name, forbidden)
    samples = {"string": "/etc/passwd", "integer": 5, "boolean": True, "number": 1.5,
               "object": {"path": "/etc/passwd"}, "array": ["/etc/passwd"]}
    for name in arguments:
        if name == "quit":
            continue
        args = {param: spec.enum[0] if spec.enum else samples[spec.type]
                for param, spec in arguments[name].items()}
        try:
            table.execute(Command(name, args))
        except qmpevents.QMPError:
            pass
        except Exception as exc:
            assert type(exc).__name__ == "CommandFailure", exc
    table.execute(Command("quit", {}))


def test_screendump_is_the_only_file_the_simulated_machine_opens() -> None:
    """The qemu-7.2 profile's screendump writes the file its client names, as QEMU's
    does (SECURITY.md says so); no other code of the machine or the server opens,
    reads or writes a file or runs a program, but for the server's own sockets (an
    attacker found the claim false: the test above builds a seed machine, without
    screendump)."""
    import ast

    import qmpevents.server
    import qmpevents.sim

    touching = {"open", "Popen", "run", "system", "popen", "read_bytes", "write_bytes",
                "read_text", "write_text", "unlink", "rename", "remove", "execv", "spawn",
                "rmtree", "mkdtemp", "chmod"}
    found = set()
    for package in (qmpevents.sim, qmpevents.server):
        assert package.__file__ is not None
        for path in Path(package.__file__).parent.glob("*.py"):
            tree = ast.parse(path.read_text())
            for function in ast.walk(tree):
                if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for call in ast.walk(function):
                    if isinstance(call, ast.Call):
                        callee = call.func
                        name = callee.attr if isinstance(callee, ast.Attribute) else (
                            callee.id if isinstance(callee, ast.Name) else "")
                        if name in touching:
                            found.add((path.name, function.name, name))
    assert found == {("display.py", "screendump", "open"),
                     # the server's own unix socket files (chosen by whoever starts it)
                     ("listeners.py", "_remove_stale", "unlink"),
                     ("listeners.py", "_bind_unix", "chmod"),
                     ("listeners.py", "close", "unlink"),
                     # the VM's own temporary directory, for its default socket
                     ("vm.py", "__init__", "mkdtemp"),
                     ("vm.py", "close", "rmtree")}


@pytest.mark.slow
@pytest.mark.subprocess
async def test_cli_commands_talk_tls_with_qemus_creds_layout(pki: dict[str, Path]) -> None:
    """serve --tls-creds --tls-verify-peer; exec and watch --tls-creds reach it, plain does not."""
    from cli_process import joined, run, running

    vm = await _tls_vm(pki, verify_peer=True)
    try:
        target = f"tcp:127.0.0.1:{_port(vm)}"
        status, out, err = await run("exec", target, "query-status",
                                     "--tls-creds", str(pki["client"]))
        assert (status, err) == (0, "") and '"running"' in out
        async with running("watch", target, "--json", "--count", "1",
                           "--tls-creds", str(pki["client"]), "--tls-hostname",
                           "localhost") as watch:
            await joined(vm)
            vm.machine.stop()
            assert await watch.wait() == 0
        assert '"event": "STOP"' in watch.out[0]
        status, _, err = await run("exec", target, "query-status", "--timeout", "5")
        assert status == 3, err  # no TLS: no greeting, unreachable
        status, _, err = await run("exec", target, "query-status", "--tls-creds", "/nonexistent")
        assert status == 2 and "ca-cert.pem" in err
    finally:
        await vm.close()
