"""``watch nats://`` and ``record nats://`` as a user runs them, against a real nats-server."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cli_process import one_line_error, run, running
from fleet_support import Host, NatsServer, hosts, until_stored

from qmpevents.sim import SimulatedVM

pytestmark = pytest.mark.service  # starts nats-server / prometheus


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def host(tmp_path: Path, broker: NatsServer) -> AsyncIterator[Host]:
    async with hosts(tmp_path, 1, 2) as made:
        await made[0].start_agent(broker.url)
        yield made[0]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


async def test_filters_by_subject_vm_event_and_match(broker: NatsServer, host: Host) -> None:
    host.emit(6)  # per VM: RTC_CHANGE x3, BLOCK_IO_ERROR x3
    await until_stored([broker.url], 12)
    status, out, _ = await run("watch", f"{broker.url}/qmp.h0.vm1.>", "--since", "all",
                               "--json", "--count", "6")
    assert status == 0
    lines = json_lines(out)
    assert [(line["host"], line["vm"]) for line in lines] == [("h0", "vm1")] * 6
    assert [line["event"] for line in lines] == [e["event"] for e in host.emitted["vm1"]]

    status, out, _ = await run("watch", broker.url, "--since", "all", "--vm", "vm0",
                               "--event", "BLOCK_IO_*", "--match", "action=report",
                               "--count", "3", "--color", "never")
    assert status == 0
    assert [line.split()[1:3] for line in out.splitlines()] == [["h0/vm0", "BLOCK_IO_ERROR"]] * 3

    status, out, err = await run("watch", broker.url, "--since", "all", "--host", "other",
                                 "--timeout", "1")
    assert (status, out) == (1, "")
    assert "timed out after 1 s (0 events)" in err


async def test_without_since_only_new_events(broker: NatsServer, host: Host) -> None:
    host.emit(2)
    await until_stored([broker.url], 4)
    async with running("watch", broker.url, "--json", "--count", "1") as cli:
        await cli.wait_line("reading stream", "err")
        host.vms[1].machine.stop()
        assert await cli.wait() == 0
    assert [(line["vm"], line["event"]) for line in json_lines("".join(cli.out))] == [
        ("vm1", "STOP")]


async def test_since_a_time_replays_from_then(broker: NatsServer, host: Host) -> None:
    host.emit(2)
    await until_stored([broker.url], 4)
    then = time.time()
    host.vms[0].machine.stop()
    await until_stored([broker.url], 5)
    since = datetime.datetime.fromtimestamp(then).isoformat()  # local time, as a user types
    status, out, _ = await run("watch", broker.url, "--since", since, "--json", "--timeout", "2")
    assert status == 1  # nothing more after the one event
    assert [(line["vm"], line["event"]) for line in json_lines(out)] == [("vm0", "STOP")]
    status, out, _ = await run("watch", broker.url, "--since", "10m", "--json", "--count", "5")
    assert status == 0 and len(out.splitlines()) == 5


async def test_a_durable_consumer_resumes_where_it_stopped(broker: NatsServer,
                                                           host: Host) -> None:
    host.emit(5)
    await until_stored([broker.url], 10)
    seen = []
    for _ in range(2):
        status, out, _ = await run("watch", broker.url, "--durable", "ops", "--since", "all",
                                   "--json", "--count", "4")
        assert status == 0
        seen += json_lines(out)
    status, out, _ = await run("watch", broker.url, "--durable", "ops", "--json", "--count", "2")
    assert status == 0
    seen += json_lines(out)
    stored = [(vm, e) for vm in ("vm0", "vm1") for e in host.emitted[vm]]
    assert sorted((line["vm"], line["timestamp"]["microseconds"]) for line in seen) == sorted(
        (vm, e["timestamp"]["microseconds"]) for vm, e in stored)  # each once, none skipped


async def test_record_from_the_stream_then_replay(broker: NatsServer, host: Host,
                                                  tmp_path: Path) -> None:
    host.emit(3)
    await until_stored([broker.url], 6)
    out = tmp_path / "fleet.jsonl"
    status, _, err = await run("record", broker.url, "--since", "all", "-o", str(out),
                               "--count", "6")
    assert status == 0, err
    assert "6 events written" in err
    status, printed, _ = await run("replay", str(out), "--print", "--json")
    assert status == 0
    replayed = json_lines(printed)
    assert sorted((line["vm"], line["event"]) for line in replayed) == sorted(
        (f"h0/{vm}", e["event"]) for vm in ("vm0", "vm1") for e in host.emitted[vm])


async def test_usage_and_broker_errors_are_one_line(broker: NatsServer, tmp_path: Path) -> None:
    status, _, err = await run("watch", "nats://127.0.0.1:1", "--count", "1")
    assert status == 3
    one_line_error(err)
    status, _, err = await run("watch", broker.url, str(tmp_path / "vm.sock"))
    assert status == 2
    one_line_error(err)
    status, _, err = await run("watch", str(tmp_path / "vm.sock"), "--since", "all")
    assert status == 2 and "--since needs a nats:// target" in err
    status, _, err = await run("watch", broker.url, "--since", "yesterday")
    assert status == 2
    one_line_error(err)


@pytest.mark.parametrize("command", [
    ("agent", "/tmp/none.sock", "--nats", "nats://127.0.0.1:1"),
    ("exporter", "/tmp/none.sock"),
    ("watch", "nats://127.0.0.1:1"),
])
async def test_without_the_fleet_extra_one_line_says_what_to_install(
        command: tuple[str, ...]) -> None:
    code = ("import sys; sys.modules['nats'] = None; sys.modules['prometheus_client'] = None; "
            "from qmpevents.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *command, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    one_line_error(err.decode())
    assert "pip install 'qmpevents[fleet]'" in err.decode()


async def test_the_readme_library_example_runs(broker: NatsServer, tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "fleet_events" in b]
    async with hosts(tmp_path, 1, 1) as made:
        await made[0].start_agent(broker.url)
        async with SimulatedVM(qmp=[f"unix:{made[0].sock_dir}/db.sock"],
                               drives=["disk0,werror=stop"]) as vm:
            await made[0].agent.wait_line("attached", "err")  # type: ignore[union-attr]
            vm.machine.io_error("disk0", "write")
            await until_stored([broker.url], 2)  # BLOCK_IO_ERROR, then STOP
        script = tmp_path / "example.py"
        script.write_text(code.replace("nats://127.0.0.1:4222", broker.url))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert out.decode() == "h0 db disk0 stop\n"


async def test_user_password_file_on_both_ends(tmp_path: Path) -> None:
    """A broker that requires a user: agent and watch log in from a file; without it, exit 3."""
    broker = NatsServer(tmp_path / "nats", extra=("--user", "fleet", "--pass", "s3cret"))
    await broker.start()
    secret = tmp_path / "nats.pw"
    secret.write_text("fleet\ns3cret\n")
    try:
        async with hosts(tmp_path, 1, 1) as made:
            await made[0].start_agent(broker.url, extra=("--user-password-file", str(secret)))
            made[0].emit(2)
            status, out, err = await run("watch", broker.url, "--user-password-file",
                                         str(secret), "--since", "all", "--count", "2", "--json")
            assert status == 0, err
            assert [line["vm"] for line in json_lines(out)] == ["vm0", "vm0"]
            status, _, err = await run("watch", broker.url, "--since", "all", "--count", "1")
            assert status == 3
            one_line_error(err)
            assert "authorization" in err.lower()
    finally:
        await broker.stop()


async def test_a_message_that_is_not_an_event_is_skipped_not_fatal(broker: NatsServer,
                                                                   host: Host) -> None:
    import nats

    host.emit(1)
    await until_stored([broker.url], 2)  # the agent has made the stream
    client = await nats.connect(broker.url)
    try:
        await client.jetstream().publish("qmp.h0.vm1.STOP", b"not json at all")
    finally:
        await client.close()
    host.emit(1)
    await until_stored([broker.url], 5)
    status, out, err = await run("watch", broker.url, "--since", "all", "--json",
                                 "--count", "4")
    assert status == 0, err
    assert len(json_lines(out)) == 4
    assert "not QMP events skipped" in err
