"""The bytes a role owes its peer, in the order it produced them (both roles' buffer)."""

from __future__ import annotations


class Outbox:
    """Appended to by every ``send_*``; emptied by ``data_to_send()`` in one join."""

    __slots__ = ("_parts", "size")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        #: Bytes waiting, so an adapter can bound what a slow peer leaves unread.
        self.size = 0

    def append(self, data: bytes) -> None:
        self._parts.append(data)
        self.size += len(data)

    def take(self) -> bytes:
        parts = self._parts
        if not parts:
            return b""
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        self.size = 0
        return data
