"""Differential conformance: every scenario, real QEMU 7.2 vs the simulator (qemu-7.2).

Each scenario runs on a fresh QEMU and a fresh SimulatedVM; every line each
monitor received is compared after masking.  Only the differences listed in
``tests/conformance/differences.py`` are allowed.  ``python -m
tests.conformance.report`` prints the same comparison as a report.
"""

from __future__ import annotations

import pytest
from conformance.compare import Row, compare, format_result
from conformance.differences import DIFFERENCES, Difference
from conformance.harness import EOF_LINE, Scenario, record_both
from conformance.masking import mask
from conformance.scenarios import FAST
from qemu_support import requires_qemu

pytestmark = [requires_qemu, pytest.mark.qemu]


@pytest.mark.parametrize("scenario", FAST, ids=[s.name for s in FAST])
async def test_scenario_matches_qemu(scenario: Scenario) -> None:
    recordings = await record_both(scenario)
    result = compare(scenario.name, recordings["qemu"], recordings["sim"])
    assert result.total > 0
    head = b"".join(recordings["qemu"]["qmp0"][:2])  # pretty=on: "{" alone, then "QMP"
    assert head.startswith((b'{"QMP": ', b'{\r\n    "QMP": '))
    assert result.ok, format_result(result)


def test_differences_name_existing_scenarios() -> None:
    from conformance.guest import GUEST

    names = {s.name for s in FAST} | {GUEST.name, "*"}
    for diff in DIFFERENCES:
        assert diff.scenario in names, diff
        assert diff.qemu or diff.sim, diff
        assert diff.what and diff.reason, diff


def test_mask_hides_only_what_varies() -> None:
    line = (b'{"timestamp": {"seconds": 17, "microseconds": 5}, "event": "X", "data": '
            b'{"service": "5901", "node-name": "#block123", "offset": -3}}\r\n')
    assert mask(line) == (b'{"timestamp": {"seconds": S, "microseconds": U}, "event": "X",'
                          b' "data": {"service": "PORT", "node-name": "#blockN",'
                          b' "offset": OFFSET}}\r\n')
    greeting = (b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7},'
                b' "package": "Debian"}, "capabilities": ["oob"]}}\r\n')
    assert mask(greeting) == (b'{"QMP": {"version": {"qemu": {VERSION}, "package": "PACKAGE"},'
                              b' "capabilities": ["oob"]}}\r\n')
    assert mask(b'{"return": {}, "id": 1}\n') == b'{"return": {}, "id": 1}\n'  # LF stays LF


def test_compare_reports_unlisted_differences() -> None:
    qemu = {"qmp0": [b'{"return": {}}\r\n', b'{"return": {}, "id": 1}\r\n', EOF_LINE]}
    sim = {"qmp0": [b'{"return": {}}\r\n', b'{"id": 1, "return": {}}\r\n', EOF_LINE]}
    result = compare("x", qemu, sim)
    assert (result.matched, result.total) == (2, 3)
    assert result.mismatches == [Row("qmp0", qemu["qmp0"][1], sim["qmp0"][1])]
    assert not compare("x", qemu, qemu).mismatches
    # a listed difference is allowed only in its own scenario
    listed = (Difference("request-errors", "what", "why", qemu=r'"class": "DeviceNotFound"',
                         sim=r'"class": "CommandNotFound"'),)
    dd_qemu = {"qmp0": [b'{"id": "dd", "error": {"class": "DeviceNotFound", "desc": "x"}}\r\n']}
    dd_sim = {"qmp0": [b'{"id": "dd", "error": {"class": "CommandNotFound", "desc": "The command'
                       b' device_del has not been found"}}\r\n']}
    assert compare("request-errors", dd_qemu, dd_sim, listed).ok
    assert not compare("runstate", dd_qemu, dd_sim, listed).ok
    assert not compare("request-errors", dd_qemu, dd_sim).ok  # nothing is listed any more


@pytest.mark.slow
async def test_guest_events_match_qemu() -> None:
    """BLOCK_IO_ERROR (each policy), RTC_CHANGE throttling, guest poweroff, from a Linux guest."""
    from conformance.guest import GUEST, available, record_guest

    if (why := available()) is not None:
        pytest.skip(why)
    recordings = await record_guest()
    result = compare(GUEST.name, recordings["qemu"], recordings["sim"])
    assert sum(b"BLOCK_IO_ERROR" in line for line in recordings["qemu"]["qmp0"]) == 4
    assert result.ok, format_result(result)
