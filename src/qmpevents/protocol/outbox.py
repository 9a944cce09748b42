"""The bytes a role owes its peer, in the order it produced them (both roles' buffer)."""

from __future__ import annotations

from typing import cast

from qmpevents.codec.encoder import MessageSteps


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


class SteppedOutbox:
    """A server's :class:`Outbox`: bytes, and messages still being encoded, in order.

    A reply that echoes a peer's huge value is held as its
    :class:`~qmpevents.codec.encoder.MessageSteps` and encoded as it is taken:
    ``take(one_step=True)`` does at most one step (a few ms) of it, so an
    adapter serving many peers writes it over several loop iterations, and
    only while its peer reads (memory: the value it already holds plus a step).
    What was appended after it waits behind it.
    """

    __slots__ = ("_parts", "_stepping", "size")

    def __init__(self) -> None:
        self._parts: list[bytes | MessageSteps] = []
        self._stepping = 0  # MessageSteps among the parts
        #: Bytes waiting (not counting what is still to be encoded).
        self.size = 0

    def append(self, data: bytes) -> None:
        self._parts.append(data)
        self.size += len(data)

    def append_steps(self, steps: MessageSteps) -> None:
        """A message whose encoding goes on as it is taken (its first step done)."""
        self._parts.append(steps)
        self._stepping += 1

    @property
    def pending(self) -> bool:
        """A message is still being encoded: take again (after yielding)."""
        return self._stepping > 0

    def take(self, one_step: bool = False) -> bytes:
        """What is ready, in order: with *one_step*, encoding at most one step."""
        parts = self._parts
        if not self._stepping:
            data = b"".join(cast("list[bytes]", parts))
            parts.clear()
            self.size = 0
            return data
        out: list[bytes] = []
        taken = 0
        stepped = False
        while taken < len(parts):
            part = parts[taken]
            if isinstance(part, bytes):  # ready: taken whatever the step
                out.append(part)
                self.size -= len(part)
                taken += 1
                continue
            if stepped and one_step:
                break
            out.append(part.next_piece())
            stepped = True
            if part.done:
                self._stepping -= 1
                taken += 1
            elif one_step:
                break
        del parts[:taken]
        return b"".join(out)
