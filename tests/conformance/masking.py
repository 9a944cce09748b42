"""What varies between runs (and between QEMU and the simulator), hidden before comparing."""

from __future__ import annotations

import re

_RULES: list[tuple[re.Pattern[bytes], bytes]] = [
    (re.compile(rb'"seconds": \d+, "microseconds": \d+'), b'"seconds": S, "microseconds": U'),
    (re.compile(rb'"service": "\d+"'), b'"service": "PORT"'),
    (re.compile(rb"#block\d+"), b"#blockN"),
    (re.compile(rb'"offset": -?\d+'), b'"offset": OFFSET'),
    # the greeting's version and package (query-version is not masked)
    (re.compile(rb'^\{"QMP": \{"version": \{"qemu": \{[^}]*\}, "package": "[^"]*"\}'),
     b'{"QMP": {"version": {"qemu": {VERSION}, "package": "PACKAGE"}'),
    # pretty=on: a timestamp's members on their own lines (an event's, at depth 2)
    (re.compile(rb'^        "seconds": \d+,\r\n$'), b'        "seconds": S,\r\n'),
    (re.compile(rb'^        "microseconds": \d+\r\n$'), b'        "microseconds": U\r\n'),
    # pretty=on: the greeting's version (QMP.version.qemu.* at depth 4, package at 3)
    (re.compile(rb'^                "(micro|minor|major)": \d+'), rb'                "\1": N'),
    (re.compile(rb'^            "package": "[^"]*"'), b'            "package": "PACKAGE"'),
]


def mask(line: bytes) -> bytes:
    """*line* with timestamps, ports, auto node names, RTC offsets and the greeting's
    version hidden; everything else (framing, key order, CRLF) is kept byte for byte."""
    for pattern, replacement in _RULES:
        line = pattern.sub(replacement, line)
    return line
