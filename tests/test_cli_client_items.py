"""The CLI details of issue 14: VM names, waiting for directories, --exit-on-disconnect,
``exec --wait``, ``demo --json`` as pure JSON.  Subprocesses against simulated VMs (and
real QEMU for ``query-name``); every wait is on a line or an exit, with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from pathlib import Path

import pytest
from cli_process import DEADLINE, joined, run, running, short_dir
from qemu_support import QemuProcess, requires_qemu

import qmpevents
from qmpevents.client.targets import (
    Target,
    TargetError,
    _vm_name,
    expand,
    is_pattern,
    split_name,
)
from qmpevents.recording import RecordingWriter
from qmpevents.sim import SimulatedVM
from qmpevents.testing import RawQMP


@pytest.mark.parametrize(("path", "name"), [
    ("/run/qemu-server/101.qmp", "101"),
    ("/var/lib/libvirt/qemu/domain-3-web1/monitor.sock", "web1"),
    ("/srv/vms/db2/monitor.sock", "db2"),
    ("/tmp/qmpev-x/qmp.sock", "qmp"),
    ("/tmp/vm.sock", "vm"),
])
def test_a_vm_is_named_by_the_distinguishing_part_of_its_path(path: str, name: str) -> None:
    assert _vm_name(path) == name


def test_name_equals_address_targets() -> None:
    assert expand("web1=/tmp/x/monitor.sock") == [
        Target("unix:/tmp/x/monitor.sock", "web1", explicit=True, path="/tmp/x/monitor.sock")]
    assert expand("db=tcp:127.0.0.1:4444") == [Target("tcp:127.0.0.1:4444", "db", explicit=True)]
    assert split_name("/tmp/a=b/qmp.sock") == (None, "/tmp/a=b/qmp.sock")  # a path, not a name
    with pytest.raises(TargetError, match="a NAME is for one VM"):
        expand("all=/tmp/*.sock")


def test_a_trailing_slash_is_a_directory_even_before_it_exists(tmp_path: object) -> None:
    missing = f"{tmp_path}/not-yet/"
    assert is_pattern(missing) and expand(missing) == []


def test_a_directory_of_libvirt_domains_names_their_monitors() -> None:
    """watch /var/lib/libvirt/qemu/ found no VM: the sockets are one level down."""
    with short_dir("lv") as directory:
        for name in ("domain-3-web1", "domain-7-db"):
            os.mkdir(os.path.join(directory, name))
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(os.path.join(directory, name, "monitor.sock"))
            listener.close()  # a socket file stays: what the scan looks for
        os.mkdir(os.path.join(directory, "channel"))  # no monitor.sock: not a VM
        assert [(t.name, t.path) for t in expand(directory + "/")] == [
            ("web1", f"{directory}/domain-3-web1/monitor.sock"),
            ("db", f"{directory}/domain-7-db/monitor.sock")]


async def test_watch_names_libvirt_vms_and_explicit_names() -> None:
    with short_dir("names") as directory:
        libvirt = os.path.join(directory, "domain-3-web1")
        os.mkdir(libvirt)
        async with SimulatedVM(qmp=f"unix:{libvirt}/monitor.sock") as web1, \
                SimulatedVM(qmp=f"unix:{directory}/x.sock") as other, \
                running("watch", f"{libvirt}/monitor.sock", f"db={directory}/x.sock",
                        "--json", "--count", "2") as cli:
            await joined(web1)
            await joined(other)
            web1.machine.rtc_change(1)
            other.machine.rtc_change(2)
            assert await cli.wait() == 0
    assert {json.loads(line)["vm"] for line in cli.out} == {"web1", "db"}


async def test_watch_waits_for_a_directory_that_does_not_exist_yet() -> None:
    with short_dir("later") as directory:
        later = os.path.join(directory, "vms") + "/"
        async with running("watch", later, "--json", "--count", "1", "--rescan", "0.05") as cli:
            assert "no such directory yet; waiting" in await cli.line("err")
            os.mkdir(later)
            async with SimulatedVM(qmp=f"unix:{later}101.qmp") as vm:
                await cli.wait_line("101: attached", "err")
                await joined(vm)
                vm.machine.rtc_change(5)
                assert await cli.wait() == 0
        assert json.loads(cli.out[0])["vm"] == "101"


async def test_watch_says_when_a_glob_matches_nothing() -> None:
    with short_dir("glob") as directory:
        async with running("watch", f"{directory}/*.sock") as cli:
            line = await cli.line("err")
    assert "no VM socket matches yet; waiting" in line


async def test_watch_exit_on_disconnect() -> None:
    with short_dir("exit") as directory:
        vm = SimulatedVM(qmp=f"unix:{directory}/vm1.sock")
        await vm.start()
        async with running("watch", f"{directory}/vm1.sock", "--exit-on-disconnect") as cli:
            await joined(vm)
            await vm.close()
            assert await cli.wait() == 0
    assert any("vm1: disconnected; exiting" in line for line in cli.err)
    assert not any("retrying" in line for line in cli.err)  # it does not retry: it exits


async def test_exec_wait_prints_the_event_the_command_causes() -> None:
    async with SimulatedVM() as vm:
        status, out, err = await run("exec", vm.socket_path, "x-sim-guest-reset",
                                     "--wait", "reset")
        assert status == 0, err
        reply, event = out.splitlines()
        assert json.loads(reply) == {}
        assert json.loads(event)["event"] == "RESET"
        status, out, err = await run("exec", vm.socket_path, "query-status",
                                     "--wait", "RESET", "--timeout", "0.3")
    assert status == 1
    assert "no RESET event within 0.3 s" in err
    assert json.loads(out)["status"] == "running"  # the reply was still printed


async def test_exec_takes_key_value_arguments_after_its_options() -> None:
    """argparse took them for unknown arguments, said by 'qmpevents' (the
    newcomer's finding)."""
    async with SimulatedVM(drives=["ide0-hd1,werror=stop"]) as vm:
        status, out, err = await run("exec", vm.socket_path, "x-sim-io-error", "device=ide0-hd1",
                                     "--wait", "BLOCK_IO_ERROR", "operation=write")
        assert status == 0, err
        event = json.loads(out.splitlines()[1])
        assert event["data"]["operation"] == "write"
        status, out, err = await run("exec", vm.socket_path, "query-status", "--bogus")
    assert (status, out) == (2, "")
    assert err == "qmpevents exec: error: unrecognized arguments: --bogus\n"


async def test_exec_usage_says_arguments_are_optional() -> None:
    status, out, _ = await run("exec", "--help")
    assert status == 0
    assert "usage: qmpevents exec [options] TARGET COMMAND [KEY=VALUE ...]" in out


async def test_demo_json_writes_only_json_to_stdout() -> None:
    status, out, err = await run("demo", "--json", "--pace", "0", timeout=60)
    assert status == 0, err
    events = [json.loads(line) for line in out.splitlines()]  # every line is JSON
    assert {"STOP", "BLOCK_IO_ERROR", "VNC_CONNECTED"} <= {e["event"] for e in events}
    # watch --json's shape: the source VM first, then the event as sent
    assert {tuple(e)[:1] for e in events} == {("vm",)}
    assert {e["vm"] for e in events} == {"demo-vm"}
    assert all(set(e) - {"vm", "event", "timestamp"} <= {"data"} for e in events)
    assert "# simulated VM on" in err and "STOP" in err  # narration and summary


@requires_qemu
@pytest.mark.qemu
async def test_watch_names_a_real_vm_by_its_query_name() -> None:
    async with QemuProcess("-name", "qemu-web", extra_qmp=1) as vm, \
            qmpevents.connect(vm.extra_socket_paths[0]) as other, \
            running("watch", vm.socket_path, "--json", "--count", "1") as cli:
        line = None
        async with asyncio.timeout(DEADLINE):
            while line is None:  # until the watcher has negotiated: each stop/cont is an event
                await other.execute("cont", timeout=10)
                await other.execute("stop", timeout=10)
                with contextlib.suppress(TimeoutError):
                    line = await cli.line(timeout=0.2)
        assert await cli.wait() == 0
    assert json.loads(line)["vm"] == "qemu-web"


async def test_serve_names_the_address_it_cannot_listen_on() -> None:
    status, _, err = await run("serve", "--qmp", "unix:/nonexistent/x.sock")
    assert status == 1
    assert err.strip() == ("qmpevents serve: error: cannot listen on unix:/nonexistent/x.sock: "
                           "No such file or directory")


async def test_simulated_vm_names_the_path_it_cannot_listen_on() -> None:
    with pytest.raises(FileNotFoundError, match=r"/nonexistent/x\.sock"):
        async with SimulatedVM(qmp="unix:/nonexistent/x.sock"):
            pass


TOO_LONG = "/tmp/" + "x" * 120 + ".sock"  # beyond sun_path's 108 bytes


async def test_serve_says_why_a_socket_path_is_refused() -> None:
    """bind's error for a too-long path has no errno: its own text says why."""
    status, _, err = await run("serve", "--qmp", f"unix:{TOO_LONG}")
    assert status == 1
    assert err.strip() == (f"qmpevents serve: error: cannot listen on unix:{TOO_LONG}: "
                           "AF_UNIX path too long")


async def test_simulated_vm_says_why_a_socket_path_is_refused() -> None:
    with pytest.raises(OSError, match=f"AF_UNIX path too long: '{TOO_LONG}'"):
        async with SimulatedVM(qmp=f"unix:{TOO_LONG}"):
            pass


async def test_replay_vm_matching_nothing_says_so(tmp_path: Path) -> None:
    recording = tmp_path / "r.jsonl"
    async with SimulatedVM(qmp=f"unix:{tmp_path}/a.sock") as vm, \
            running("record", f"{tmp_path}/a.sock", "-o", str(recording), "--count", "1") as cli:
        await cli.wait_line("recording to", "err")
        vm.machine.rtc_change(1)
        assert await cli.wait() == 0
    status, out, err = await run("replay", str(recording), "--print", "--vm", "zzz")
    assert (status, out) == (1, "")
    assert "no event of VM zzz" in err
    status, out, _ = await run("replay", str(recording), "--print", "--vm", "a")
    assert status == 0 and "RTC_CHANGE" in out


REPLAYED = [b'{"timestamp": {"seconds": 1000, "microseconds": 0}, "event": "STOP"}',
            b'{"timestamp": {"seconds": 1002, "microseconds": 0}, "event": "RESUME"}',
            b'{"timestamp": {"seconds": 1004, "microseconds": 0}, "event": "STOP"}']


def _recording(path: Path) -> None:
    writer = RecordingWriter(str(path), fsync="never")
    for number, line in enumerate(REPLAYED):
        writer.write("vm1", line, received=1000.0 + 2 * number)
    writer.close()


async def test_replay_a_probe_does_not_use_up_the_timeline(tmp_path: Path) -> None:
    _recording(tmp_path / "r.jsonl")
    with short_dir("replay") as directory:
        sock = f"{directory}/r.sock"
        async with running("replay", str(tmp_path / "r.jsonl"), "--serve", f"unix:{sock}",
                           "--speed", "10") as cli:
            await cli.wait_line("waiting for a client", "err")
            status, _, err = await run("exec", sock, "query-status")  # a probe
            assert status == 0, err
            client = await RawQMP.unix(sock)
            await client.greeting()
            await client.send(b'{"execute": "qmp_capabilities"}\r\n')
            assert await client.line() == b'{"return": {}}\r\n'
            got = [await client.line() for _ in REPLAYED]  # the whole timeline, from its start
            assert got == [line + b"\r\n" for line in REPLAYED]
            assert await client.eof() == b""
            await client.close()
            assert await cli.wait() == 0


async def test_replay_as_fast_as_possible_still_answers_a_command(tmp_path: Path) -> None:
    _recording(tmp_path / "r.jsonl")
    with short_dir("replay") as directory:
        sock = f"{directory}/r.sock"
        async with running("replay", str(tmp_path / "r.jsonl"), "--serve", f"unix:{sock}",
                           "--as-fast-as-possible") as cli:
            await cli.wait_line("waiting for a client", "err")
            status, out, err = await run("exec", sock, "query-status")
            assert status == 0, err
            assert json.loads(out)["status"] == "running"
            assert await cli.wait() == 0
