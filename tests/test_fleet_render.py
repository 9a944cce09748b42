"""``watch nats:// --json`` lines: made per (host, VM) once, the same as made per event."""

from __future__ import annotations

import json

import pytest

from qmpevents.catalog import decode_event
from qmpevents.cli.render import json_line
from qmpevents.cli.stream import FleetJsonLines, fleet_json_line

RAWS = [
    b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}',
    b'  {"event": "RTC_CHANGE", "data": {"offset": -3},'
    b' "timestamp": {"seconds": 1, "microseconds": 2}}\r\n',
    b'{"event":"X_UNKNOWN","data":{"a":[1,"\\u00e9"]},"timestamp":{"seconds":1,"microseconds":0}}',
    # members the tool's own names take (left out), control characters (escaped)
    b'{"event": "STOP", "vm": "forged", "host": "x", "timestamp": {"seconds": 1,'
    b' "microseconds": 2}}',
    b'{"event": "X_ODD", "data": {"s": "\xc2\x9b31m\\u001b"},\t"timestamp":'
    b' {"seconds": 1, "microseconds": 2}}',
]
NAMES = [("web1", "vm0"), ("h\u00f4te", 'q"uote\\d'), ("", "\x1b[31m"), ("h", "line\nbreak"),
         ("\x9b31m", "\u2028vm")]  # C1 and other non-printables (from the headers)


@pytest.mark.parametrize("raw", RAWS)
def test_the_same_line_as_fleet_json_line(raw: bytes) -> None:
    lines = FleetJsonLines()
    event = decode_event(raw)
    for _ in range(2):  # made, then from the cache
        for host, vm in NAMES:
            line = lines(host, vm, event)
            assert line == fleet_json_line(host, vm, json_line(vm, event))
            assert line.isprintable()
            parsed = json.loads(line)
            assert (parsed["host"], parsed["vm"], parsed["event"]) == (host, vm, event.name)


def test_the_cache_is_bounded() -> None:
    lines = FleetJsonLines()
    event = decode_event(RAWS[0])
    for n in range(FleetJsonLines.MAX_PREFIXES + 10):
        assert json.loads(lines("h", f"vm{n}", event))["vm"] == f"vm{n}"
    assert len(lines._prefixes) <= FleetJsonLines.MAX_PREFIXES
