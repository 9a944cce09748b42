"""A big ``str`` built a piece at a time, no step copying what came before.

Joining the pieces of a huge string at the end copies all of it in one go;
growing it with ``+=`` copies all of it whenever the allocator cannot extend
it in place (glibc moves a block from its heap to a mapping of its own that
way, at whatever size that happens).  Either is one step that writes tens
of MiB into memory the process never touched: on a virtual machine where a
first touch costs up to about 11 us per 4 KiB page, measured here, 47 MiB
stalled a server's loop for 140 ms.

:class:`StringFill` instead allocates the string once, at its final length
and width (``PyUnicode_New``, the C API's way to build a string: its memory
is not written, so not touched, by the allocation), then copies each piece
into it as it comes: each step touches only the memory of its own piece.
The string is handed out only once it is full.  Where that C API is not
reachable (an interpreter that is not CPython), the pieces are joined at
the end, as before.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Generator
from typing import Final

#: Below this many characters a string is simply joined (a small copy).
FILL_ABOVE: Final = 64 * 1024
#: Characters copied between two pauses of :func:`join_steps` (about 1 ms).
JOIN_STEP: Final = 1024 * 1024
#: The widest character of each storage width (PEP 393), and its encoding.
_WIDTHS: Final = ((0x7F, 1, "latin-1"), (0xFF, 1, "latin-1"),
                  (0xFFFF, 2, f"utf-16-{sys.byteorder[0]}e"),
                  (0x10FFFF, 4, f"utf-32-{sys.byteorder[0]}e"))


def _characters_at(string: str, width: int) -> int:
    """Where a compact string's characters are: they end the object, before a NUL."""
    return id(string) + sys.getsizeof(string) - (len(string) + 1) * width


def _layout_is_known() -> bool:
    """Whether :func:`_characters_at` finds the characters of this interpreter's
    strings, checked by reading ordinary ones (never by writing) at each width."""
    for sample, width, encoding in (("ab" * 40, 1, "latin-1"), ("\xe9b" * 40, 1, "latin-1"),
                                    ("\u20acb" * 40, 2, _WIDTHS[2][2]),
                                    ("\U0001f600b" * 40, 4, _WIDTHS[3][2])):
        expected = sample.encode(encoding)
        if ctypes.string_at(_characters_at(sample, width), len(expected)) != expected:
            return False
    return True


def _new_string() -> Callable[[int, int], object] | None:
    if sys.implementation.name != "cpython" or not hasattr(ctypes, "pythonapi"):
        return None
    if not _layout_is_known():
        return None
    new: Callable[[int, int], object] = ctypes.pythonapi.PyUnicode_New
    ctypes.pythonapi.PyUnicode_New.restype = ctypes.py_object
    ctypes.pythonapi.PyUnicode_New.argtypes = (ctypes.c_ssize_t, ctypes.c_uint32)
    return new


_NEW = _new_string()


def widest(piece: str) -> int:
    """The widest character class of *piece*: 0x7F, 0xFF, 0xFFFF or 0x10FFFF."""
    if piece.isascii():
        return 0x7F
    try:
        piece.encode("latin-1")
    except UnicodeEncodeError:
        pass
    else:
        return 0xFF
    two = piece.encode(_WIDTHS[2][2], "surrogatepass")
    return 0xFFFF if len(two) == 2 * len(piece) else 0x10FFFF


class StringFill:
    """A string of *length* characters, none wider than *widest*, filled by :meth:`add`.

    *widest* must be what :func:`widest` gives for the whole text (a string
    is stored at the width of its widest character: a wider one would not
    be the same string).  :meth:`result` refuses a string not exactly full.
    """

    __slots__ = ("_address", "_ascii", "_at", "_encoding", "_length", "_pieces", "_string",
                 "_width")

    def __init__(self, length: int, widest: int) -> None:
        self._length = length
        self._at = 0
        self._ascii = widest <= 0x7F
        self._pieces: list[str] = []
        self._string: str | None = None
        self._address = 0
        self._width, self._encoding = next((size, encoding) for top, size, encoding in _WIDTHS
                                           if widest <= top)
        if _NEW is not None and length >= FILL_ABOVE:
            string = _NEW(length, widest)
            assert isinstance(string, str) and len(string) == length
            self._address = _characters_at(string, self._width)
            self._string = string

    def add(self, piece: str) -> None:
        """Append *piece*; ValueError if it does not fit (in length or width)."""
        if self._at + len(piece) > self._length:
            raise ValueError("more characters than the string was made for")
        if self._ascii and not piece.isascii():
            raise ValueError("a character wider than the string was made for")
        if self._string is None:
            self._pieces.append(piece)
        else:
            try:
                data = piece.encode(self._encoding, "surrogatepass")
            except UnicodeEncodeError as exc:
                raise ValueError("a character wider than the string was made for") from exc
            if len(data) != len(piece) * self._width:  # a pair of UTF-16 surrogates
                raise ValueError("a character wider than the string was made for")
            ctypes.memmove(self._address + self._at * self._width, data, len(data))
        self._at += len(piece)

    def result(self) -> str:
        """The string, once exactly full (ValueError otherwise)."""
        if self._at != self._length:
            raise ValueError("fewer characters than the string was made for")
        if self._string is None:
            return "".join(self._pieces)
        string, self._string = self._string, None
        return string


def join_steps(pieces: list[str], step: int = JOIN_STEP) -> Generator[None, None, str]:
    """``"".join(pieces)``, pausing (``yield``) after every *step* characters copied.

    Each piece should be much smaller than *step*.  The pieces are dropped
    from the list as they are copied.
    """
    length = sum(map(len, pieces))
    if length < FILL_ABOVE:
        return "".join(pieces)
    wide = done = 0
    for piece in pieces:  # how wide the string is: a pass over the characters too
        wide = max(wide, widest(piece))
        done += len(piece)
        if done >= step:
            done = 0
            yield
    fill = StringFill(length, wide)
    for index, piece in enumerate(pieces):
        fill.add(piece)
        pieces[index] = ""
        done += len(piece)
        if done >= step:
            done = 0
            yield
    pieces.clear()
    return fill.result()
