"""The agent's durable spool: a write-ahead queue of events on local disk.

Every event the agent receives is appended here first and published from
here, in order; a record leaves the spool only once JetStream acknowledged
it.  So a broker outage, an agent crash or a restart loses nothing that was
written: the next run resumes at the first unacknowledged record.

Layout of the spool directory (mode 0700, one agent at a time: ``lock``)::

    0000000001.jsonl   segments, oldest first, each a recording
    cursor             {"segment": N, "offset": BYTES}: the first record not acked

Each line is a recording record (:mod:`qmpevents.recording`, readable by
``qmpevents replay``) with three more members, ``host``, ``seq`` and ``id``
(the per-VM sequence and the message id), so a re-published record carries
the same ``Nats-Msg-Id`` and JetStream drops the duplicate.

Durability follows ``record``'s fsync policy: ``always`` fsyncs every record
(a crash loses nothing appended), ``interval`` at most every N seconds,
``never`` leaves it to the OS.  A torn last line left by a crash is cut off
when the spool is opened.

Bounded: when the segments on disk reach ``max_bytes``, new events are
*dropped* (and counted in :attr:`Spool.dropped`) until publishing frees
space: what is already spooled, the oldest evidence, is never overwritten.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections import deque
from typing import BinaryIO, NamedTuple

import msgspec

from qmpevents.recording import FsyncPolicy, decode_with_message

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".jsonl"
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_SEGMENT_BYTES = 8 << 20
#: The newest records appended, kept to be read without the files (about 500 bytes each:
#: 4 MiB at most; what the publisher keeps up with comes from memory, a backlog from files).
RECENT_MAX = 8192


class SpoolRecord(msgspec.Struct, frozen=True):
    """One spooled event: a recording record plus host, per-VM sequence and message id."""

    vm: str
    received: float
    direction: str
    message: msgspec.Raw
    host: str
    seq: int
    id: str


class Position(NamedTuple):
    """A place in the spool: a segment number and a byte offset in it (a tuple: made and
    compared per event, cheaply)."""

    segment: int
    offset: int


class _Cursor(msgspec.Struct):
    segment: int
    offset: int


class SpoolLocked(OSError):
    """Another process holds this spool directory."""


_encode = msgspec.json.Encoder().encode
_RECORD = msgspec.json.Decoder(SpoolRecord)
_decode_cursor = msgspec.json.Decoder(_Cursor).decode


class Spool:
    """Append at the tail, read and acknowledge at the head, on disk."""

    def __init__(self, directory: str, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES, fsync: FsyncPolicy = "interval",
                 interval: float = 1.0) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = max(1, min(segment_bytes, max_bytes))
        self._policy = fsync
        self._interval = interval
        self._last_sync = time.monotonic()
        self._flush_due = False
        self._sync_timer: asyncio.TimerHandle | None = None
        self._lock_fd = -1
        self._writer: BinaryIO | None = None
        self._write_segment = 0
        self._write_size = 0
        self._sizes: dict[int, int] = {}  # segment -> bytes on disk
        self._others = 0  # bytes of the segments but the one written (the bound is per event)
        self._committed = Position(1, 0)
        self._read = Position(1, 0)
        self._reader: BinaryIO | None = None
        self._reader_segment = 0
        self._appended = asyncio.Event()
        #: (start, record, end) of the records appended since the read position, while the
        #: reader keeps up: :meth:`read` takes them from here instead of decoding the file.
        #: (Plain tuples: cheaper to make per event than Position, and equal to it.)
        self._recent: deque[tuple[tuple[int, int], SpoolRecord, tuple[int, int]]] = deque(
            maxlen=RECENT_MAX)
        #: Events refused because the spool was full.
        self.dropped = 0
        #: Complete lines that did not decode (skipped, logged).
        self.bad_lines = 0

    # -- opening and closing ---------------------------------------------------

    def open(self) -> None:
        """Lock the directory, cut a torn tail, find the cursor; raises SpoolLocked."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.directory, "lock"),
                                os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise SpoolLocked(f"{self.directory}: spool in use by another agent") from None
        segments = self._segments()
        for number in segments:
            self._sizes[number] = os.path.getsize(self._path(number))
        cursor = self._load_cursor()
        if segments:
            if cursor is None or cursor.segment < segments[0]:
                cursor = Position(segments[0], 0)
            self._write_segment = segments[-1]
            self._cut_torn_tail(self._write_segment)
        else:
            self._write_segment = cursor.segment if cursor is not None else 1
        self._committed = self._read = cursor or Position(self._write_segment, 0)
        self._open_writer()

    def close(self) -> None:
        if self._sync_timer is not None:
            self._sync_timer.cancel()
            self._sync_timer = None
        if self._writer is not None:
            if self._policy != "never":
                self._sync_writer()
            self._writer.close()
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _path(self, number: int) -> str:
        return os.path.join(self.directory, f"{number:010d}{SEGMENT_SUFFIX}")

    def _segments(self) -> list[int]:
        found = []
        for entry in os.listdir(self.directory):
            stem, suffix = entry[:-len(SEGMENT_SUFFIX)], entry[-len(SEGMENT_SUFFIX):]
            if suffix == SEGMENT_SUFFIX and stem.isdigit():
                found.append(int(stem))
        return sorted(found)

    def _load_cursor(self) -> Position | None:
        try:
            with open(os.path.join(self.directory, "cursor"), "rb") as file:
                cursor = _decode_cursor(file.read())
        except FileNotFoundError:
            return None
        except msgspec.DecodeError:
            log.warning("%s: unreadable cursor: publishing again from the oldest segment "
                        "(JetStream drops the duplicates)", self.directory)
            return None
        return Position(cursor.segment, cursor.offset)

    def _cut_torn_tail(self, number: int) -> None:
        path = self._path(number)
        with open(path, "rb+") as file:
            data = file.read()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                log.warning("%s: torn last line cut (%d bytes)", path, len(data) - end)
                file.truncate(end)
                self._sizes[number] = end

    def _open_writer(self) -> None:
        fd = os.open(self._path(self._write_segment), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                     0o600)
        self._writer = os.fdopen(fd, "ab")
        self._write_size = self._writer.tell()
        self._sizes[self._write_segment] = self._write_size
        self._count_others()
        if self._policy != "never":
            self._sync_directory()

    def _count_others(self) -> None:
        self._others = sum(size for number, size in self._sizes.items()
                           if number != self._write_segment)

    # -- the tail --------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes of segments on disk (the bound applies to this)."""
        return self._others + self._write_size

    def append(self, record: SpoolRecord) -> bool:
        """Append one record; False (and counted) when the spool is full."""
        assert self._writer is not None, "spool not open"
        line = _encode(record) + b"\n"
        if self.size + len(line) > self.max_bytes:
            if self.dropped == 0 or self.dropped % 1000 == 0:
                log.warning("%s: spool full (%d bytes): dropping new events", self.directory,
                            self.max_bytes)
            self.dropped += 1
            return False
        if self._write_size and self._write_size + len(line) > self.segment_bytes:
            self._rotate()
        segment, offset = self._write_segment, self._write_size
        self._writer.write(line)  # buffered: read() flushes before it hands records out
        end = self._write_size = offset + len(line)
        self._sizes[segment] = end
        # Kept for read(): appends follow each other (a new segment starts at 0), so the
        # records kept do too; when full, the oldest kept are dropped (read from the files).
        self._recent.append(((segment, offset), record, (segment, end)))
        policy = self._policy
        if policy == "always" or (
                policy == "interval" and time.monotonic() - self._last_sync >= self._interval):
            self._sync_writer()
        elif not self._flush_due or (policy == "interval" and self._sync_timer is None):
            self._schedule_flush()
        self._appended.set()
        return True

    def _schedule_flush(self) -> None:
        """Hand the records to the OS once this loop iteration ends (a process crash then
        loses nothing), and with ``interval`` fsync them within the interval even if no
        later event comes -- as ``record`` does."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: now
            self._flush_writer()
            return
        if not self._flush_due:
            self._flush_due = True
            loop.call_soon(self._flush_writer)
        if self._policy == "interval" and self._sync_timer is None:
            self._sync_timer = loop.call_later(self._interval, self._timed_sync)

    def _flush_writer(self) -> None:
        self._flush_due = False
        if self._writer is not None:
            self._writer.flush()

    def _timed_sync(self) -> None:
        self._sync_timer = None
        if self._writer is not None:
            self._sync_writer()

    def _rotate(self) -> None:
        assert self._writer is not None
        if self._policy != "never":
            self._sync_writer()
        self._writer.close()
        self._write_segment += 1
        self._open_writer()

    def _sync_writer(self) -> None:
        assert self._writer is not None
        self._writer.flush()
        os.fsync(self._writer.fileno())
        self._last_sync = time.monotonic()

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- the head --------------------------------------------------------------

    async def read(self, limit: int) -> list[tuple[SpoolRecord, Position]]:
        """Up to *limit* records after the read position, each with the position after it.

        Waits while the spool holds nothing unread.
        """
        recent = self._recent
        while True:
            if self._writer is not None:
                self._writer.flush()
            while recent and recent[0][0] < self._read:
                recent.popleft()  # behind the reader (not expected): the files have it
            batch = self._read_available(limit, Position(*recent[0][0]) if recent else None)
            batch += self._take_recent(limit - len(batch))
            if batch:
                return batch
            self._appended.clear()
            if self._read_available_now():
                continue
            await self._appended.wait()

    def _take_recent(self, limit: int) -> list[tuple[SpoolRecord, Position]]:
        """Records kept by :meth:`append` that start at the read position (the same
        records the file holds there, without reading and decoding it)."""
        recent, read = self._recent, self._read
        if not recent or recent[0][0] != read or limit <= 0:
            return []
        batch = []
        for _ in range(min(limit, len(recent))):
            _, record, end = recent.popleft()
            batch.append((record, Position(*end)))
        self._read = batch[-1][1]
        return batch

    def _read_available_now(self) -> bool:
        return self._read < Position(self._write_segment, self._write_size)

    def _read_available(self, limit: int, stop: Position | None = None
                        ) -> list[tuple[SpoolRecord, Position]]:
        """Up to *limit* records from the files, not reading at or after *stop*."""
        batch: list[tuple[SpoolRecord, Position]] = []
        while (len(batch) < limit and self._read_available_now()
               and (stop is None or self._read < stop)):
            if self._read.segment not in self._sizes:  # a gap: segments are never skipped
                self._read = Position(self._read.segment + 1, 0)
                continue
            reader = self._reader_for(self._read.segment)
            reader.seek(self._read.offset)
            end_of_data = False
            while len(batch) < limit and (stop is None or self._read < stop):
                line = reader.readline()
                if not line.endswith(b"\n"):  # end of data (or a line being written)
                    end_of_data = True
                    break
                self._read = Position(self._read.segment, self._read.offset + len(line))
                try:
                    batch.append((decode_with_message(_RECORD, line), self._read))
                except msgspec.DecodeError:
                    self.bad_lines += 1
                    log.warning("%s: malformed spool line skipped",
                                self._path(self._read.segment))
            if not end_of_data:
                break
            if self._read.segment < self._write_segment:
                self._read = Position(self._read.segment + 1, 0)
            else:
                break
        return batch

    def _reader_for(self, number: int) -> BinaryIO:
        if self._reader is None or self._reader_segment != number:
            if self._reader is not None:
                self._reader.close()
            self._reader = open(self._path(number), "rb")  # noqa: SIM115 - close()
            self._reader_segment = number
        return self._reader

    def commit(self, position: Position) -> None:
        """Everything before *position* is acknowledged: persist the cursor, free segments."""
        if position <= self._committed:
            return
        self._committed = position
        for number in [n for n in self._sizes if n < position.segment]:
            if self._reader is not None and self._reader_segment == number:
                self._reader.close()
                self._reader = None
            os.unlink(self._path(number))
            del self._sizes[number]
            self._count_others()
        tmp = os.path.join(self.directory, "cursor.tmp")
        with open(tmp, "wb") as file:
            file.write(_encode(_Cursor(position.segment, position.offset)))
            if self._policy == "always":
                file.flush()
                os.fsync(file.fileno())
        os.replace(tmp, os.path.join(self.directory, "cursor"))

    def rewind(self) -> None:
        """Read again from the first unacknowledged record (after a failed publish)."""
        self._read = self._committed

    @property
    def pending_bytes(self) -> int:
        """Bytes appended and not yet acknowledged."""
        head = self._committed
        return sum(size for number, size in self._sizes.items()
                   if number >= head.segment) - head.offset
