"""The host agent's intake: each event received from a VM becomes a spooled record.

The per-VM sequence counts the events of that VM since the agent started;
with the event's own timestamp it makes the message id unique, and it is
stored in the spool so a re-published record keeps its id.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from qmpevents.client import QMPEvent
from qmpevents.codec import encode_json
from qmpevents.fleet.spool import Spool, SpoolRecord
from qmpevents.fleet.subjects import message_id
from qmpevents.recording import one_line


class Intake:
    """``on_event(vm, event)`` for :class:`~qmpevents.client.vms.VMs`: spool it."""

    def __init__(self, host: str, spool: Spool) -> None:
        self.host = host
        self._spool = spool
        self._sequences: dict[str, int] = {}
        self.received = 0
        #: Called with each event after it was spooled (True) or dropped (False).
        self.on_spooled: Callable[[str, QMPEvent, bool], None] = lambda vm, event, kept: None

    async def on_event(self, vm: str, event: QMPEvent) -> None:
        raw = event.raw
        if raw is None:
            raw = encode_json(event.to_wire()).encode()
        sequence = self._sequences[vm] = self._sequences.get(vm, 0) + 1
        stamp = event.stamp
        record = SpoolRecord(
            vm, time.time(), "event", msgspec.Raw(one_line(raw.strip())), self.host, sequence,
            message_id(self.host, vm, stamp.seconds, stamp.microseconds, event.name, sequence))
        self.received += 1
        self.on_spooled(vm, event, self._spool.append(record))
