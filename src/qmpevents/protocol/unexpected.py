"""Which of an object's unexpected members QEMU names in its error.

QEMU's QObject input visitor copies an object's keys (in QDict order) into a
GLib hash table (``g_str_hash``, GLib 2.74), removes each member it visits,
and names the first key left in the table's slot order: the error a client
sees (``Parameter 'KEY' is unexpected``) depends on that layout, reproduced
here for the server's argument checks and for ``qmp_capabilities``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Final

from qmpevents.codec import qdict_order
from qmpevents.codec.encoder import LongKeyBucket, qdict_bucket, qemu_bytes

# The input visitor copies an object's keys (in QDict order) into a GLib hash table
# (g_str_hash, GLib 2.74), removes each member it visits, and names the first key
# left in the table's slot order.  This is that table, insertions then removals.

_PRIME_MOD = (1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749,
              65521, 131071, 262139, 524287, 1048573, 2097143, 4194301, 8388593)
_MIN_SHIFT = 3
_MASK32 = 0xFFFFFFFF


def _djb2(data: bytes, value: int) -> int:
    """g_str_hash's loop over *data*, from *value* (5381 for a whole key)."""
    for byte in data:
        signed = byte - 256 if byte > 127 else byte  # GLib hashes (signed) chars
        value = (value * 33 + signed) & _MASK32
    return value


def _g_str_hash(key: str) -> int:
    ahead = _HASHED.get(key) if len(key) > HASH_AHEAD else None
    value = ahead[0] if ahead is not None else _djb2(qemu_bytes(key), 5381)
    return value if value > 1 else 2  # 0 and 1 mark unused and tombstone slots


#: Keys longer than this are hashed ahead of the check, in steps (:class:`LongKeys`).
HASH_AHEAD: Final = 64 * 1024
#: Characters of a long key hashed per step (both hashes: a few ms).
_HASH_STEP: Final = 16 * 1024
#: Long keys hashed ahead: (g_str_hash before its 0/1 fix-up, QDict bucket), and
#: how many commands waiting or running hold each (monitors may share keys).
_HASHED: dict[str, tuple[int, int]] = {}
_HOLDERS: dict[str, int] = {}


class LongKeys(Exception):
    """The check must order keys too long to hash in one step (a peer's MiBs-long
    keys: 1.5 s for two of 10 MiB): hash them with :meth:`steps`, a slice per
    step, then run the check again; :meth:`release` forgets them after it."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__(f"{len(keys)} long keys to hash ahead")
        self.keys = keys

    def steps(self) -> Generator[None, None, None]:
        for key in self.keys:
            _HOLDERS[key] = _HOLDERS.get(key, 0) + 1
        for key in self.keys:
            if key in _HASHED:  # hashed meanwhile, for another command
                continue
            bucket = LongKeyBucket(key)
            value = 5381
            found: int | None = None
            for start in range(0, len(key), _HASH_STEP):
                piece = key[start:start + _HASH_STEP]
                value = _djb2(qemu_bytes(piece), value)
                found = bucket.advance(len(piece))
                yield
            assert found is not None
            _HASHED[key] = (value, found)

    def release(self) -> None:
        """This command is done with its keys: forget those no other holds."""
        for key in self.keys:
            holders = _HOLDERS.get(key, 0) - 1
            if holders > 0:
                _HOLDERS[key] = holders
            else:
                _HOLDERS.pop(key, None)
                _HASHED.pop(key, None)

    def hash_now(self) -> None:
        """All of :meth:`steps` at once (a caller with no loop to spread them over)."""
        for _ in self.steps():
            pass


def _qdict_order(keys: list[str]) -> list[str]:
    """:func:`~qmpevents.codec.qdict_order`, with the buckets of long keys hashed ahead."""
    if not any(len(key) > HASH_AHEAD for key in keys):
        return qdict_order(keys)
    position = {key: index for index, key in enumerate(keys)}

    def bucket(key: str) -> int:
        return _HASHED[key][1] if len(key) > HASH_AHEAD else qdict_bucket(key)
    return sorted(keys, key=lambda key: (bucket(key), -position[key]))


class _GHashKeys:
    """The slots of a GHashTable of string keys (no values), as GLib 2.74 lays them out."""

    def __init__(self) -> None:
        self._set_shift(_MIN_SHIFT)
        self._nnodes = 0
        self._noccupied = 0

    def _set_shift(self, shift: int) -> None:
        self._size = 1 << shift
        self._mod = _PRIME_MOD[shift]
        self._slots: list[str | bool | None] = [None] * self._size  # None unused, True tomb

    def _probe(self, key: str, *, for_insert: bool) -> int:
        hashed = _g_str_hash(key)
        index = ((hashed * 11) & _MASK32) % self._mod
        step = 0
        tombstone = -1
        while self._slots[index] is not None:
            slot = self._slots[index]
            if slot == key:
                return index
            if slot is True and tombstone < 0:
                tombstone = index
            step += 1
            index = (index + step) & (self._size - 1)
        return tombstone if for_insert and tombstone >= 0 else index

    def insert(self, key: str) -> None:
        index = self._probe(key, for_insert=True)
        if self._slots[index] == key:
            return
        if self._slots[index] is None:
            self._noccupied += 1
        self._slots[index] = key
        self._nnodes += 1
        self._maybe_resize()

    def remove(self, key: str) -> None:
        index = self._probe(key, for_insert=False)
        if self._slots[index] != key:
            return
        self._slots[index] = True
        self._nnodes -= 1
        self._maybe_resize()

    def _maybe_resize(self) -> None:
        if ((self._size > self._nnodes * 4 and self._size > 1 << _MIN_SHIFT)
                or self._size <= self._noccupied + self._noccupied // 16):
            keys = self.keys()
            wanted = int(self._nnodes * 1.333)
            shift = max(wanted.bit_length(), _MIN_SHIFT)
            self._set_shift(shift)
            self._noccupied = 0
            self._nnodes = 0
            for key in keys:
                index = self._probe(key, for_insert=True)
                self._slots[index] = key
                self._noccupied += 1
                self._nnodes += 1

    def keys(self) -> list[str]:
        return [slot for slot in self._slots if isinstance(slot, str)]


def first_unexpected(keys: list[str], visited: list[str]) -> str | None:
    """The member QEMU reports as unexpected, or None.

    *keys* are the object's keys as received, *visited* the members the visitor
    took, in visiting order.
    """
    seen = set(visited)
    left_over = [key for key in keys if key not in seen]
    if len(left_over) <= 1:
        # The table's layout only orders several: one key left over is the answer
        # without hashing it (a peer's 20 MiB key took 2 s of g_str_hash here).
        return left_over[0] if left_over else None
    unhashed = [key for key in keys if len(key) > HASH_AHEAD and key not in _HASHED]
    if unhashed:
        raise LongKeys(unhashed)
    table = _GHashKeys()
    for key in _qdict_order(keys):
        table.insert(key)
    for key in visited:
        table.remove(key)
    left = table.keys()
    return left[0] if left else None
