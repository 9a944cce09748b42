"""The event catalog: the one source of truth for every QMP event we know.

Each event is a msgspec Struct (a *tagged union* on the ``event`` key), so a
whole line decodes to the right typed class in one C-speed pass.  The models
are *tolerant*: they hold every field either profile defines, unknown fields
are ignored, and an event name the catalog does not know decodes to
:class:`UnknownEvent` (a newer QEMU must never break a reader).

Two *profiles* say which of those fields a given emitter puts on the wire:

* ``seed`` -- exactly the spec document (``qmp-events.txt``);
* ``qemu-7.2`` -- what QEMU 7.2 emits (RESUME, POWERDOWN, reasons, node names...),
  and every other event of QEMU 7.2's schema, typed at import from the schema
  shipped in the package (:mod:`qmpevents.catalog_schema`, :data:`SCHEMA_EVENTS`).

:data:`PROFILE_FIELDS` is that table.  From it and the models the module
derives the strict per-profile validators, the shaping of outgoing event data
(:func:`shape_data`) and the documentation table (:func:`catalog_markdown`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, Union

import msgspec
from msgspec import UNSET, Struct, UnsetType, field

from qmpevents.catalog_schema import SchemaEvent, build_schema_events
from qmpevents.codec.deep import parse_json_text
from qmpevents.codec.encoder import encode_json
from qmpevents.errors import EventValidationError
from qmpevents.qapi import qemu72_schema
from qmpevents.rawtext import RawText, set_raw

Profile = Literal["seed", "qemu-7.2"]
PROFILES: Final[tuple[Profile, ...]] = ("seed", "qemu-7.2")
DEFAULT_PROFILE: Final[Profile] = "seed"


class Timestamp(Struct, frozen=True, gc=False):
    """QMP's event timestamp: host wall-clock seconds and microseconds."""

    seconds: int
    microseconds: int

    @property
    def as_float(self) -> float:
        return self.seconds + self.microseconds / 1_000_000

    @classmethod
    def from_float(cls, when: float) -> Timestamp:
        micros = round(when * 1_000_000)
        return cls(micros // 1_000_000, micros % 1_000_000)


# --- event data -------------------------------------------------------------

class EventData(Struct, frozen=True, omit_defaults=True, gc=False):
    """Base of the typed ``data`` members; fields absent on the wire are None."""


class BlockIoErrorData(EventData, frozen=True):
    """BLOCK_IO_ERROR: a guest disk I/O failed and the error policy acted."""

    device: str
    operation: str
    action: str
    node_name: str | None = field(default=None, name="node-name")
    reason: str | None = None
    nospace: bool | None = None


class GuestCauseData(EventData, frozen=True):
    """RESET and SHUTDOWN in qemu-7.2: who caused it and why."""

    guest: bool
    reason: str


class RtcChangeData(EventData, frozen=True):
    """RTC_CHANGE: the guest RTC's offset from host UTC, in seconds."""

    offset: int
    qom_path: str | None = field(default=None, name="qom-path")


class VncServerInfo(EventData, frozen=True):
    """The VNC listener an event's client is connected to."""

    host: str
    service: str
    family: str
    auth: str | None = None
    websocket: bool | None = None


class VncClientInfo(EventData, frozen=True):
    """The VNC client; the x509/SASL identity exists once authenticated."""

    host: str
    service: str
    family: str
    websocket: bool | None = None
    x509_dname: str | None = None
    sasl_username: str | None = None


class VncEventData(EventData, frozen=True):
    """VNC_CONNECTED, VNC_INITIALIZED and VNC_DISCONNECTED."""

    server: VncServerInfo
    client: VncClientInfo


# --- events -----------------------------------------------------------------

NoData = dict[str, Any] | None
"""The ``data`` of an event that has none: None, or the members a newer QEMU
added (as 4.0 did to RESET and SHUTDOWN), kept as a dict -- the event stays
known whatever it carries."""

class _Received(RawText, Struct, kw_only=True, frozen=True, gc=False):
    """What every event has, known to the catalog or not.

    ``stamp`` keeps QMP's exact seconds/microseconds; :attr:`raw` is the exact
    text it was decoded from (None for an event built locally, and for a copy
    or an unpickled one: the text is no field).  Frozen, so
    that :attr:`raw` can never disagree with the fields.  A plain-dict
    ``data`` (an unknown event's, or members a newer QEMU added to an event
    that has none) is shared by every subscriber and not copied: treat it as
    read-only, as the typed data is.  Not tracked by the garbage collector
    (``gc=False``, which msgspec requires of a Struct with a slot of its
    own): an event never refers back to itself, so it needs no cycle
    collection.
    """

    stamp: Timestamp = field(name="timestamp")

    @property
    def timestamp(self) -> float:
        """Seconds since the epoch, as a float."""
        return self.stamp.as_float

    @property
    def raw(self) -> bytes | None:
        """The exact JSON text received (without the line terminator or blanks).

        An event decoded with others from one block gets its own copy the
        first time this is read, and lets go of the block (see
        :mod:`qmpevents.rawtext`).
        """
        try:
            raw = self._raw
        except AttributeError:  # never set: built locally
            return None
        if isinstance(raw, tuple):
            shared, index = raw
            raw = shared.value(index)
            set_raw(self, raw)
        return raw

    def to_wire(self) -> dict[str, Any]:
        """The event as plain JSON values, ready for :func:`codec.encode_message`.

        The data is shared, not copied (see :func:`plain`): read-only, as the event.
        """
        config = self.__struct_config__
        wire: dict[str, Any] = {} if config.tag_field is None else {config.tag_field: config.tag}
        wire.update(plain(self))
        if wire.get("data", 0) is None:
            del wire["data"]  # QEMU omits "data" rather than send null
        return wire


def plain(value: Any) -> Any:
    """*value* as plain JSON values, as ``msgspec.to_builtins`` gives, without recursion
    into the plain parts.

    Structs (typed data) become dicts under their wire names, members left at
    their default omitted; lists of them are converted item by item.  What
    is plain already (a dict, a member typed ``Any``) is shared, not walked:
    QEMU sends values nested 1024 deep, beyond Python's recursion limit,
    which ``to_builtins`` would exhaust.  The schema bounds the nesting of
    Structs, so this recursion is bounded too.
    """
    if isinstance(value, Struct):
        omit = value.__struct_config__.omit_defaults
        out: dict[str, Any] = {}
        for info in msgspec.structs.fields(value):
            member = getattr(value, info.name)
            if member is UNSET or (omit and info.default is not msgspec.NODEFAULT
                                   and member == info.default):
                continue
            out[info.encode_name] = plain(member)
        return out
    if isinstance(value, list) and value and isinstance(value[0], Struct):
        return [plain(item) for item in value]
    return value


class Event(_Received, tag_field="event", kw_only=True, frozen=True, gc=False):
    """A catalog event: ``name``, ``timestamp`` (float seconds), typed ``data``."""

    data: Any = None

    @property
    def name(self) -> str:
        return str(self.__struct_config__.tag)


class BlockIoError(Event, tag="BLOCK_IO_ERROR", frozen=True):
    """Emitted when a disk I/O error occurs (a STOP follows when action is stop)."""

    data: BlockIoErrorData


class Reset(Event, tag="RESET", frozen=True):
    """Emitted when the virtual machine is reset."""

    data: GuestCauseData | None = None


class RtcChange(Event, tag="RTC_CHANGE", frozen=True):
    """Emitted when the guest changes its RTC time."""

    data: RtcChangeData


class Shutdown(Event, tag="SHUTDOWN", frozen=True):
    """Emitted when the virtual machine is powered down (STOP follows under -no-shutdown)."""

    data: GuestCauseData | None = None


class Stop(Event, tag="STOP", frozen=True):
    """Emitted when the virtual machine is stopped."""

    data: NoData = None


class Resume(Event, tag="RESUME", frozen=True):
    """Emitted when the virtual machine resumes execution (qemu-7.2)."""

    data: NoData = None


class Powerdown(Event, tag="POWERDOWN", frozen=True):
    """Emitted when the guest is asked to power down by ACPI (qemu-7.2)."""

    data: NoData = None


class VncConnected(Event, tag="VNC_CONNECTED", frozen=True):
    """Emitted when a VNC client connects, before any authentication."""

    data: VncEventData


class VncInitialized(Event, tag="VNC_INITIALIZED", frozen=True):
    """Emitted when a VNC session is active, after authentication if any."""

    data: VncEventData


class VncDisconnected(Event, tag="VNC_DISCONNECTED", frozen=True):
    """Emitted when a VNC connection is closed."""

    data: VncEventData


class UnknownEvent(_Received, kw_only=True, frozen=True, gc=False):
    """An event the catalog does not know (or that does not fit it): raw data kept.

    ``data`` is a dict (or None) at run time.  The type checker sees ``Any``:
    nothing is known statically of an unknown event's members, and code that
    subscribes by name (``listen("DEVICE_DELETED")``) must type-check without
    casts; subscribe by class (``listen(BlockIoError)``) for exact types.
    """

    event: str
    if TYPE_CHECKING:
        data: Any = None
    else:
        data: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.event


HAND_EVENTS: Final[tuple[type[Event], ...]] = (
    BlockIoError, Reset, RtcChange, Shutdown, Stop, Resume, Powerdown,
    VncConnected, VncInitialized, VncDisconnected,
)
"""The events whose models are written (and checked) by hand, above."""

SCHEMA_EVENTS: Final[dict[str, SchemaEvent]] = {
    built.name: built for built in build_schema_events(
        qemu72_schema(), skip={str(cls.__struct_config__.tag) for cls in HAND_EVENTS},
        event_base=Event, data_base=EventData)
}
"""Every other event of QEMU 7.2, typed from its schema (:mod:`qmpevents.catalog_schema`)."""

EVENT_TYPES: Final[dict[str, type[Event]]] = {
    **{str(cls.__struct_config__.tag): cls for cls in HAND_EVENTS},
    **{name: built.model for name, built in SCHEMA_EVENTS.items()},  # type: ignore[misc]
}
AnyEvent: Final[Any] = Union[tuple(EVENT_TYPES.values())]  # noqa: UP007 - msgspec's union
SPEC_EVENTS: Final[tuple[str, ...]] = (
    "BLOCK_IO_ERROR", "RESET", "RTC_CHANGE", "SHUTDOWN", "STOP",
    "VNC_CONNECTED", "VNC_DISCONNECTED", "VNC_INITIALIZED",
)

# --- profiles ---------------------------------------------------------------
# For each profile and event: None = no "data" key on the wire; otherwise the
# data members by JSON name, True when required, False when optional, or a
# nested table for an object member.

FieldTable = dict[str, "bool | FieldTable"]

_SEED_VNC_SERVER: FieldTable = {"host": True, "service": True, "family": True, "auth": False}
_SEED_VNC_CLIENT: FieldTable = {"host": True, "service": True, "family": True}
_SEED_VNC_CLIENT_AUTH: FieldTable = {**_SEED_VNC_CLIENT, "x509_dname": False,
                                     "sasl_username": False}
_Q72_VNC_SERVER: FieldTable = {**_SEED_VNC_SERVER, "websocket": True}
_Q72_VNC_CLIENT: FieldTable = {**_SEED_VNC_CLIENT, "websocket": True}
_Q72_VNC_CLIENT_AUTH: FieldTable = {**_SEED_VNC_CLIENT_AUTH, "websocket": True}
_GUEST_CAUSE: FieldTable = {"guest": True, "reason": True}

PROFILE_FIELDS: Final[dict[Profile, dict[str, FieldTable | None]]] = {
    "seed": {
        "BLOCK_IO_ERROR": {"device": True, "operation": True, "action": True},
        "RESET": None,
        "RTC_CHANGE": {"offset": True},
        "SHUTDOWN": None,
        "STOP": None,
        "VNC_CONNECTED": {"server": _SEED_VNC_SERVER, "client": _SEED_VNC_CLIENT},
        "VNC_DISCONNECTED": {"server": _SEED_VNC_SERVER, "client": _SEED_VNC_CLIENT_AUTH},
        "VNC_INITIALIZED": {"server": _SEED_VNC_SERVER, "client": _SEED_VNC_CLIENT_AUTH},
    },
    "qemu-7.2": {
        "BLOCK_IO_ERROR": {"device": True, "node-name": True, "operation": True,
                           "action": True, "nospace": False, "reason": True},
        "RESET": _GUEST_CAUSE,
        "RTC_CHANGE": {"offset": True, "qom-path": True},
        "SHUTDOWN": _GUEST_CAUSE,
        "STOP": None,
        "RESUME": None,
        "POWERDOWN": None,
        "VNC_CONNECTED": {"server": _Q72_VNC_SERVER, "client": _Q72_VNC_CLIENT},
        "VNC_DISCONNECTED": {"server": _Q72_VNC_SERVER, "client": _Q72_VNC_CLIENT_AUTH},
        "VNC_INITIALIZED": {"server": _Q72_VNC_SERVER, "client": _Q72_VNC_CLIENT_AUTH},
    },
}

PROFILE_FIELDS["qemu-7.2"].update(
    {name: built.table for name, built in SCHEMA_EVENTS.items()})

#: Values a string member may take (the spec's enumerations).
ENUMS: Final[dict[str, tuple[str, ...]]] = {
    "operation": ("read", "write"),
    "action": ("ignore", "report", "stop"),
    "family": ("ipv4", "ipv6", "unix", "vsock", "unknown"),
}


def shape_data(name: str, data: Mapping[str, Any] | None, profile: Profile) -> Any:
    """Keep only what *profile* puts on the wire for event *name*.

    Emitters build the richest data they know; the profile decides what is
    sent.  Returns None when the event carries no ``data`` key at all.
    Optional members whose value is None are left out, as QEMU omits them.
    """
    tables = PROFILE_FIELDS[profile]
    if name not in tables:
        raise KeyError(f"event {name} is not in the {profile} profile")
    table = tables[name]
    if table is None or data is None:
        return None
    assert isinstance(table, dict)
    return _shape(data, table)


def _shape(data: Mapping[str, Any], table: FieldTable) -> dict[str, Any]:
    shaped: dict[str, Any] = {}
    for key, rule in table.items():
        value = data.get(key)
        if value is None:
            continue
        shaped[key] = _shape(value, rule) if isinstance(rule, dict) else value
    return shaped


def events_of(profile: Profile) -> tuple[str, ...]:
    """The event names *profile* can emit."""
    return tuple(PROFILE_FIELDS[profile])


# --- strict validation ------------------------------------------------------

def _strict_struct(name: str, table: FieldTable, model: type[Struct]) -> type[Struct]:
    """A Struct accepting exactly *table*'s members with *model*'s types."""
    types = {info.encode_name: info.type for info in msgspec.structs.fields(model)}
    members: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for key, rule in table.items():
        member_type = _non_optional(types[key])
        if isinstance(rule, dict):
            member_type = _strict_struct(f"{name}_{key}", rule, member_type)
        elif key in ENUMS:
            member_type = Literal[ENUMS[key]]
        attr = key.replace("-", "_")
        if rule is False:
            members.append((attr, member_type | UnsetType, field(default=UNSET, name=key)))
        else:
            members.append((attr, member_type, field(name=key)))
    return msgspec.defstruct(name, members, forbid_unknown_fields=True, kw_only=True)


def _non_optional(tp: Any) -> Any:
    args = [arg for arg in getattr(tp, "__args__", (tp,)) if arg is not type(None)]
    return args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007


def _strict_decoder(profile: Profile) -> msgspec.json.Decoder[Any]:
    classes: list[type[Struct]] = []
    for event_name, table in PROFILE_FIELDS[profile].items():
        if profile == "qemu-7.2" and event_name in SCHEMA_EVENTS:
            classes.append(SCHEMA_EVENTS[event_name].strict)
            continue
        members: list[tuple[str, Any] | tuple[str, Any, Any]] = [
            ("timestamp", _strict_struct("Timestamp", {"seconds": True, "microseconds": True},
                                         Timestamp)),
        ]
        if table is not None:
            model = msgspec.structs.fields(EVENT_TYPES[event_name])
            data_type = next(info.type for info in model if info.encode_name == "data")
            members.append(("data", _strict_struct(f"{event_name}_data", table,
                                                   _non_optional(data_type))))
        classes.append(msgspec.defstruct(
            f"{event_name}_{profile}", members, tag_field="event", tag=event_name,
            forbid_unknown_fields=True, kw_only=True))
    return msgspec.json.Decoder(Union[tuple(classes)])  # noqa: UP007


_STRICT: Final[dict[Profile, msgspec.json.Decoder[Any]]] = {
    profile: _strict_decoder(profile) for profile in PROFILES
}


def validate(message: bytes | Event | UnknownEvent, profile: Profile = DEFAULT_PROFILE) -> None:
    """Check an event against *profile* exactly; raise :class:`EventValidationError`.

    The error names the event and says precisely what is wrong (missing,
    unknown or mistyped member, with its JSON path), in msgspec's words.
    """
    if isinstance(message, Event | UnknownEvent):
        text = message.raw
        if text is None:
            text = encode_json(message.to_wire()).encode()
        name = message.name
    else:
        text = message
        try:
            name = str(_decode_any(message).get("event", "?"))
        except (msgspec.DecodeError, AttributeError):
            raise EventValidationError("?", "not a JSON object") from None
    strict = _STRICT[profile]
    try:
        try:
            strict.decode(text)
        except RecursionError:  # nested deeper than msgspec goes: convert does not recurse
            msgspec.convert(parse_json_text(text), strict.type)
    except msgspec.ValidationError as exc:
        problem = str(exc)
        if "`$.event`" in problem:
            problem = f"not an event of the {profile} profile"
        raise EventValidationError(name, problem) from None


# --- decoding ---------------------------------------------------------------


def _decode_any(text: bytes) -> Any:
    """Plain JSON values of *text*, whatever its nesting (QEMU allows 1024 levels)."""
    try:
        return msgspec.json.decode(text)
    except RecursionError:
        return parse_json_text(text)

_TYPED = msgspec.json.Decoder(AnyEvent)
_UNKNOWN = msgspec.json.Decoder(UnknownEvent)


def decode_event(line: bytes) -> Event | UnknownEvent:
    """One event line to its typed model; never fails on unknown names or members.

    Raises ``msgspec.DecodeError`` only when *line* is not an event object at all.
    """
    try:
        try:
            event: Event | UnknownEvent = _TYPED.decode(line)
        except msgspec.ValidationError:
            event = _UNKNOWN.decode(line)
    except RecursionError:  # nested deeper than msgspec goes (QEMU allows 1024 levels)
        value = parse_json_text(line)
        if not isinstance(value, dict):
            raise msgspec.DecodeError("not an event object") from None
        return event_from_value(value, line)
    set_raw(event, line)
    return event


decode_catalog_event: Final[Callable[[bytes], Event]] = _TYPED.decode
"""One JSON text as a catalog event (``msgspec.ValidationError`` for any other
event), with no ``raw`` attached."""


def decode_event_lines(text: bytes) -> list[Event]:
    """Every JSON value of *text* (separated by JSON whitespace) as a catalog event.

    Raises ``msgspec.DecodeError`` (a ``ValidationError`` for an unknown event)
    unless every value is one.  msgspec's ``decode_lines`` takes any JSON
    whitespace between values, not only newlines, as QEMU's parser does.
    """
    events: list[Event] = _TYPED.decode_lines(text)
    return events


def event_from_value(value: Mapping[str, Any], raw: bytes | None = None) -> Event | UnknownEvent:
    """The typed model of an event already parsed into plain values."""
    event: Event | UnknownEvent
    try:
        event = msgspec.convert(value, AnyEvent)
    except msgspec.ValidationError:
        event = msgspec.convert(value, UnknownEvent)
    if raw is not None:
        set_raw(event, raw)
    return event


def build_event(name: str, data: Mapping[str, Any] | None, stamp: Timestamp,
                profile: Profile) -> dict[str, Any]:
    """The wire form of an event as *profile* emits it (plain JSON values)."""
    wire: dict[str, Any] = {"event": name, "timestamp": {"seconds": stamp.seconds,
                                                         "microseconds": stamp.microseconds}}
    shaped = shape_data(name, data, profile)
    if shaped is not None:
        wire["data"] = shaped
    return wire


# --- documentation ----------------------------------------------------------

def catalog_markdown() -> str:
    """The event table of the README, generated so it cannot drift from the code."""
    lines = ["| event | seed data | qemu-7.2 data |", "|---|---|---|"]
    names = [str(cls.__struct_config__.tag) for cls in HAND_EVENTS]
    for name in sorted(names, key=lambda n: (n not in SPEC_EVENTS, n)):
        cells = []
        for profile in PROFILES:
            if name not in PROFILE_FIELDS[profile]:
                cells.append("(not emitted)")
                continue
            table = PROFILE_FIELDS[profile][name]
            cells.append("no `data`" if table is None else _describe(table))
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    qemu_events = qemu72_schema().event_names()
    typed = [name for name in qemu_events if name in EVENT_TYPES]
    lines += ["", f"Events typed in the qemu-7.2 profile: {len(typed)} of QEMU 7.2's "
              f"{len(qemu_events)}. Besides those above, from QEMU's schema (members as "
              "the schema defines them): "
              + ", ".join(sorted(SCHEMA_EVENTS)) + "."]
    return "\n".join(lines) + "\n"


def _describe(table: FieldTable) -> str:
    parts = []
    for key, rule in table.items():
        if isinstance(rule, dict):
            parts.append(f"`{key}`: {{{_describe(rule)}}}")
        else:
            parts.append(f"`{key}`" + ("" if rule else "?"))
    return ", ".join(parts)

