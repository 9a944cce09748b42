"""Where an event goes in JetStream and how it is named there (no I/O).

Subject ``qmp.<host>.<vm>.<EVENT>``: NATS subject tokens may not contain
``.``, ``*``, ``>`` or white space, so those characters become ``_`` in the
subject; the headers carry the exact host and VM names.  The message id
``Nats-Msg-Id`` is derived from (host, vm, timestamp, event, per-VM
sequence): re-publishing the same spooled record gives the same id, so
JetStream's duplicate window makes retries safe.
"""

from __future__ import annotations

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

_UNSAFE = re.compile(r"[.*>\s]")


def token(name: str) -> str:
    """*name* as one subject token (``web.1`` -> ``web_1``; empty -> ``_``)."""
    return _UNSAFE.sub("_", name) or "_"


@lru_cache(maxsize=4096)  # a host has few (vm, event) pairs: the agent asks per event
def subject(host: str, vm: str, event: str) -> str:
    """``qmp.<host>.<vm>.<EVENT>``."""
    return f"{SUBJECT_PREFIX}.{token(host)}.{token(vm)}.{token(event)}"


def message_id(host: str, vm: str, seconds: int, microseconds: int, event: str,
               sequence: int) -> str:
    """The JetStream de-duplication id of one event."""
    return f"{host}/{vm}/{seconds}.{microseconds:06d}/{event}/{sequence}"


def message_headers(host: str, vm: str, received: float, sequence: int, msg_id: str,
                    stream: str) -> dict[str, str]:
    """The headers of one message (and ``Nats-Expected-Stream``: a wrong stream is refused)."""
    return {HOST_HEADER: host, VM_HEADER: vm, RECEIVED_HEADER: f"{received:.6f}",
            SEQUENCE_HEADER: str(sequence), MSG_ID_HEADER: msg_id,
            EXPECTED_STREAM_HEADER: stream}
