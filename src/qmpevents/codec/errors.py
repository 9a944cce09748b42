"""What can be wrong with an input message, as one typed value.

QEMU distinguishes a stray byte (the lexer), a malformed JSON text (the
parser) and three limits (the streamer).  :class:`ParseError` carries which of
these happened (:class:`ParseErrorKind`) next to QEMU's exact text, so callers
decide on the kind, never by matching the text; :class:`JSONParseError` is the
same value raised by the parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class ParseErrorKind(Enum):
    """Which check of QEMU's JSON input refused a message."""

    LEXICAL = "lexical"
    """A byte the lexer cannot take: ``JSON parse error, stray '...'``."""
    SYNTAX = "syntax"
    """Tokens that are not JSON (``JSON parse error, expecting value``, ...)."""
    TOO_LARGE = "too-large"
    """``JSON token size limit exceeded``: see :attr:`ParseError.size`."""
    TOO_DEEP = "too-deep"
    """``JSON nesting depth limit exceeded``."""
    TOO_MANY_TOKENS = "too-many-tokens"
    """``JSON token count limit exceeded``."""


TOO_LARGE_TEXT = "JSON token size limit exceeded"
TOO_DEEP_TEXT = "JSON nesting depth limit exceeded"
TOO_MANY_TOKENS_TEXT = "JSON token count limit exceeded"


@dataclass(frozen=True, slots=True)
class ParseError:
    """A message that could not be parsed.

    ``desc`` is QEMU's text for it (what goes on the wire).  For
    :attr:`ParseErrorKind.TOO_LARGE`, ``size`` is how many bytes the message
    had reached when it was refused (counted as QEMU counts: token bytes plus
    one per token) and ``limit`` the limit it broke; they are facts about one
    occurrence, so they take no part in equality.
    """

    kind: ParseErrorKind
    desc: str
    size: int | None = field(default=None, compare=False)
    limit: int | None = field(default=None, compare=False)

    @classmethod
    def too_large(cls, size: int, limit: int) -> ParseError:
        return cls(ParseErrorKind.TOO_LARGE, TOO_LARGE_TEXT, size, limit)


class JSONParseError(ValueError):
    """Raised by the parser; ``error`` is the :class:`ParseError` it stands for."""

    def __init__(self, error: ParseError) -> None:
        super().__init__(error.desc)
        self.error = error

    @property
    def desc(self) -> str:
        return self.error.desc

    @property
    def kind(self) -> ParseErrorKind:
        return self.error.kind
