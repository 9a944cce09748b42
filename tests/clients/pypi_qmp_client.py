"""The PyPI ``qmp`` 1.1.0 client script of the interop tests (``QEMUMonitorProtocol``).

Usage: python pypi_qmp_client.py SOCKET

The classic synchronous client (QEMU's old ``scripts/qmp/qmp.py``, as packaged
on PyPI): one JSON line per call, ``{"call": NAME, "result": ...}``, with the
events it collected.  Compared between real QEMU 7.2 and the simulator.
"""

import json
import sys

from qmp import QEMUMonitorProtocol


def report(call, result):
    print(json.dumps({"call": call, "result": result}, sort_keys=True), flush=True)


def main(path):
    qmp = QEMUMonitorProtocol(path)
    qmp.settimeout(10.0)
    report("connect", qmp.connect())
    for name, args, cmd_id in (("query-status", None, None), ("query-name", None, "n1"),
                               ("query-version", None, None), ("query-kvm", None, None),
                               ("no-such-command", None, 7),
                               ("query-status", {"bogus": 1}, None),
                               ("cont", None, None), ("stop", None, None),
                               ("system_reset", None, "r"), ("query-status", None, None)):
        report(f"cmd {name}", qmp.cmd(name, args, cmd_id))
    try:
        qmp.command("query-block-jobs")
        report("command query-block-jobs", "ok")
    except Exception as exc:
        report("command query-block-jobs", f"raised: {exc}")
    report("get_events", [event["event"] for event in qmp.get_events(wait=False)])
    qmp.close()


if __name__ == "__main__":
    main(sys.argv[1])
