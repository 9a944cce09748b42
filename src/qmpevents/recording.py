"""Recordings: durable JSON-lines files of what VMs said, for replay and audit.

One record per line::

    {"vm": "vm1", "received": 1795701759.25, "direction": "event", "message": {...}}

``direction`` is ``event`` for events, and with full traffic recording also
``in`` (server to client) and ``out`` (client to server).  ``message`` is the
exact JSON that travelled.  A message that is not exactly one JSON text (a
hostile or broken server's line) is stored as a JSON *string* holding its text
(bytes that are not UTF-8 as ``\\xNN``): what was sent is kept, and it can never
add or change the record's own fields (``0,"vm":"other-vm"`` would otherwise).
A message laid out over several lines (QEMU's ``pretty=on``) is kept on the
record's line: each CR and LF becomes a space (JSON has them only between
tokens), nothing else changes -- as ``watch --json`` shows it.

Durability is a policy, because fsync costs: ``always`` flushes and fsyncs every
record (a crash loses nothing written), ``interval`` flushes and fsyncs at most
``interval`` seconds after a record was written, whether more follow or not (the
caller runs :meth:`RecordingWriter.sync_if_due` on a timer: a crash loses at
most the last ``interval`` seconds), ``never`` hands every record to the OS at
once and never fsyncs (a killed recorder loses nothing; a crash of the machine
what the OS had not written).  A crash can leave a torn last line; the reader
detects and skips it rather than failing the whole file.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, TypeVar

import msgspec

from qmpevents.codec.deep import parse_json_text

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
_CHECK = msgspec.json.Decoder()


_LINE_BREAKS_TO_SPACES = bytes.maketrans(b"\r\n", b"  ")


def one_line(text: bytes) -> bytes:
    """A JSON text laid out over lines, on one line: each CR and LF becomes a space
    (a JSON string holds no raw line break, so no value changes)."""
    return text.translate(_LINE_BREAKS_TO_SPACES)


def _is_json(message: bytes) -> bool:
    """Whether *message* is exactly one JSON text (msgspec says, or for a text
    nested deeper than it can go, :func:`~qmpevents.codec.deep.parse_json_text`:
    one it refuses is kept as a string, never lost)."""
    try:
        _CHECK.decode(message)
    except RecursionError:
        try:
            parse_json_text(message)
        except msgspec.DecodeError:
            return False
    except msgspec.DecodeError:
        return False
    return True


def _as_json(message: bytes) -> bytes:
    """*message* if it is exactly one JSON text (on one line), else its text as one
    JSON string."""
    message = message.strip()
    if not _is_json(message):
        return _ENCODER.encode(message.decode("utf-8", "backslashreplace"))
    return one_line(message)


class RecordingWriter:
    """Appends records to a file under an fsync policy."""

    def __init__(self, path: str, *, fsync: FsyncPolicy = "interval",
                 interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._file: BinaryIO = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._policy = fsync
        self._interval = interval
        self._clock = clock
        self._unsynced_since: float | None = None  # when the oldest unsynced record came
        self.records = 0

    def write(self, vm: str, message: bytes, *, direction: Direction = "event",
              received: float | None = None) -> None:
        """Append one record; *message* is what travelled (one JSON text, or not)."""
        record = Record(vm, time.time() if received is None else received, direction,
                        msgspec.Raw(_as_json(message)))
        self._file.write(_ENCODER.encode(record) + b"\n")
        self.records += 1
        if self._policy == "always":
            self.sync()
        elif self._policy == "never":
            self._file.flush()
        elif self._unsynced_since is None:
            self._unsynced_since = self._clock()

    def sync_due_in(self) -> float | None:
        """Seconds until :meth:`sync_if_due` must run (None: nothing waits for a sync)."""
        if self._unsynced_since is None:
            return None
        return max(0.0, self._unsynced_since + self._interval - self._clock())

    def sync_if_due(self) -> None:
        """The ``interval`` policy's timer: sync if the oldest unsynced record is due."""
        if self.sync_due_in() == 0.0:
            self.sync()

    def sync(self) -> None:
        """Flush to the OS and to disk."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._unsynced_since = None

    def close(self) -> None:
        """Sync (unless ``never``) and close; the file is closed even if that fails."""
        if self._file.closed:
            return
        try:
            if self._policy != "never":
                self.sync()
        finally:
            self._file.close()


@dataclass
class ReadReport:
    """What reading a recording skipped."""

    torn_tail: bool = False
    bad_lines: int = 0
    #: The line number of the first malformed line (0: none).
    first_bad_line: int = 0


_MEMBER_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*+"|[{}\[\]]')
_StructT = TypeVar("_StructT", bound=msgspec.Struct)


def decode_with_message(decoder: msgspec.json.Decoder[_StructT], line: bytes) -> _StructT:
    """``decoder.decode(line)`` for a record type whose ``message`` is ``msgspec.Raw``.

    msgspec skips a raw member with one level of recursion per level of
    nesting; a message nested deeper than Python's recursion limit allows
    (QEMU takes 1024 levels) is cut out of the line here, without recursion,
    and the rest decoded.  Raises ``msgspec.DecodeError`` for a line that is
    not a record.
    """
    try:
        return decoder.decode(line)
    except RecursionError:
        pass
    depth = 0
    tokens = _MEMBER_TOKENS.finditer(line)
    for token in tokens:
        text = token[0]
        if text in (b"{", b"["):
            depth += 1
        elif text in (b"}", b"]"):
            depth -= 1
        elif depth == 1 and text == b'"message"':
            colon = line[token.end():].lstrip()
            if colon[:1] != b":" or colon[1:].lstrip()[:1] not in (b"{", b"["):
                break
            start = line.index(colon[1:].lstrip()[:1], token.end())
            for inner in tokens:
                if inner[0] in (b"{", b"["):
                    depth += 1
                elif inner[0] in (b"}", b"]"):
                    depth -= 1
                    if depth == 1:
                        message = line[start:inner.end()]
                        if not _is_json(message):
                            break
                        rest = decoder.decode(line[:start] + b"0" + line[inner.end():])
                        return msgspec.structs.replace(rest, message=msgspec.Raw(message))
            break
    raise msgspec.DecodeError("not a record (its message too deep to read otherwise)")


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
                record = decode_with_message(_DECODER, line)
            except msgspec.DecodeError:
                # INFO, not WARNING: the report says what was skipped, once.
                if not line.endswith(b"\n"):  # only a crash leaves a line unfinished
                    report.torn_tail = True
                    log.info("%s: torn last line skipped (%d bytes)", path, len(line))
                else:
                    report.bad_lines += 1
                    report.first_bad_line = report.first_bad_line or number
                    log.info("%s:%d: malformed record skipped", path, number)
                continue
            yield record
