"""``--event`` / ``--match`` parsed into the client's EventFilter (in-process: fast)."""

from __future__ import annotations

import pytest

from qmpevents.catalog import decode_event
from qmpevents.cli.filters import FilterError, build_filter
from qmpevents.client import EventFilter, QMPEvent


def event(text: str) -> QMPEvent:
    return decode_event(('{"timestamp": {"seconds": 1, "microseconds": 0}, ' + text[1:]).encode())


STOP = event('{"event": "STOP"}')
IO_STOP = event('{"event": "BLOCK_IO_ERROR", "data": {"device": "123", "node-name": "#b1",'
                ' "operation": "write", "action": "stop"}}')
RTC = event('{"event": "RTC_CHANGE", "data": {"offset": 78}}')
VNC = event('{"event": "VNC_CONNECTED", "data": {"server": {"host": "127.0.0.1", "service":'
            ' "5900", "family": "ipv4", "websocket": false, "auth": "none"}, "client": {"host":'
            ' "127.0.0.1", "service": "4000", "family": "ipv4", "websocket": false}}}')
ALL = [STOP, IO_STOP, RTC, VNC]


def passing(names: list[str], matches: list[str]) -> list[str]:
    chosen = build_filter(names, matches)
    assert isinstance(chosen, EventFilter)  # the client's filter, not a copy of it
    return [e.name for e in ALL if chosen(e)]


def test_names_are_case_insensitive_globs() -> None:
    assert passing([], []) == ["STOP", "BLOCK_IO_ERROR", "RTC_CHANGE", "VNC_CONNECTED"]
    assert passing(["vnc_*", "stop"], []) == ["STOP", "VNC_CONNECTED"]


@pytest.mark.parametrize(("match", "expected"), [
    ("data.action=stop", ["BLOCK_IO_ERROR"]),
    ("action=stop", ["BLOCK_IO_ERROR"]),
    ("offset=78", ["RTC_CHANGE"]),            # JSON number
    ('offset="78"', []),                      # a JSON string is only a string
    ("device=123", ["BLOCK_IO_ERROR"]),       # JSON-looking text matches the string too
    ("node-name=#b1", ["BLOCK_IO_ERROR"]),
    ("node_name=#b1", ["BLOCK_IO_ERROR"]),
    ("data.server.host=127.0.0.1", ["VNC_CONNECTED"]),
    ("server.websocket=false", ["VNC_CONNECTED"]),
    ("server.websocket=False", []),
    ("nospace=true", []),                     # a member absent from this event never matches
])
def test_match(match: str, expected: list[str]) -> None:
    assert passing([], [match]) == expected


def test_all_conditions_must_hold() -> None:
    assert passing(["BLOCK_*"], ["action=stop", "operation=write"]) == ["BLOCK_IO_ERROR"]
    assert passing(["BLOCK_*"], ["action=stop", "operation=read"]) == []


@pytest.mark.parametrize(("names", "spec"), [
    ([], "missing=null"),              # no catalog event has it: an error, not silence
    (["RTC_*"], "action=stop"),        # the listed events do not have it
    (["BLOCK_IO_ERROR"], "data.actoin=stop"),
])
def test_a_key_no_listed_event_has_is_a_usage_error(names: list[str], spec: str) -> None:
    with pytest.raises(FilterError, match="no member of that name"):
        build_filter(names, [spec])


@pytest.mark.parametrize("spec", ["action", "=stop", "data.=x", "data=x", "a..b=1"])
def test_bad_match_is_a_usage_error(spec: str) -> None:
    with pytest.raises(FilterError):
        build_filter([], [spec])


def test_same_key_twice_is_a_usage_error() -> None:
    with pytest.raises(FilterError):
        build_filter([], ["action=stop", "data.action=report"])


def test_text_lines_escape_what_would_drive_the_terminal() -> None:
    """A hostile server's names and data cannot forge lines, recolour or retitle a terminal."""
    from qmpevents.catalog import decode_event
    from qmpevents.cli.render import raw_line, text_line

    event = decode_event(b'{"event": "X\\u001b]0;pwned\\u0007\\nFORGED", "timestamp": '
                         b'{"seconds": 1, "microseconds": 0}, "data": {"k": "\\u001b[2J"}}')
    line = text_line("\x1b[31mEVIL\nFAKE 00:00:00.000 other SHUTDOWN\r", event, colour=False)
    raw = raw_line("vm\x1b[2J", b'["\x1b[2J\n"]', colour=False)
    for text in (line, raw):
        assert not any(ord(char) < 0x20 or 0x7f <= ord(char) <= 0x9f for char in text), text
    assert "\\x1b[31mEVIL\\x0aFAKE" in line and "\\x07\\x0aFORGED" in line
