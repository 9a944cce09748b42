"""The Ganeti client script of the interop tests: Debian's ganeti-3.0 ``QmpConnection``.

Usage: python3 ganeti_client.py SOCKET   (with Ganeti's tree on PYTHONPATH)

Run by Debian's python3 (Ganeti's own interpreter and modules) on the module
unpacked from the ``.deb``; nothing of Ganeti is reimplemented.  Its methods
connect, run and close (``_ensure_connection``), so this also exercises one
connection after another on a one-client socket.  One JSON line per call:
``{"call": NAME, "result": ..., "error": ...}``.
"""

import json
import sys

from ganeti.hypervisor.hv_kvm.monitor import QmpConnection


def report(call, function, *args):
    line = {"call": call}
    try:
        result = function(*args)
        line["result"] = sorted(result) if isinstance(result, frozenset) else result
    except Exception as exc:
        line["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(line, sort_keys=True), flush=True)


def main(path):
    qmp = QmpConnection(path)
    report("connect", qmp.connect)
    report("version", lambda: [list(qmp.version), qmp.package])
    report("supported_commands", lambda: qmp.supported_commands)
    for command, arguments in (("query-status", None), ("query-name", None),
                               ("query-block", None), ("query-pci", None),
                               ("query-cpus-fast", None), ("query-balloon", None),
                               ("set_password", {"protocol": "vnc", "password": "pw"}),
                               ("no-such-command", None),
                               ("cont", None), ("stop", None), ("query-status", None)):
        report(f"Execute {command}", qmp.Execute, command, arguments)
    report("close", qmp.close)
    # the decorated methods: each connects, runs and closes
    report("HasDevice", qmp.HasDevice, "nope")
    report("GetFreePCISlot", qmp.GetFreePCISlot)
    report("CheckDiskHotAddSupport", qmp.CheckDiskHotAddSupport)
    report("CheckNicHotAddSupport", qmp.CheckNicHotAddSupport)
    report("HasDynamicAutoReadOnly", qmp.HasDynamicAutoReadOnly)


if __name__ == "__main__":
    main(sys.argv[1])
