"""What a server sent, made safe to print: nothing it controls drives the terminal.

A VM's name, an event's strings, an error's class and description, a log
record quoting a bad message: every server-controlled text the CLI writes,
to stdout or stderr, goes through one of these functions first.

- :func:`safe` escapes every character that is not printable
  (``str.isprintable``: C0 and C1 controls such as ESC, CSI and BEL, DEL, the
  bidirectional overrides and other format characters such as U+202E, the
  line and paragraph separators U+2028/U+2029, unassigned and private-use
  code points, lone surrogates): ``\\x1b``, ``\\u202e``, ``\\U000e0001``.
- :func:`value_text` is one value of a text line (``key=value``): bare when
  it is plain, else double-quoted so that a value cannot pass for more
  fields (``device="ide0 action=stop"``).
- :func:`json_safe` makes a JSON text safe the same way while keeping it the
  same JSON: a non-printable character (which valid JSON holds only inside
  strings) becomes its ``\\uXXXX`` escape, so ``jq`` reads the same value.
"""

from __future__ import annotations

import re
from typing import Final

_SPECIAL: Final = re.compile(r'[\s="\\]')
"""What makes a value need quotes: a space (of any kind), ``=``, ``"``, ``\\``."""


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe(text: str) -> str:
    """*text* with every non-printable character escaped (``\\x1b``, ``\\u2028``)."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def value_text(text: str) -> str:
    """A text line's value: *text* itself when it is non-empty, printable and has no
    space, ``=``, ``"`` or backslash; else in double quotes, ``"`` and ``\\`` escaped
    with a backslash and non-printable characters as :func:`safe` escapes them."""
    if text and text.isprintable() and _SPECIAL.search(text) is None:
        return text
    quoted = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{safe(quoted)}"'


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x20:  # valid JSON has these only as whitespace between tokens
        return " "
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # beyond the BMP: JSON spells it as a surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


_LINE_BREAK: Final = re.compile(r"(,?) *[\t\r\n][\t\r\n ]*")
"""A line break and the blanks around it: valid JSON has a tab, CR or LF only
between tokens, so none of these is inside a string."""


def _one_line(found: re.Match[str]) -> str:
    return ", " if found.group(1) else ""


def json_safe(text: str) -> str:
    """A valid JSON text, on one line, with no character a terminal would act on.

    A non-printable character inside a string becomes its ``\\uXXXX`` escape
    (the same string to any JSON reader).  A message laid out over lines
    (QEMU's ``pretty=on``) is joined into QEMU's compact layout: a tab, CR or
    LF between tokens and the blanks around it go, a comma keeps the space
    QEMU writes after it.
    """
    if text.isprintable():
        return text
    text = _LINE_BREAK.sub(_one_line, text)
    return "".join(char if char.isprintable() else _json_escape(char) for char in text)
