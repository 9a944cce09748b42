"""QAPI-style checking of a command's ``arguments``, with QEMU's error texts.

QEMU's QObject input visitor walks a command's argument struct member by
member, in schema order, and stops at the first problem; members it did not
visit are reported afterwards as unexpected.  :func:`check_arguments` does the
same so a client sees exactly the error real QEMU would give it.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from qmpevents.codec import qdict_order
from qmpevents.codec.encoder import LongKeyBucket, qdict_bucket, qemu_bytes
from qmpevents.protocol import CommandFailure

ArgType = Literal["string", "integer", "boolean", "number", "object", "array"]

_INT64 = range(-(1 << 63), 1 << 63)


@dataclass(frozen=True, slots=True)
class Param:
    """One member of an argument struct: its type, whether it is optional, its enum."""

    type: ArgType
    optional: bool = False
    enum: tuple[str, ...] | None = None


Schema = Mapping[str, Param]


def _fits(value: Any, kind: ArgType) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":  # a JSON integer beyond int64 arrives as a double: not an integer
        return isinstance(value, int) and not isinstance(value, bool) and value in _INT64
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    return isinstance(value, list)


def check_arguments(schema: Schema, arguments: Mapping[str, Any]) -> None:
    """Raise ``CommandFailure("GenericError", ...)`` as QEMU would for bad *arguments*."""
    for name, param in schema.items():
        if name not in arguments:
            if param.optional:
                continue
            raise CommandFailure("GenericError", f"Parameter '{name}' is missing")
        value = arguments[name]
        if not _fits(value, param.type):
            raise CommandFailure("GenericError",
                                 f"Invalid parameter type for '{name}', expected: {param.type}")
        if param.enum is not None and value not in param.enum:
            raise CommandFailure("GenericError",
                                 f"Parameter '{name}' does not accept value '{value}'")
    unexpected = first_unexpected(list(arguments), [key for key in schema if key in arguments])
    if unexpected is not None:
        raise CommandFailure("GenericError", f"Parameter '{unexpected}' is unexpected")


# --- checking against QEMU's introspected schema ---------------------------------

_JSON_KIND = {"str": "string", "int": "integer", "number": "number", "bool": "boolean",
              "null": "null"}


def _json_kind(value: Any) -> str:
    """The QAPI JSON kind of a decoded value (QEMU's QType, as its errors name it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer" if value in _INT64 else "number"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict) else "array"


class SchemaChecker:
    """QEMU 7.2's QObject input visitor over an introspected schema (``SchemaInfo`` list).

    What real QEMU 7.2 answers, member by member in schema order: a missing
    member and a wrong type name the member by its full path (``file.x``,
    ``capabilities[0].state``); a bad enum value names only the member itself
    (``null`` for a list element), as ``visit_type_enum`` does; members left
    over are reported, in QDict order, when their object is done; an alternate
    that no branch fits is reported with the alternate's QAPI type name.
    """

    def __init__(self, types: Mapping[str, Mapping[str, Any]],
                 alternate_names: Mapping[str, str]) -> None:
        self._types = types
        self._alternate_names = alternate_names

    def check(self, type_name: str, value: Any) -> None:
        """Raise ``CommandFailure("GenericError", ...)`` as QEMU would for *value*."""
        self._visit(type_name, value, "", None)

    def _visit(self, type_name: str, value: Any, path: str, name: str | None) -> None:
        if type_name == "any":
            return
        entry = self._types.get(type_name)
        meta = "builtin" if entry is None or entry["meta-type"] == "builtin" else entry["meta-type"]
        if meta == "builtin":
            self._expect(value, _JSON_KIND[type_name], path)
        elif meta == "enum":
            assert entry is not None
            self._expect(value, "string", path)
            if value not in entry["values"]:
                raise CommandFailure("GenericError", f"Parameter '{name or 'null'}' does not"
                                                     f" accept value '{value}'")
        elif meta == "array":
            assert entry is not None
            self._expect(value, "array", path)
            for index, element in enumerate(value):
                self._visit(entry["element-type"], element, f"{path}[{index}]", None)
        elif meta == "alternate":
            assert entry is not None
            self._visit_alternate(entry, value, path, name)
        else:
            assert entry is not None
            self._expect(value, "object", path)
            self._visit_object(entry, value, path)

    def _expect(self, value: Any, kind: str, path: str) -> None:
        actual = _json_kind(value)
        if actual != kind and not (kind == "number" and actual == "integer"):
            raise CommandFailure("GenericError", f"Invalid parameter type for"
                                                 f" '{path or 'null'}', expected: {kind}")

    def _members(self, entry: Mapping[str, Any], value: Mapping[str, Any]) -> list[Any]:
        members = list(entry.get("members", ()))
        tag = entry.get("tag")
        if tag is not None and tag in value:
            for variant in entry.get("variants", ()):
                if variant["case"] == value[tag]:
                    members += self._types[variant["type"]].get("members", ())
        return members

    def _visit_object(self, entry: Mapping[str, Any], value: Mapping[str, Any],
                      path: str) -> None:
        prefix = f"{path}." if path else ""
        visited: list[str] = []
        for member in self._members(entry, value):
            key = member["name"]
            if key not in value:
                if "default" in member:
                    continue
                raise CommandFailure("GenericError", f"Parameter '{prefix}{key}' is missing")
            visited.append(key)
            self._visit(member["type"], value[key], prefix + key, key)
        unexpected = first_unexpected(list(value), visited)
        if unexpected is not None:
            raise CommandFailure("GenericError",
                                 f"Parameter '{prefix}{unexpected}' is unexpected")

    def _visit_alternate(self, entry: Mapping[str, Any], value: Any, path: str,
                         name: str | None) -> None:
        kind = _json_kind(value)
        for member in entry["members"]:
            branch = self._types.get(member["type"])
            meta = ("builtin" if branch is None or branch["meta-type"] == "builtin"
                    else branch["meta-type"])
            branch_kind = {"enum": "string", "object": "object", "array": "array"}.get(
                meta, _JSON_KIND.get(member["type"], ""))
            if branch_kind == kind or (branch_kind == "number" and kind == "integer"):
                self._visit(member["type"], value, path, name)
                return
        alternate = self._alternate_names.get(entry["name"], entry["name"])
        raise CommandFailure("GenericError", f"Invalid parameter type for '{path or 'null'}',"
                                             f" expected: {alternate}")


# --- which unexpected member QEMU names ------------------------------------------
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
#: Long keys hashed ahead: (g_str_hash before its 0/1 fix-up, QDict bucket).
_HASHED: dict[str, tuple[int, int]] = {}


class LongKeys(Exception):
    """The check must order keys too long to hash in one step (a peer's MiBs-long
    keys: 1.5 s for two of 10 MiB): hash them with :meth:`steps`, a slice per
    step, then run the check again; :meth:`release` forgets them after it."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__(f"{len(keys)} long keys to hash ahead")
        self.keys = keys

    def steps(self) -> Generator[None, None, None]:
        for key in self.keys:
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
        for key in self.keys:
            _HASHED.pop(key, None)


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
