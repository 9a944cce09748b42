"""``qmpevents exec`` as a process against the simulator: replies, errors, exit statuses."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cli_process import one_line_error, run, run_on_pty

from qmpevents.sim import SimulatedVM

pytestmark = pytest.mark.subprocess


@pytest.fixture
async def vm() -> AsyncIterator[SimulatedVM]:
    async with SimulatedVM(drives=["ide0-hd1,werror=report"], name="exec-vm") as machine:
        yield machine


async def test_reply_is_one_json_line_when_piped(vm: SimulatedVM) -> None:
    status, out, err = await run("exec", vm.socket_path, "query-status")
    assert status == 0, err
    assert out.count("\n") == 1
    assert json.loads(out) == {"status": "running", "singlestep": False, "running": True}


async def test_reply_is_pretty_on_a_terminal(vm: SimulatedVM) -> None:
    status, out = await asyncio.to_thread(run_on_pty, "exec", vm.socket_path, "query-status")
    assert status == 0
    assert out == (
        '{\n  "status": "running",\n  "singlestep": false,\n  "running": true\n}\n')


async def test_key_value_arguments_are_json_when_they_parse(vm: SimulatedVM) -> None:
    seen: list[tuple[str, object]] = []
    vm.machine.subscribe(lambda message: seen.append((message["event"], message.get("data"))))
    status, out, err = await run("exec", f"unix:{vm.socket_path}", "x-sim-rtc-change",
                                 "offset=78")
    assert (status, out, err) == (0, "{}\n", "")
    status, out, err = await run("exec", vm.socket_path, "x-sim-io-error",
                                 "device=ide0-hd1", "operation=write")
    assert status == 0, err
    assert [name for name, _ in seen] == ["RTC_CHANGE", "BLOCK_IO_ERROR"]


async def test_args_json(vm: SimulatedVM) -> None:
    status, out, err = await run("exec", vm.socket_path, "x-sim-io-error",
                                 "--args", '{"device": "ide0-hd1", "operation": "read"}')
    assert (status, out, err) == (0, "{}\n", "")


async def test_qmp_error_exits_1_with_class_and_description(vm: SimulatedVM) -> None:
    status, out, err = await run("exec", vm.socket_path, "no-such-command")
    assert status == 1 and out == ""
    one_line_error(err)
    assert "CommandNotFound" in err and "no-such-command" in err
    status, out, err = await run("exec", vm.socket_path, "x-sim-rtc-change", "offset=soon")
    assert status == 1
    one_line_error(err)
    assert "GenericError" in err and "offset" in err


@pytest.mark.parametrize("args", [
    ("exec",),                                           # no target
    ("exec", "/tmp/x.sock"),                             # no command
    ("exec", "/tmp/x.sock", "stop", "novalue"),          # not KEY=VALUE
    ("exec", "/tmp/x.sock", "stop", "--args", "{nope"),  # bad JSON
    ("exec", "/tmp/x.sock", "stop", "--args", "[1]"),    # not an object
    ("exec", "tcp:nohost", "stop"),                      # bad address
    ("exec", "/tmp/x.sock", "stop", "--timeout", "-1"),
    ("exec", "/tmp/x.sock", "stop", "--bogus"),
])
async def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    status, out, err = await run(*args)
    assert status == 2 and out == ""
    one_line_error(err.split("\n", 1)[1] if err.startswith("usage:") else err)


async def test_a_missing_command_is_the_only_argument_named_required() -> None:
    """The usage error said 'required: COMMAND, KEY=VALUE'; KEY=VALUE is optional."""
    status, _, err = await run("exec", "/tmp/x.sock")
    assert status == 2
    assert err.rstrip().endswith("error: the following arguments are required: COMMAND")


async def test_unreachable_exits_3(tmp_path: object) -> None:
    status, out, err = await run("exec", "/tmp/qmpev-no-such.sock", "query-status")
    assert status == 3 and out == ""
    one_line_error(err)
    assert "cannot reach" in err
    status, _, err = await run("exec", "tcp:127.0.0.1:1", "query-status")
    assert status == 3
    one_line_error(err)


async def test_a_busy_monitor_is_named_once(tmp_path: Path) -> None:
    """A socket that accepts and stays silent, as QEMU's does for a second client."""
    path = str(tmp_path / "busy.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        status, out, err = await run("exec", path, "query-status")
    assert status == 3 and out == ""
    one_line_error(err)
    assert err.startswith(f"qmpevents exec: unix:{path}: connected, but no QMP greeting")
    assert err.count(path) == 1



async def test_quit_gets_its_reply(vm: SimulatedVM) -> None:
    status, out, err = await run("exec", vm.socket_path, "quit")
    assert (status, out, err) == (0, "{}\n", "")
    assert await vm.wait_closed() == 0
