"""``qmpevents serve`` as a process: listening, exit statuses, signals, bad flags."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from qmp_raw import names, reply

from qmpevents.testing import RawQMP

pytestmark = pytest.mark.subprocess

DEADLINE = 10.0
QMPEVENTS = (sys.executable, "-c", "import sys; from qmpevents.cli import main; sys.exit(main())")


@asynccontextmanager
async def serve(*args: str, cwd: str | None = None) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start ``qmpevents serve``; ready once it has printed its listening lines."""
    proc = await asyncio.create_subprocess_exec(
        *QMPEVENTS, "serve", *args, cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stderr.readline(), DEADLINE)
        assert b"QMP listening on" in line, line
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _path(tmp: str, name: str) -> str:
    return os.path.join(tmp, name)


async def test_sigterm_shuts_down_cleanly_and_removes_the_socket(short_tmp: str) -> None:
    sock = _path(short_tmp, "a.sock")
    async with serve("--qmp", f"unix:{sock}", "--profile", "qemu-7.2") as proc:
        client = await RawQMP.unix(sock)
        await client.negotiate()
        proc.send_signal(signal.SIGTERM)
        event = await client.event()
        assert event["event"] == "SHUTDOWN"
        assert event["data"] == {"guest": False, "reason": "host-signal"}
        assert await client.eof() == b""
        assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
    assert not os.path.exists(sock)


@pytest.mark.parametrize("profile", ["seed", "qemu-7.2"])
async def test_name_names_the_vm_for_watch_in_both_profiles(short_tmp: str,
                                                             profile: str) -> None:
    """A newcomer's finding: ``serve --name foo`` had no effect in the seed profile
    (no query-name), so watch named the VM by its socket's stem."""
    from cli_process import running

    sock = _path(short_tmp, "named.sock")
    # --multi-client: the seed profile's default, and qemu-7.2's needs it for two clients
    async with serve("--qmp", f"unix:{sock}", "--profile", profile, "--name", "foo",
                     "--multi-client"):
        client = await RawQMP.unix(sock)
        await client.negotiate()
        _, answer = await client.execute("query-name")
        assert json.loads(answer) == {"return": {"name": "foo"}}
        async with running("watch", sock, "--json", "--count", "1", "-v") as cli:
            await cli.wait_line("connected", "err")  # subscribed before it negotiated
            await client.execute("stop")
            assert await cli.wait() == 0
        await client.close()
    assert cli.out[0].startswith('{"vm": "foo", ')
    assert json.loads(cli.out[0])["event"] == "STOP"


async def test_sigint_too(short_tmp: str) -> None:
    sock = _path(short_tmp, "b.sock")
    async with serve("--qmp", f"unix:{sock}") as proc:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
    assert not os.path.exists(sock)


async def test_quit_exits_zero(short_tmp: str) -> None:
    sock = _path(short_tmp, "c.sock")
    async with serve("--qmp", f"unix:{sock}", "--no-shutdown") as proc:
        client = await RawQMP.unix(sock)
        await client.negotiate()
        events, line = await client.execute("quit")
        assert names(events) == ["SHUTDOWN"] and reply(line) == {"return": {}}
        assert await client.eof() == b""
        assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
    assert not os.path.exists(sock)


async def test_guest_shutdown_exits_zero_and_default_socket(short_tmp: str) -> None:
    sock = _path(short_tmp, "qmp.sock")
    async with serve("-S", "--drive", "d0,werror=stop", cwd=short_tmp) as proc:
        client = await RawQMP.unix(sock)  # the default is unix:./qmp.sock
        await client.negotiate()
        _, line = await client.execute("query-status")
        assert reply(line)["return"]["status"] == "prelaunch"
        await client.ok("cont")
        assert names(await client.ok("x-sim-guest-shutdown")) == ["SHUTDOWN"]
        assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
    assert not os.path.exists(sock)


async def test_tcp_and_vnc_listeners(short_tmp: str) -> None:
    password = Path(short_tmp, "pw")
    password.write_text("secret\n")
    async with serve("--qmp", "tcp:127.0.0.1:0", "--vnc", "127.0.0.1:0",
                     "--vnc-password-file", str(password)) as proc:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), DEADLINE)
        assert line.startswith(b"qmpevents serve: VNC listening on port 5900")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--qmp", "udp:1"], "expected unix:PATH or tcp:HOST:PORT"),
    (["--qmp", "tcp:10.1.2.3:4444"], "non-loopback"),
    (["--drive", "d,werror=bogus"], "'bogus' invalid write error action"),
    (["--drive", "d", "--drive", "d"], "Duplicate ID 'd' for drive"),
    (["--profile", "qemu-9"], "invalid choice"),
    (["--vnc", "nodisplay"], "expected HOST:DISPLAY"),
    (["--vnc-password-file", "/nonexistent"], "needs --vnc"),
    (["--vnc", "127.0.0.1:0", "--vnc-password-file", "/nonexistent/pw"], "No such file"),
    (["--powerdown-delay", "-1"], "seconds >= 0"),
    (["--bogus"], "unrecognized arguments"),
])
async def test_bad_flags_exit_2_with_one_line(args: list[str], message: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *QMPEVENTS, "serve", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), DEADLINE)
    assert proc.returncode == 2
    assert out == b""
    assert err.count(b"\n") == 1 and message.encode() in err, err


async def test_address_in_use_exits_1(short_tmp: str) -> None:
    sock = _path(short_tmp, "d.sock")
    async with serve("--qmp", f"unix:{sock}"):
        proc = await asyncio.create_subprocess_exec(
            *QMPEVENTS, "serve", "--qmp", f"unix:{sock}",
            stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), DEADLINE)
        assert proc.returncode == 1
        assert b"another process is listening" in err
