"""Where an event goes in JetStream and how it is named there (no I/O).

Subject ``qmp.<host>.<vm>.<EVENT>``, each name one subject token, and no two
names the same token (:func:`token`, undone by :func:`untoken`): printable
ASCII but ``.``, ``*``, ``>`` and ``%`` is kept as it is (``web1``,
``BLOCK_IO_ERROR``, ``vm-101``, ``a/b``); every other character (those four,
spaces, controls, anything beyond ASCII) is written as ``%XX`` per UTF-8
byte (``web.1`` -> ``web%2E1``, ``STOP/x y`` -> ``STOP/x%20y``), the
empty name as ``%`` alone, and a token over 128 characters is cut with a
digest of the whole name (``%%`` and 16 hex digits).  So a subject filter names exactly one host, VM
or event, and the subject of a message without our headers still gives its
names back.  The headers carry the exact host and VM names.

The message id ``Nats-Msg-Id`` is ``host/vm/seconds.micros/EVENT/seq``, made
from (host, vm, timestamp, event, per-VM sequence) with ``%`` and ``/`` of
the names written ``%25`` and ``%2F``: the five fields can be told apart, so
two events share an id only if they share all five.  Re-publishing the same
spooled record gives the same id (it is spooled with the record), so
JetStream's duplicate window makes retries safe.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

SUBJECT_PREFIX = "qmp"
STREAM_SUBJECTS = f"{SUBJECT_PREFIX}.>"
DEFAULT_STREAM = "QMP"

HOST_HEADER = "Qmp-Host"
VM_HEADER = "Qmp-Vm"
RECEIVED_HEADER = "Qmp-Received"
SEQUENCE_HEADER = "Qmp-Seq"
MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_STREAM_HEADER = "Nats-Expected-Stream"

#: What a subject token keeps as it is: printable ASCII but ``.``, ``*``, ``>``, ``%``.
_PLAIN_TOKEN = re.compile(r"[!-$&-)+-\-/-=?-~]+")
#: What a message id's field keeps as it is.
_ID_ESCAPES = str.maketrans({"%": "%25", "/": "%2F"})
_ENCODING = ("utf-8", "surrogatepass")  # a JSON string may hold a lone surrogate


def _escaped(char: str) -> str:
    if _PLAIN_TOKEN.fullmatch(char):
        return char
    return "".join(f"%{byte:02X}" for byte in char.encode(*_ENCODING))


#: A longer token is cut, with a digest of the whole name (the server refuses a protocol
#: line over 4 KiB and drops the connection: one VM's long name would stop a host's agent).
MAX_TOKEN = 128
_KEPT = 96


def token(name: str) -> str:
    """*name* as one subject token, different for every name (``web.1`` -> ``web%2E1``;
    empty -> ``%``; over :data:`MAX_TOKEN` characters: its first ones, ``%%`` and a digest
    of it, which no shorter name's token holds)."""
    if len(name) <= MAX_TOKEN and _PLAIN_TOKEN.fullmatch(name):
        return name
    made = "".join(map(_escaped, name)) or "%"
    if len(made) <= MAX_TOKEN:
        return made
    kept = made[:_KEPT]
    cut = kept.rfind("%", _KEPT - 2)
    digest = hashlib.blake2b(name.encode(*_ENCODING), digest_size=8).hexdigest()
    return f"{kept[:cut] if cut >= 0 else kept}%%{digest}"


_ESCAPE = re.compile(r"(?:%[0-9A-F]{2})+")


def untoken(text: str) -> str:
    """The name :func:`token` made *text* from (``%`` alone: the empty name; a long name's
    cut token is given back as it is)."""
    if text == "%":
        return ""
    if "%%" in text:
        return text
    return _ESCAPE.sub(lambda m: bytes.fromhex(m[0].replace("%", "")).decode(*_ENCODING),
                       text)


@lru_cache(maxsize=4096)  # a host has few (vm, event) pairs: the agent asks per event
def subject(host: str, vm: str, event: str) -> str:
    """``qmp.<host>.<vm>.<EVENT>``."""
    return f"{SUBJECT_PREFIX}.{token(host)}.{token(vm)}.{token(event)}"


def _id_field(name: str) -> str:
    return name.translate(_ID_ESCAPES) if "%" in name or "/" in name else name


def message_id(host: str, vm: str, seconds: int, microseconds: int, event: str,
               sequence: int) -> str:
    """The JetStream de-duplication id of one event."""
    return (f"{_id_field(host)}/{_id_field(vm)}/{seconds}.{microseconds:06d}/"
            f"{_id_field(event)}/{sequence}")


def event_of(msg_id: str) -> str:
    """The event name in a message id made by :func:`message_id`."""
    field = msg_id.rsplit("/", 2)[1]
    return field.replace("%2F", "/").replace("%25", "%") if "%" in field else field


def message_headers(host: str, vm: str, received: float, sequence: int, msg_id: str,
                    stream: str) -> dict[str, str]:
    """The headers of one message (and ``Nats-Expected-Stream``: a wrong stream is refused)."""
    return {HOST_HEADER: host, VM_HEADER: vm, RECEIVED_HEADER: f"{received:.6f}",
            SEQUENCE_HEADER: str(sequence), MSG_ID_HEADER: msg_id,
            EXPECTED_STREAM_HEADER: stream}
