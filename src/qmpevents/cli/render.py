"""How events look on a terminal and in a pipe.

On a terminal: one coloured line per event (time, VM, event, key data).
Piped: the same line without colour, or with ``--json`` one JSON object per
line with the source VM added, so ``jq`` can take it from there.

Rendering never fails on what a server sent: an event that decodes but is odd
(a VNC ``client`` that is not an object, a timestamp no calendar holds) still
gets its line, and :func:`raw_line` shows anything else as the bytes received.
"""

from __future__ import annotations

import re
import time
from typing import Any

import msgspec

from qmpevents.catalog import Event, UnknownEvent

_COLOURS = {
    "BLOCK_IO_ERROR": "31", "SHUTDOWN": "31", "STOP": "33", "RESUME": "32",
    "RESET": "35", "RTC_CHANGE": "36", "POWERDOWN": "33",
}
_VNC_COLOUR = "34"
_DIM = "2"

_encode = msgspec.json.Encoder().encode

# C0 and C1 controls (ESC, CR, LF, BEL, ...): what a peer sends must not drive the
# terminal (colours, titles, a forged line), so they are shown escaped.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def _safe(text: str) -> str:
    """*text* (from a server or a recording) with its control characters escaped."""
    return _CONTROLS.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _paint(text: str, code: str, colour: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if colour else text


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        items: list[tuple[str, Any]] = []
        for key, inner in value.items():
            items.extend(_flatten(inner, f"{prefix}{key}."))
        return items
    return [(prefix[:-1], value)]


def data_dict(event: Event | UnknownEvent) -> dict[str, Any]:
    """The event's data as plain JSON values ({} when there is none)."""
    data = msgspec.to_builtins(event.data) if event.data is not None else {}
    return data if isinstance(data, dict) else {"value": data}


def summary(event: Event | UnknownEvent) -> str:
    """Key data as ``key=value`` pairs; VNC events shortened to the client.

    The short form needs ``client`` and ``server`` to be objects; a VNC event
    whose members are anything else is shown in full, as any other event.
    """
    data = data_dict(event)
    client, server = data.get("client"), data.get("server", {})
    if event.name.startswith("VNC_") and isinstance(client, dict) and isinstance(server, dict):
        parts = [f"client={client.get('host')}:{client.get('service')}",
                 f"server={server.get('host')}:{server.get('service')}"]
        if server.get("auth"):
            parts.append(f"auth={server['auth']}")
        return " ".join(parts)
    return " ".join(f"{key}={_encode(value).decode() if not isinstance(value, str) else value}"
                    for key, value in _flatten(data))


def clock_time(event: Event | UnknownEvent) -> str:
    """``12:00:01.250`` in local time, or the seconds as sent when no calendar holds them."""
    try:
        stamp = time.strftime("%H:%M:%S", time.localtime(event.timestamp))
    except (OverflowError, OSError, ValueError):  # year beyond time_t, NaN...
        return f"{event.stamp.seconds}s"
    return f"{stamp}.{event.stamp.microseconds // 1000 % 1000:03d}"


def text_line(vm: str, event: Event | UnknownEvent, *, colour: bool) -> str:
    """``12:00:01.250 vm1 STOP key=value...``."""
    name = event.name
    code = _VNC_COLOUR if name.startswith("VNC_") else _COLOURS.get(name, "1")
    line = (f"{_paint(clock_time(event), _DIM, colour)} {_paint(_safe(vm), '1', colour)} "
            f"{_paint(_safe(name), code, colour)}")
    details = _safe(summary(event))
    return f"{line} {details}" if details else line


def json_line(vm: str, event: Event | UnknownEvent) -> str:
    """The event's exact JSON with ``"vm"`` added first."""
    raw = event.raw
    body = raw.decode() if raw is not None else _encode(event.to_wire()).decode()
    inner = body.strip()[1:]
    return '{"vm": ' + _encode(vm).decode() + (", " + inner if inner.strip() != "}" else "}")


def raw_line(vm: str, raw: bytes, *, colour: bool) -> str:
    """A message that cannot be shown as an event: ``? vm (not an event) BYTES``."""
    text = _safe(raw.decode("utf-8", "backslashreplace").strip())
    return f"{_paint('?', _DIM, colour)} {_paint(_safe(vm), '1', colour)} (not an event) {text}"
