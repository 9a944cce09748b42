"""qmpevents-qemu's QEMU command-line parser, on the command lines libvirt 9.0 wrote.

The two command lines are copied from ``shared/spec/libvirt/`` (probe-commands.txt and
domain-commands.txt), plus the second disk, balloon and -no-acpi a test domain adds.
"""

from __future__ import annotations

import pytest

from qmpevents.qemu_compat.blockdev import BlockdevLayer
from qmpevents.qemu_compat.cmdline import (
    CommandLineError,
    machine_max_cpus,
    parse_command_line,
    parse_keyval,
    split_options,
)
from qmpevents.qemu_compat.vcpus import Topology
from qmpevents.sim.block import ErrorPolicy

PROBE = ["-S", "-no-user-config", "-nodefaults", "-nographic", "-machine", "none,accel=kvm:tcg",
         "-qmp", "unix:/var/lib/libvirt/qemu/qmp-LY5CZ3/qmp.monitor,server=on,wait=off",
         "-pidfile", "/var/lib/libvirt/qemu/qmp-LY5CZ3/qmp.pid", "-daemonize"]

DOMAIN = [
    "-name", "guest=simtest,debug-threads=on", "-S",
    "-object", '{"qom-type":"secret","id":"masterKey0","format":"raw",'
               '"file":"/var/lib/libvirt/qemu/domain-2-simtest/master-key.aes"}',
    "-machine", "pc-i440fx-7.2,usb=off,dump-guest-core=off,memory-backend=pc.ram",
    "-accel", "tcg", "-cpu", "qemu64", "-m", "64",
    "-object", '{"qom-type":"memory-backend-ram","id":"pc.ram","size":67108864}',
    "-overcommit", "mem-lock=off", "-smp", "2,sockets=2,cores=1,threads=1",
    "-uuid", "b456a945-03d6-497a-ab06-d14cd21c1d1a", "-no-user-config", "-nodefaults",
    "-chardev", "socket,id=charmonitor,fd=28,server=on,wait=off",
    "-mon", "chardev=charmonitor,id=monitor,mode=control",
    "-rtc", "base=utc", "-no-shutdown", "-no-acpi", "-boot", "strict=on",
    "-device", '{"driver":"piix3-usb-uhci","id":"usb","bus":"pci.0","addr":"0x1.0x2"}',
    "-blockdev", '{"driver":"file","filename":"WORKDIR/img/disk.raw",'
                 '"node-name":"libvirt-2-storage","auto-read-only":true,"discard":"unmap"}',
    "-blockdev", '{"node-name":"libvirt-2-format","read-only":false,"driver":"raw",'
                 '"file":"libvirt-2-storage"}',
    "-device", '{"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x3",'
               '"drive":"libvirt-2-format","id":"virtio-disk0","bootindex":1,'
               '"werror":"stop","rerror":"stop"}',
    "-blockdev", '{"driver":"file","filename":"WORKDIR/img/disk2.raw",'
                 '"node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"}',
    "-blockdev", '{"node-name":"libvirt-1-format","read-only":false,"driver":"raw",'
                 '"file":"libvirt-1-storage"}',
    "-device", '{"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x4",'
               '"drive":"libvirt-1-format","id":"virtio-disk1","werror":"report",'
               '"rerror":"report"}',
    "-audiodev", '{"id":"audio1","driver":"none"}',
    "-vnc", "127.0.0.1:0,audiodev=audio1",
    "-device", '{"driver":"cirrus-vga","id":"video0","bus":"pci.0","addr":"0x2"}',
    "-device", '{"driver":"virtio-balloon-pci","id":"balloon0","bus":"pci.0","addr":"0x5"}',
    "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    "-msg", "timestamp=on",
]


def test_probe_command_line() -> None:
    cmdline = parse_command_line(PROBE)
    assert cmdline.probe and cmdline.daemonize and cmdline.start_paused
    assert cmdline.accel == ["kvm", "tcg"]
    assert [m.path for m in cmdline.monitors] == ["/var/lib/libvirt/qemu/qmp-LY5CZ3/qmp.monitor"]
    assert cmdline.pidfile == "/var/lib/libvirt/qemu/qmp-LY5CZ3/qmp.pid"


def test_domain_command_line() -> None:
    cmdline = parse_command_line(DOMAIN)
    assert not cmdline.probe and not cmdline.daemonize
    assert cmdline.name == "simtest"
    assert cmdline.start_paused and cmdline.no_shutdown and not cmdline.acpi
    assert cmdline.uuid == "b456a945-03d6-497a-ab06-d14cd21c1d1a"
    assert cmdline.smp == Topology(2, 2, 1, 1)
    assert cmdline.memory == 64 << 20
    assert cmdline.machine == "pc-i440fx-7.2" and cmdline.cpu_model == "qemu64"
    assert [(m.id, m.fd, m.path) for m in cmdline.monitors] == [("charmonitor", 28, None)]
    assert cmdline.vnc == "127.0.0.1:0"
    assert cmdline.blockdevs["libvirt-2-format"].file == "libvirt-2-storage"
    assert cmdline.blockdevs["libvirt-2-storage"].filename == "WORKDIR/img/disk.raw"
    assert [d.id for d in cmdline.devices] == ["usb", "virtio-disk0", "virtio-disk1",
                                               "video0", "balloon0"]
    ignored = {option for option, _ in cmdline.ignored}
    assert {"object", "overcommit", "rtc", "boot", "audiodev", "sandbox", "msg"} <= ignored


def test_disks_get_libvirt_node_names_and_device_policies() -> None:
    cmdline = parse_command_line(DOMAIN)
    block = BlockdevLayer(cmdline.blockdevs, cmdline.devices)
    stop_disk, report_disk = block.disks()
    assert (stop_disk.config.werror, stop_disk.config.rerror) == (ErrorPolicy.STOP,
                                                                  ErrorPolicy.STOP)
    assert report_disk.config.werror is ErrorPolicy.REPORT
    assert block.get("virtio-disk0") is stop_disk is block.get("libvirt-2-format")
    outcome = stop_disk.fail("write", 5)
    assert outcome.stop
    assert outcome.data == {"device": "", "node-name": "libvirt-2-format", "operation": "write",
                            "action": "stop", "reason": "Input/output error", "nospace": False}
    (entry, other) = block.query()
    assert entry["device"] == "" and entry["io-status"] == "failed"
    assert entry["qdev"] == "/machine/peripheral/virtio-disk0/virtio-backend"
    assert entry["inserted"]["node-name"] == "libvirt-2-format"
    assert "io-status" not in other  # werror=report: QEMU tracks no I/O status
    stats = block.blockstats(query_nodes=False)[0]
    assert stats["stats"]["failed_wr_operations"] == 1
    assert stats["parent"]["node-name"] == "libvirt-2-storage"


@pytest.mark.parametrize(("text", "items"), [
    ("a=1,b=2", ["a=1", "b=2"]),
    ("path=/x,,y,server=on", ["path=/x,y", "server=on"]),
    ("", [""]),
])
def test_split_options_unescapes_double_commas(text: str, items: list[str]) -> None:
    assert split_options(text) == items


def test_keyval_implied_key_and_bare_flag() -> None:
    assert parse_keyval("smp", "2,sockets=2", "cpus") == {"cpus": "2", "sockets": "2"}
    assert parse_keyval("machine", "pc,usb", "type") == {"type": "pc", "usb": "on"}


@pytest.mark.parametrize(("argv", "message"), [
    (["-foo"], "-foo: invalid option"),
    (["-m"], "-m: requires an argument"),
    (["-S"], "no QMP monitor"),
    (["-qmp", "tcp:127.0.0.1:4444"], "only unix: monitors"),
    (["-chardev", "socket,id=c,fd=x", "-mon", "chardev=c,mode=control"], "fd=x"),
    (["-mon", "chardev=nope,mode=control"], "chardev 'nope' not found"),
    (["-qmp", "unix:/x", "-uuid", "nope"], "Fail to parse UUID string"),
    (["-qmp", "unix:/x", "-m", "lots"], "invalid RAM size"),
    (["-qmp", "unix:/x", "-smp", "2,sockets=1"], "Invalid CPU topology"),
    (["-qmp", "unix:/x", "-device", '{"driver":'], "JSON parse error"),
    (["-qmp", "unix:/x", "-device", '{"driver":"virtio-blk-pci","drive":"n"}'],
     "can't find value 'n'"),
    (["-qmp", "unix:/x", "disk.img"], "disk image is not simulated"),
    (["-qmp", "unix:/x", "-smp", "100000"],
     r"^Invalid SMP CPUs 100000\. The max CPUs supported by machine 'pc-i440fx-7\.2' is 255$"),
    (["-qmp", "unix:/x", "-smp", "289", "-machine", "q35"],  # the machine may come after
     r"^Invalid SMP CPUs 289\. The max CPUs supported by machine 'pc-q35-7\.2' is 288$"),
    (["-qmp", "unix:/x", "-smp", "1,maxcpus=256"], r"^Invalid SMP CPUs 256\."),
    (["-qmp", "unix:/x", "-smp", "sockets=300"], r"^Invalid SMP CPUs 300\."),
    (["-qmp", "unix:/x", "-smp", "4,maxcpus=2"], "Invalid CPU topology"),
    (["-qmp", "unix:/x", "-blockdev", "driver=file,node-name=a,filename=/x",
      "-blockdev", '{"driver":"raw","node-name":"a"}'],
     r"^-blockdev \{\"driver\":\"raw\",\"node-name\":\"a\"\}: "
     r"Duplicate nodes with node-name='a'$"),
])
def test_bad_command_lines_fail_with_a_message(argv: list[str], message: str) -> None:
    with pytest.raises(CommandLineError, match=message):
        parse_command_line(argv)


def test_double_dash_options_and_memory_suffixes() -> None:
    cmdline = parse_command_line(["--qmp", "unix:/x", "--m", "size=1G", "--no-shutdown"])
    assert cmdline.memory == 1 << 30 and cmdline.no_shutdown


@pytest.mark.parametrize(("machine", "bound"), [
    ("pc", ("pc-i440fx-7.2", 255)), ("pc-i440fx-2.0", ("pc-i440fx-2.0", 255)),
    ("q35", ("pc-q35-7.2", 288)), ("pc-q35-2.8", ("pc-q35-2.8", 288)),
    ("pc-q35-2.7", ("pc-q35-2.7", 255)), ("pc-q35-4.0.1", ("pc-q35-4.0.1", 288)),
    ("microvm", ("microvm", 288)), ("none", ("none", 1)), ("isapc", ("isapc", 1)),
])
def test_machine_cpu_bounds_are_qemus(machine: str, bound: tuple[str, int]) -> None:
    assert machine_max_cpus(machine) == bound


def test_the_largest_machine_bound_is_accepted() -> None:
    cmdline = parse_command_line(["-qmp", "unix:/x", "-machine", "q35", "-smp", "288"])
    assert (cmdline.smp.cpus, cmdline.max_cpus) == (288, 288)
