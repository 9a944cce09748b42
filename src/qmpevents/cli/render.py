"""How events look on a terminal and in a pipe.

On a terminal: one coloured line per event (time, VM, event, key data).
Piped: the same line without colour, or with ``--json`` one JSON object per
line with the source VM added, so ``jq`` can take it from there.

Rendering never fails on what a server sent: an event that decodes but is odd
(a VNC ``client`` that is not an object, a timestamp no calendar holds) still
gets its line, and :func:`raw_line` shows anything else as the bytes received.

Nothing a server controls can drive the terminal or pass for the tool's own
output (:mod:`qmpevents.cli.escape`): text values are quoted when they hold
a space, ``=``, a quote or a backslash, non-printable characters are escaped,
and a JSON line's ``"vm"`` (and ``"host"``, which ``watch nats://`` puts
first) is always the tool's: an event member of either name is left out.
A number beyond a double's range (``1e400``, which the client holds as
infinity) is ``inf`` in text, as QEMU prints it, and ``1e999`` in JSON (a
JSON number beyond the range, read back as the same infinity), never ``null``.
"""

from __future__ import annotations

import time
from typing import Any, Final

import msgspec

from qmpevents.catalog import Event, UnknownEvent, plain
from qmpevents.cli.escape import json_safe, safe, value_text
from qmpevents.cli.jsontext import NonFinite, dumps
from qmpevents.codec.deep import parse_json_text

_COLOURS = {
    "BLOCK_IO_ERROR": "31", "SHUTDOWN": "31", "STOP": "33", "RESUME": "32",
    "RESET": "35", "RTC_CHANGE": "36", "POWERDOWN": "33",
}
_VNC_COLOUR = "34"
_DIM = "2"

_encode = msgspec.json.Encoder().encode

RESERVED: Final = ("vm", "host")
"""The members a JSON line's source fields take; an event's own are left out."""


_TEXT_NON_FINITE: Final[NonFinite] = ("inf", "-inf", "nan")
_JSON_NON_FINITE: Final[NonFinite] = ("1e999", "-1e999", "null")


def encode_value(value: Any, *, text: bool = False, indent: int | None = None) -> str:
    """*value* as compact JSON (or laid out with *indent*); an infinite number as
    ``1e999`` (``inf`` with *text*).  Without recursion (:mod:`~qmpevents.cli.jsontext`)."""
    return dumps(value, indent=indent, non_finite=_TEXT_NON_FINITE if text else _JSON_NON_FINITE)


def _paint(text: str, code: str, colour: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if colour else text


def _flatten(value: Any) -> list[tuple[str, Any]]:
    """``(dotted.path, value)`` of every member that is not an object, in order.

    With an explicit stack: objects nested 1024 deep are valid to QEMU.
    """
    items: list[tuple[str, Any]] = []
    todo: list[tuple[str, Any]] = [("", value)]
    while todo:
        prefix, inner = todo.pop()
        if isinstance(inner, dict):
            todo.extend((f"{prefix}{key}.", member)
                        for key, member in reversed(inner.items()))
        else:
            items.append((prefix[:-1], inner))
    return items


def data_dict(event: Event | UnknownEvent) -> dict[str, Any]:
    """The event's data as plain JSON values ({} when there is none)."""
    data = plain(event.data) if event.data is not None else {}
    return data if isinstance(data, dict) else {"value": data}


def summary(event: Event | UnknownEvent) -> str:
    """Key data as ``key=value`` pairs; VNC events shortened to the client.

    The short form needs ``client`` and ``server`` to be objects; a VNC event
    whose members are anything else is shown in full, as any other event.
    """
    data = data_dict(event)
    client, server = data.get("client"), data.get("server", {})
    if event.name.startswith("VNC_") and isinstance(client, dict) and isinstance(server, dict):
        parts = [f"{end}={value_text(_endpoint(peer))}"
                 for end, peer in (("client", client), ("server", server))]
        if server.get("auth"):
            parts.append(f"auth={_shown(server['auth'])}")
        return " ".join(parts)
    return " ".join(f"{value_text(key)}={_shown(value)}" for key, value in _flatten(data))


def _endpoint(peer: dict[str, Any]) -> str:
    return f"{peer.get('host')}:{peer.get('service')}"


def _shown(value: Any) -> str:
    """One value of a text line: a string as :func:`value_text` shows it, anything else
    as compact JSON with its non-printable characters escaped."""
    return value_text(value) if isinstance(value, str) else safe(encode_value(value, text=True))


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
    line = (f"{_paint(clock_time(event), _DIM, colour)} {_paint(value_text(vm), '1', colour)} "
            f"{_paint(value_text(name), code, colour)}")
    details = summary(event)
    return f"{line} {details}" if details else line


def json_line(vm: str, event: Event | UnknownEvent) -> str:
    """The event's exact JSON with ``"vm"`` added first, made terminal-safe
    (:func:`~qmpevents.cli.escape.json_safe`); an event member named ``vm`` or
    ``host`` is left out, so these are always the tool's."""
    return json_prefix(vm) + json_rest(event)


def json_prefix(vm: str) -> str:
    """How :func:`json_line` starts: ``{"vm": ...`` (terminal-safe)."""
    return json_safe('{"vm": ' + _encode(vm).decode())


def json_rest(event: Event | UnknownEvent) -> str:
    """What follows :func:`json_prefix` in a JSON line: the event's own members (but
    ``vm`` and ``host``), then ``}`` (terminal-safe; escaping is character by character,
    so the two halves are the whole line's)."""
    raw = event.raw
    body = event_json(event)
    if raw is not None and ('"vm"' in body or '"host"' in body or "\\u" in body):
        body = _without_reserved(raw) or body  # maybe (escaped keys too)
    inner = body.strip()[1:]
    return json_safe(", " + inner if inner.strip() != "}" else "}")


def event_json(event: Event | UnknownEvent) -> str:
    """The event's JSON text: its ``raw`` as received, or for an event without one
    (made locally, or sent in QEMU's syntax that is not JSON) its values encoded."""
    raw = event.raw
    if raw is not None:
        try:
            return raw.decode()
        except UnicodeDecodeError:  # bytes msgspec skipped unchecked (a member it does not
            pass                    # model): not JSON text, so shown by its values
    return encode_value(event.to_wire())


def _without_reserved(raw: bytes) -> str | None:
    """*raw* without its top-level ``vm``/``host`` members, or None if it has none."""
    try:
        members = msgspec.json.decode(raw)  # decoded once already: valid JSON
    except (RecursionError, msgspec.DecodeError):
        # Nested deeper than msgspec goes (QEMU allows 1024 levels), or a number
        # beyond a double (1e400, which QEMU reads as inf): the exact parser's.
        members = parse_json_text(raw)
    if not isinstance(members, dict) or not any(name in members for name in RESERVED):
        return None
    return encode_value({key: value for key, value in members.items() if key not in RESERVED})


def raw_line(vm: str, raw: bytes, *, colour: bool) -> str:
    """A message that cannot be shown as an event: ``? vm (not an event) BYTES``."""
    text = safe(raw.decode("utf-8", "backslashreplace").strip())
    return (f"{_paint('?', _DIM, colour)} {_paint(value_text(vm), '1', colour)} "
            f"(not an event) {text}")
