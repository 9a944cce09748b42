"""The agent's messages as NATS ``HPUB`` frames, built with the least work per event.

nats-py's ``publish(headers=...)`` validates and encodes every header name
and value of every message; the agent's headers are the same for all events
of a VM but three (received time, sequence, message id).  A
:class:`Framer` builds the constant part once per (host, VM) and encodes
the values as nats-py does (``str.strip()``, CR and LF as spaces), so the
broker stores the same headers whichever way a message was sent (the tests
compare both ways through a real nats-server).
"""

from __future__ import annotations

from functools import lru_cache

from qmpevents.fleet.subjects import (
    EXPECTED_STREAM_HEADER,
    HOST_HEADER,
    MSG_ID_HEADER,
    RECEIVED_HEADER,
    SEQUENCE_HEADER,
    VM_HEADER,
)

_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


def header_value(value: str) -> str:
    """A header value as nats-py writes it."""
    # Printable text holds no white space but " ": then only its ends can change.
    if value.isprintable() and value[:1] != " " and value[-1:] != " ":
        return value
    return value.strip().translate(_NEWLINES)


class Framer:
    """``HPUB`` frames of one stream's messages."""

    def __init__(self, stream: str) -> None:
        self._suffix = f"{EXPECTED_STREAM_HEADER}: {header_value(stream)}\r\n\r\n".encode()
        self.prefix = lru_cache(maxsize=4096)(self._prefix)

    @staticmethod
    def _prefix(host: str, vm: str) -> bytes:
        return (f"NATS/1.0\r\n{HOST_HEADER}: {header_value(host)}\r\n"
                f"{VM_HEADER}: {header_value(vm)}\r\n").encode()

    def frame(self, subject: str, reply: str, host: str, vm: str, received: float,
              sequence: int, msg_id: str, payload: bytes) -> tuple[bytes, int]:
        """The frame, and the size the broker's max_payload applies to (headers + payload)."""
        header = b"".join((
            self.prefix(host, vm),
            f"{RECEIVED_HEADER}: {received:.6f}\r\n{SEQUENCE_HEADER}: {sequence}\r\n"
            f"{MSG_ID_HEADER}: {header_value(msg_id)}\r\n".encode(),
            self._suffix))
        size = len(header) + len(payload)
        return b"".join((f"HPUB {subject} {reply} {len(header)} {size}\r\n".encode(), header,
                         payload, b"\r\n")), size
