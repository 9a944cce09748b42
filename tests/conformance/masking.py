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
]


def mask(line: bytes) -> bytes:
    """*line* with timestamps, ports, auto node names, RTC offsets and the greeting's
    version hidden; everything else (framing, key order, CRLF) is kept byte for byte."""
    for pattern, replacement in _RULES:
        line = pattern.sub(replacement, line)
    return line
