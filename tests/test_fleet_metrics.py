"""The exporter as Prometheus sees it: our own scrape, then Debian's prometheus scraping it."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cli_process import Cli, short_dir
from fleet_support import DEADLINE, PROMETHEUS, free_port
from prometheus_client.parser import text_string_to_metric_families

import qmpevents
from qmpevents.sim import SimulatedVM

pytestmark = pytest.mark.service  # starts nats-server / prometheus


def _get(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    with opener.open(url, timeout=5) as response:
        return str(response.read().decode())


async def get(url: str) -> str:
    return await asyncio.to_thread(_get, url)


async def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exporter, parsed by prometheus-client's own text parser."""
    found = {}
    for family in text_string_to_metric_families(await get(url)):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


async def until_sample(url: str, wanted: tuple[str, frozenset[tuple[str, str]]],
                       value: float, timeout: float = DEADLINE) -> None:
    """Scrape until the sample has *value* (the exporter updates in the background)."""
    async with asyncio.timeout(timeout):
        while (await samples(url)).get(wanted) != value:
            await asyncio.sleep(0.05)


@pytest.fixture
async def vm_dir() -> AsyncIterator[str]:
    with short_dir("exp") as directory:
        yield directory


async def start_exporter(target: str) -> tuple[Cli, str]:
    cli = await Cli.start("exporter", target, "--listen", "127.0.0.1:0", "--rescan", "0.2")
    line = await cli.wait_line("metrics on", "err")
    return cli, line.split("metrics on ")[1].strip()


async def test_series_follow_events_states_and_connections(vm_dir: str) -> None:
    sock = f"{vm_dir}/web1.sock"
    vm = SimulatedVM(qmp=[f"unix:{sock}"], drives=["disk0,werror=stop"], vnc="127.0.0.1:0",
                     vnc_port=0)
    await vm.start()
    cli, url = await start_exporter(vm_dir)
    try:
        await cli.wait_line("attached", "err")
        await until_sample(url, key("qmpevents_vm_run_state", vm="web1", state="running"), 1)
        assert (await samples(url))[key("qmpevents_target_connected", vm="web1")] == 1
        async with qmpevents.connect(f"unix:{sock}") as qmp:
            await qmp.execute("x-sim-io-error", {"device": "disk0", "operation": "write"})
            await until_sample(url, key("qmpevents_vm_run_state", vm="web1", state="io-error"),
                               1)
            found = await samples(url)
            assert found[key("qmpevents_block_io_errors_total", vm="web1", device="disk0",
                             operation="write", action="stop")] == 1
            assert found[key("qmpevents_events_total", vm="web1", event="STOP")] == 1
            assert found[key("qmpevents_vm_run_state", vm="web1", state="running")] == 0
            await qmp.execute("cont")  # no event in the seed profile: the next one refreshes
            await qmp.execute("x-sim-rtc-change", {"offset": 5})
            await until_sample(url, key("qmpevents_vm_run_state", vm="web1", state="running"), 1)
        assert vm.vnc_port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", vm.vnc_port)
        await reader.readexactly(12)  # the RFB greeting: a VNC client is connected
        await until_sample(url, key("qmpevents_vnc_clients", vm="web1"), 1)
        writer.close()
        await until_sample(url, key("qmpevents_vnc_clients", vm="web1"), 0)
        await vm.close()  # the VM goes away ...
        await until_sample(url, key("qmpevents_target_connected", vm="web1"), 0)
        vm = SimulatedVM(qmp=[f"unix:{sock}"], drives=["disk0,werror=stop"])
        await vm.start()  # ... and comes back
        await until_sample(url, key("qmpevents_target_reconnects_total", vm="web1"), 1)
        await until_sample(url, key("qmpevents_target_connected", vm="web1"), 1)
    finally:
        await cli.kill()
        await vm.close()


async def test_prometheus_scrapes_the_injected_fault(vm_dir: str, tmp_path: Path) -> None:
    sock = f"{vm_dir}/db1.sock"
    async with SimulatedVM(qmp=[f"unix:{sock}"], drives=["disk0,werror=report"]) as vm:
        cli, url = await start_exporter(f"unix:{sock}")
        try:
            exporter = urllib.parse.urlsplit(url).netloc
            port = free_port()
            config = tmp_path / "prometheus.yml"
            config.write_text(
                "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                "scrape_configs:\n"
                f"  - job_name: qmpevents\n    static_configs: [{{targets: ['{exporter}']}}]\n")
            async with running_prometheus(config, tmp_path / "tsdb", port) as api:
                async with qmpevents.connect(f"unix:{vm.socket_path}") as qmp:
                    await qmp.execute("x-sim-io-error", {"device": "disk0", "operation": "read"})
                query = ('qmpevents_block_io_errors_total{vm="db1",device="disk0",'
                         'operation="read",action="report"}')
                result = await until_query(api, query)
                assert result[0]["metric"]["job"] == "qmpevents"
                assert float(result[0]["value"][1]) == 1
        finally:
            await cli.kill()


async def until_query(api: str, query: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Ask Prometheus's HTTP API until the query has a result (scrapes are periodic)."""
    url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    async with asyncio.timeout(timeout):
        while True:
            reply = json.loads(await get(url))
            assert reply["status"] == "success", reply
            if reply["data"]["result"]:
                return list(reply["data"]["result"])
            await asyncio.sleep(0.2)


class running_prometheus:
    """Debian's prometheus on a loopback port with a private TSDB; stopped on exit."""

    def __init__(self, config: Path, tsdb: Path, port: int) -> None:
        self.args = (PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
                     f"--web.listen-address=127.0.0.1:{port}")
        self.api = f"http://127.0.0.1:{port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> str:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        async with asyncio.timeout(30):
            while True:
                try:
                    await get(f"{self.api}/-/ready")
                    return self.api
                except OSError:
                    if self.proc.returncode is not None:
                        raise RuntimeError("prometheus exited") from None
                    await asyncio.sleep(0.1)

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 20)


async def test_stop_leaves_no_state_query_behind() -> None:
    """A burst coalesced into one more query must not start it after stop()."""
    from qmpevents.catalog import decode_event
    from qmpevents.fleet.metrics import FleetMetrics

    started = 0

    class Hanging:
        async def execute(self, name: str) -> Any:
            nonlocal started
            started += 1
            await asyncio.Event().wait()  # a VM that never answers

    metrics = FleetMetrics()
    metrics._clients["vm"] = Hanging()  # type: ignore[assignment]
    stop = decode_event(b'{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}}')
    await metrics.on_event("vm", stop)
    await metrics.on_event("vm", stop)  # coalesced: one more query when the first ends
    await asyncio.sleep(0)  # the first query runs
    await metrics.stop()
    await asyncio.sleep(0)
    assert started == 1 and not metrics._refreshing
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_a_vm_is_one_label_under_its_own_name(vm_dir: str) -> None:
    """Every series names the VM as its events do (query-name), not by the socket's stem,
    and the run state follows a STOP (newcomer: events under `db1`, the rest under `mon7`,
    the run state stuck at running)."""
    with short_dir("ctl") as control_dir:
        await _one_label(vm_dir, f"{control_dir}/ctl.sock")


async def _one_label(vm_dir: str, control: str) -> None:
    # One client per socket in this profile: the test drives the VM through a second one.
    vm = SimulatedVM(qmp=[f"unix:{vm_dir}/mon7.sock", f"unix:{control}"], profile="qemu-7.2",
                     name="db1")
    await vm.start()
    cli, url = await start_exporter(vm_dir)
    try:
        await until_sample(url, key("qmpevents_vm_run_state", vm="db1", state="running"), 1)
        async with qmpevents.connect(f"unix:{control}") as qmp:
            await qmp.execute("stop")
        await until_sample(url, key("qmpevents_vm_run_state", vm="db1", state="paused"), 1)
        found = await samples(url)
        assert found[key("qmpevents_events_total", vm="db1", event="STOP")] == 1
        assert found[key("qmpevents_target_connected", vm="db1")] == 1
        assert {dict(labels).get("vm") for _, labels in found} - {None} == {"db1"}
    finally:
        await cli.kill()
        await vm.close()
