"""The qemu-7.2 profile's command surface: QEMU 7.2's schema, answered from the machine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import qmpevents
from qmpevents.errors import QMPError
from qmpevents.protocol import CommandFailure
from qmpevents.qapi import load_capture, qemu72_schema
from qmpevents.server import CommandSpec, Param, SchemaChecker
from qmpevents.sim import SimulatedVM
from qmpevents.sim.commands import NOT_MODELLED, modelled_commands
from qmpevents.sim.machine import Machine

README = (Path(__file__).parent.parent / "README.md").read_text()
SCHEMA = qemu72_schema()
CHECKER = SchemaChecker({e["name"]: e for e in SCHEMA.entries}, SCHEMA.alternate_names())


def _vm(**options: Any) -> SimulatedVM:
    options.setdefault("drives", ["drive0", "d1,werror=stop"])
    return SimulatedVM(profile="qemu-7.2", name="vm-a", **options)


async def test_every_query_validates_against_its_return_type_and_the_machine() -> None:
    async with _vm() as vm, qmpevents.connect(f"unix:{vm.socket_path}") as qmp:
        for entry in SCHEMA.of_meta("command"):
            name = entry["name"]
            if not name.startswith("query-") or name not in load_capture()["queries"]:
                continue
            try:
                value = await qmp.execute(name)
            except QMPError as error:  # QEMU's own error on this machine (no balloon...)
                assert load_capture()["queries"][name]["error"]["desc"] == error.desc
                continue
            CHECKER.check(entry["ret-type"], value)  # raises on any mismatch
        assert await qmp.execute("query-name") == {"name": "vm-a"}
        assert [b["device"] for b in await qmp.execute("query-block")] == ["drive0", "d1"]
        assert [b["device"] for b in await qmp.execute("query-blockstats")] == ["drive0", "d1"]
        assert len((await qmp.execute("query-pci"))[0]["devices"]) == 4 + 2
        assert [c["label"] for c in await qmp.execute("query-chardev")] == ["compat_monitor0"]
        assert (await qmp.execute("query-chardev"))[0]["filename"].startswith(
            f"unix:{vm.socket_path}")
        assert (await qmp.execute("query-kvm"))["enabled"] is False
        assert await qmp.execute("query-vnc") == {"enabled": False}
        assert await qmp.execute("query-vnc-servers") == []
        assert len(await qmp.execute("query-cpus-fast")) == 1
        assert len(await qmp.execute("query-hotpluggable-cpus")) == 1
        await qmp.execute("stop")
        assert (await qmp.execute("query-status"))["status"] == "paused"


async def test_query_commands_and_schema_are_qemus_plus_x_sim() -> None:
    async with _vm() as vm, qmpevents.connect(f"unix:{vm.socket_path}") as qmp:
        commands = [c["name"] for c in await qmp.execute("query-commands")]
        schema = await qmp.execute("query-qmp-schema")
    x_sim = ["x-sim-io-error", "x-sim-rtc-change", "x-sim-guest-reset", "x-sim-guest-shutdown"]
    assert commands == [c["name"] for c in load_capture()["query-commands"]] + x_sim
    assert schema[:len(SCHEMA.entries)] == SCHEMA.entries
    listed = {e["name"] for e in schema if e["meta-type"] == "command"}
    assert listed == set(commands)
    by_name = {e["name"]: e for e in schema}
    io_error = by_name[by_name["x-sim-io-error"]["arg-type"]]
    assert [m["name"] for m in io_error["members"]] == ["device", "operation", "errno"]
    assert by_name[io_error["members"][1]["type"]]["values"] == ["read", "write"]


async def test_no_command_of_qemu_is_unknown_and_unmodelled_ones_say_so() -> None:
    async with _vm() as vm, qmpevents.connect(f"unix:{vm.socket_path}") as qmp:
        for name in SCHEMA.command_names():
            if name in ("quit", "qmp_capabilities", "system_powerdown"):
                continue
            try:
                await qmp.execute(name)
            except QMPError as error:
                assert error.error_class != "CommandNotFound", name
        with pytest.raises(QMPError) as failure:
            await qmp.execute("blockdev-mirror", {"job-id": "j", "device": "drive0",
                                                  "target": "t", "sync": "full"})
        assert (failure.value.error_class, failure.value.desc) == (
            "GenericError", NOT_MODELLED.format(name="blockdev-mirror"))
        with pytest.raises(QMPError, match="has not been found"):
            await qmp.execute("no-such-command")


async def test_device_del_emits_device_deleted_and_the_drive_goes() -> None:
    async with _vm() as vm, qmpevents.connect(f"unix:{vm.socket_path}") as qmp:
        path = "/machine/peripheral-anon/device[0]"
        assert {"name": "device[0]", "type": "child<virtio-blk-pci>"} in await qmp.execute(
            "qom-list", {"path": "/machine/peripheral-anon"})
        assert await qmp.execute("qom-get", {"path": path, "property": "type"}) == \
            "virtio-blk-pci"
        async with qmp.listen("DEVICE_DELETED") as events:
            await qmp.execute("device_del", {"id": path})
            first, second = await events.get(timeout=5), await events.get(timeout=5)
        assert (first.data.path, second.data.path) == (f"{path}/virtio-backend", path)
        qmpevents.validate(first, "qemu-7.2")
        assert [b["device"] for b in await qmp.execute("query-block")] == ["d1"]
        with pytest.raises(QMPError, match="Device 'nope' not found"):
            await qmp.execute("device_del", {"id": "nope"})


async def test_hmp_prints_as_qemu() -> None:
    async with _vm() as vm, qmpevents.connect(f"unix:{vm.socket_path}") as qmp:
        async def hmp(line: str) -> str:
            text: str = await qmp.execute("human-monitor-command", {"command-line": line})
            return text
        assert await hmp("info status") == "VM status: running\r\n"
        assert await hmp("stop") == ""
        assert await hmp("info status") == "VM status: paused\r\n"
        assert await hmp("info name") == "vm-a\r\n"
        assert re.fullmatch(r"drive0 \(#block\d+\): null-co:// \(null-co\)\r\n"
                            r"    Attached to: +/machine/peripheral-anon/device\[0\]"
                            r"/virtio-backend\r\n    Cache mode: +writeback\r\n\r\nd1 .*",
                            await hmp("info block"), re.S)
        assert await hmp("info mtree") == \
            "The simulated machine does not model the HMP command 'info mtree'\r\n"
        assert await hmp("nope") == "unknown command: 'nope'\r\n"
        await hmp("cont")
        async with qmp.expect("SHUTDOWN"):
            assert await hmp("quit") == ""


async def test_commands_hook_adds_and_overrides() -> None:
    seen: list[dict[str, Any]] = []

    def screendump(arguments: dict[str, Any]) -> dict[str, Any]:
        seen.append(arguments)
        return {}

    def fail(_arguments: dict[str, Any]) -> Any:
        raise CommandFailure("DeviceNotActive", "No balloon device has been activated")

    commands = {"screendump": screendump, "query-name": lambda _: {"name": "over"},
                "x-my-thing": CommandSpec("x-my-thing", fail, {"n": Param("integer")})}
    async with _vm(commands=commands) as vm, qmpevents.connect(
            f"unix:{vm.socket_path}") as qmp:
        assert await qmp.execute("query-name") == {"name": "over"}
        await qmp.execute("screendump", {"filename": "/tmp/x.ppm"})
        assert seen == [{"filename": "/tmp/x.ppm"}]
        with pytest.raises(QMPError, match="'filename', expected: string"):  # QEMU's check
            await qmp.execute("screendump", {"filename": 1})
        with pytest.raises(QMPError, match="'n', expected: integer"):
            await qmp.execute("x-my-thing", {"n": "x"})
        with pytest.raises(QMPError, match="No balloon"):
            await qmp.execute("x-my-thing", {"n": 1})
        assert {"name": "x-my-thing"} in await qmp.execute("query-commands")


def test_readme_figures_are_computed() -> None:
    answered = modelled_commands(Machine(profile="qemu-7.2"))
    total = len(SCHEMA.command_names())
    figure = README.split("<!-- figures:begin -->")[1].split("<!-- figures:end -->")[0]
    assert figure == f"{len(answered)} of QEMU 7.2's {total} commands"
    events = len(SCHEMA.event_names())
    assert f"{len(qmpevents.catalog.EVENT_TYPES)} of QEMU 7.2's {events}" in README


def test_every_alternate_of_the_schema_is_named() -> None:
    assert set(SCHEMA.alternate_names()) == {e["name"] for e in SCHEMA.of_meta("alternate")}


async def test_screendump_is_a_ppm_of_what_a_vnc_client_sees(tmp_path: Path) -> None:
    from qmpevents.vnc_client import AuthFailed, handshake

    async with _vm(vnc="127.0.0.1:0", vnc_port=0, vnc_password="secret") as vm, \
            qmpevents.connect(f"unix:{vm.socket_path}") as qmp:
        assert vm.vnc_port is not None
        await qmp.execute("screendump", {"filename": str(tmp_path / "s.ppm")})
        data = (tmp_path / "s.ppm").read_bytes()
        client = await handshake("127.0.0.1", vm.vnc_port, password="secret")
        frame = await client.full_frame()
        await client.close()
        header = b"P6\n%d %d\n255\n" % (frame.width, frame.height)
        assert data.startswith(header)
        pixels = data[len(header):]
        assert len(pixels) == frame.width * frame.height * 3
        for x, y in [(0, 0), (10, 10), (12, 12), (100, 30), (frame.width - 1, frame.height - 1)]:
            offset = (y * frame.width + x) * 3
            assert tuple(pixels[offset:offset + 3]) == frame.rgb(x, y)
        assert len(set(pixels)) > 2  # text is drawn, not a blank frame
        # set_password changes the VNC password; expire_password "now" locks VNC out.
        await qmp.execute("set_password", {"protocol": "vnc", "password": "other"})
        (await handshake("127.0.0.1", vm.vnc_port, password="other")).writer.close()
        with pytest.raises(AuthFailed):
            await handshake("127.0.0.1", vm.vnc_port, password="secret")
        await qmp.execute("expire_password", {"protocol": "vnc", "time": "now"})
        await qmp.execute("query-status")  # the expiry timer (0 s) has run by now
        with pytest.raises(AuthFailed):
            await handshake("127.0.0.1", vm.vnc_port, password="other")
        with pytest.raises(QMPError, match="failed to open file"):
            await qmp.execute("screendump", {"filename": str(tmp_path / "no" / "s.ppm")})


async def test_cdrom_tray_events_and_block_state() -> None:
    async with _vm(drives=["drive0", "cd0,media=cdrom"]) as vm, \
            qmpevents.connect(f"unix:{vm.socket_path}") as qmp:
        async with qmp.listen("DEVICE_TRAY_MOVED") as events:
            await qmp.execute("blockdev-change-medium",
                              {"device": "cd0", "filename": "/srv/iso/debian.iso"})
            opened, closed = await events.get(timeout=5), await events.get(timeout=5)
            assert (opened.data.tray_open, closed.data.tray_open) == (True, False)
            qmpevents.validate(opened, "qemu-7.2")
            cd = (await qmp.execute("query-block"))[1]
            assert (cd["tray_open"], cd["inserted"]["file"]) == (False, "/srv/iso/debian.iso")
            await qmp.execute("eject", {"device": "cd0"})
            assert (await events.get(timeout=5)).data.id == "/machine/peripheral-anon/device[1]"
        cd = (await qmp.execute("query-block"))[1]
        assert cd["tray_open"] is True and "inserted" not in cd
        with pytest.raises(QMPError, match="Device 'drive0' is not removable"):
            await qmp.execute("eject", {"device": "drive0"})


async def test_readme_commands_hook_example_runs() -> None:
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "commands={" in b]
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # the README's example as written
    vm: SimulatedVM = namespace["vm"]
    async with vm, qmpevents.connect(f"unix:{vm.socket_path}") as qmp:
        assert await qmp.execute("query-name") == {"name": "overridden"}
        with pytest.raises(QMPError) as failure:
            await qmp.execute("x-my-fault", {"count": 1})
        assert failure.value.error_class == "DeviceNotActive"
        with pytest.raises(QMPError, match="'count', expected: integer"):
            await qmp.execute("x-my-fault", {"count": "x"})


@pytest.mark.parametrize("spec", ["cd0,media=floppy", "cd0,media=disk,media=cdrom", "cd0,media"])
def test_drive_media_option_is_checked(spec: str) -> None:
    from qmpevents.sim.block import parse_drive

    assert parse_drive("cd0,media=cdrom,werror=stop").media == "cdrom"
    with pytest.raises(ValueError, match="unknown or repeated option"):
        parse_drive(spec)


async def test_an_unnamed_vm_has_no_name_as_qemu() -> None:
    """QEMU without -name answers {} and an empty ``info name``; clients then name the VM."""
    async with SimulatedVM(profile="qemu-7.2") as vm, \
            qmpevents.connect(f"unix:{vm.socket_path}") as qmp:
        assert await qmp.execute("query-name") == {}
        assert await qmp.execute("human-monitor-command", {"command-line": "info name"}) == ""
    async with SimulatedVM(profile="qemu-7.2", name="web1") as vm, \
            qmpevents.connect(f"unix:{vm.socket_path}") as qmp:
        assert await qmp.execute("query-name") == {"name": "web1"}
