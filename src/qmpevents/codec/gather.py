"""A big token's bytes, gathered in a mapping of its own that grows in place.

A ``bytearray`` that grows is moved by the allocator now and then, and a
move copies all it holds in one go: glibc moves a growing block from its
heap to a mapping of its own once it is big, at a size that depends on what
the process freed before (7 MiB in a server's run, up to 32 MiB), and the
copy goes to memory the process never touched, which costs up to about 3 ms
per MiB on the virtual machines measured (page faults).  :class:`Gathering` holds the
bytes in an anonymous mapping instead and grows it with ``mremap``, which
moves the pages, not their bytes: each step touches only what it adds.
Without ``mremap`` (not Linux) :data:`GATHERING` is False and the lexer
keeps its ``bytearray``.
"""

from __future__ import annotations

import mmap
from typing import Final

#: The first size of a mapping: it doubles when full.
_FIRST: Final = 4 * 1024 * 1024


def _resizable() -> bool:
    try:
        probe = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE)
    except (AttributeError, OSError):
        return False
    try:
        probe.resize(2 * mmap.PAGESIZE)
    except (OSError, SystemError, ValueError):
        return False
    finally:
        probe.close()
    return True


#: Whether a mapping can grow in place here.
GATHERING: Final = _resizable()


class Gathering:
    """Bytes appended in place; :meth:`done` hands them out as an exact-size ``mmap``."""

    __slots__ = ("_map", "_size")

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, _FIRST, flags=mmap.MAP_PRIVATE)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def extend(self, data: bytes | bytearray | memoryview) -> None:
        size = self._size
        need = size + len(data)
        if need > len(self._map):
            self._map.resize(max(need, 2 * len(self._map)))
        self._map[size:need] = data
        self._size = need

    def done(self) -> mmap.mmap:
        """The bytes, in a mapping of exactly their size (the rest is given back)."""
        gathered = self._map
        assert self._size, "a gathering starts with the bytes of a big token"
        if self._size != len(gathered):
            gathered.resize(self._size)
        return gathered
