"""Recordings: durable JSON-lines files of what VMs said, for replay and audit.

One record per line::

    {"vm": "vm1", "received": 1795701759.25, "direction": "event", "message": {...}}

``direction`` is ``event`` for events, and with full traffic recording also
``in`` (server to client) and ``out`` (client to server).  ``message`` is the
exact JSON that travelled.

Durability is a policy, because fsync costs: ``always`` fsyncs every record
(a crash loses nothing written), ``interval`` at most every N seconds (a
crash loses at most the last N seconds), ``never`` leaves it to the OS.  A
crash can leave a torn last line; the reader detects and skips it rather than
failing the whole file.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import msgspec

FsyncPolicy = Literal["always", "interval", "never"]
Direction = Literal["event", "in", "out"]

log = logging.getLogger(__name__)


class Record(msgspec.Struct, frozen=True):
    """One recorded message."""

    vm: str
    received: float
    direction: str
    message: msgspec.Raw

    def message_bytes(self) -> bytes:
        return bytes(self.message)

    def message_value(self) -> Any:
        return msgspec.json.decode(self.message)


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Record)


class RecordingWriter:
    """Appends records to a file under an fsync policy."""

    def __init__(self, path: str, *, fsync: FsyncPolicy = "interval",
                 interval: float = 1.0) -> None:
        self._file: BinaryIO = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._policy = fsync
        self._interval = interval
        self._last_sync = time.monotonic()
        self.records = 0

    def write(self, vm: str, message: bytes, *, direction: Direction = "event",
              received: float | None = None) -> None:
        """Append one record; *message* is one JSON text (no line terminator)."""
        record = Record(vm, time.time() if received is None else received, direction,
                        msgspec.Raw(message.strip()))
        self._file.write(_ENCODER.encode(record) + b"\n")
        self.records += 1
        due = time.monotonic() - self._last_sync >= self._interval
        if self._policy == "always" or (self._policy == "interval" and due):
            self.sync()

    def sync(self) -> None:
        """Flush to the OS and to disk."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            if self._policy != "never":
                self.sync()
            self._file.close()


@dataclass
class ReadReport:
    """What reading a recording skipped."""

    torn_tail: bool = False
    bad_lines: int = 0


def read_recording(path: str, report: ReadReport | None = None) -> Iterator[Record]:
    """Records of *path* in order; a torn last line (a crash) is skipped.

    A malformed line elsewhere is skipped too and counted in *report*: a
    recording is evidence, and one bad line must not hide the rest.
    """
    report = report if report is not None else ReadReport()
    with open(path, "rb") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = _DECODER.decode(line)
            except msgspec.DecodeError:
                if not line.endswith(b"\n"):  # only a crash leaves a line unfinished
                    report.torn_tail = True
                    log.warning("%s: torn last line skipped (%d bytes)", path, len(line))
                else:
                    report.bad_lines += 1
                    log.warning("%s:%d: malformed record skipped", path, number)
                continue
            yield record
