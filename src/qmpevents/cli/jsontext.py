"""JSON text of plain values, in their order, without recursion.

What the CLI prints of a reply or of event data: QEMU accepts values nested
1024 deep, past Python's recursion limit, so the containers are walked with
an explicit stack (``json.dumps`` and ``msgspec.json.encode`` recurse once
per level).  Scalars (and ``msgspec.Raw`` texts) are written by msgspec, so
the text is the same as ``msgspec.json.encode`` gives (but for the spelling
of floats that are not finite, if asked), or with *indent* as
``msgspec.json.format`` lays that out, for any value they can take.
"""

from __future__ import annotations

import math
from typing import Any, TypeAlias

import msgspec

_msgspec_encode = msgspec.json.encode

NonFinite: TypeAlias = tuple[str, str, str]
"""How to write infinity, minus infinity and NaN (msgspec writes each as ``null``)."""


class _Text(str):
    """Output text queued on the work stack (not a value to write)."""

    __slots__ = ()


def _leaf(value: Any) -> str:
    return _msgspec_encode(value).decode()


def dumps(value: Any, *, indent: int | None = None,
          non_finite: NonFinite | None = None) -> str:
    """*value* as JSON: compact as msgspec writes it, or laid out with *indent*
    spaces a level as ``msgspec.json.format`` (and ``json.dumps``) do; with
    *non_finite*, a float that is not finite as it says (in the same pass)."""
    leaf = _leaf
    isfinite = math.isfinite
    colon = ":" if indent is None else ": "
    out: list[str] = []
    todo: list[tuple[Any, int]] = [(value, 0)]
    pop, push, emit = todo.pop, todo.append, out.append
    while todo:
        item, depth = pop()
        if type(item) is _Text:
            emit(item)
            continue
        is_dict = isinstance(item, dict)
        if not item or not (is_dict or isinstance(item, list | tuple)):
            if non_finite is not None and isinstance(item, float) and not isfinite(item):
                emit(non_finite[2] if math.isnan(item) else non_finite[item < 0])
            else:
                emit(leaf(item))  # a scalar, {} or []
            continue
        inner = "" if indent is None else "\n" + " " * (indent * (depth + 1))
        outer = "" if indent is None else "\n" + " " * (indent * depth)
        opener, closer = ("{", "}") if is_dict else ("[", "]")
        push((_Text(outer + closer), 0))
        if is_dict:
            keys = list(item)
            for index in range(len(keys) - 1, -1, -1):
                key = keys[index]
                push((item[key], depth + 1))
                push((_Text((opener if index == 0 else ",") + inner + leaf(key) + colon), 0))
        else:
            for index in range(len(item) - 1, -1, -1):
                push((item[index], depth + 1))
                push((_Text((opener if index == 0 else ",") + inner), 0))
    return "".join(out)
