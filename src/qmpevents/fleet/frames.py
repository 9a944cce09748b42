"""The agent's messages as NATS ``HPUB`` frames, built with the least work per event.

nats-py's ``publish(headers=...)`` validates and encodes every header name
and value of every message; the agent's headers are the same for all events
of a VM but three (received time, sequence, message id).  A
:class:`Framer` builds the constant part (and the subject) once per (host,
VM, event name) and encodes
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
    subject,
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
        self._suffix = f"{EXPECTED_STREAM_HEADER}: {header_value(stream)}\r\n\r\n"
        self._constants = lru_cache(maxsize=4096)(self._constant)

    @staticmethod
    def _constant(host: str, vm: str, event: str) -> tuple[bytes, bytes]:
        """``HPUB <subject> `` and the headers that are the same for all such events."""
        return (f"HPUB {subject(host, vm, event)} ".encode(),
                (f"NATS/1.0\r\n{HOST_HEADER}: {header_value(host)}\r\n"
                 f"{VM_HEADER}: {header_value(vm)}\r\n").encode())

    def frame(self, host: str, vm: str, event: str, reply: str, received: float,
              sequence: int, msg_id: str, payload: bytes) -> tuple[list[bytes], int]:
        """The frame's parts, and the size the broker's max_payload applies to (headers +
        payload): a batch is the parts of its frames joined once."""
        command, fixed = self._constants(host, vm, event)
        header = (f"{RECEIVED_HEADER}: {received:.6f}\r\n{SEQUENCE_HEADER}: {sequence}\r\n"
                  f"{MSG_ID_HEADER}: {header_value(msg_id)}\r\n{self._suffix}").encode()
        header_size = len(fixed) + len(header)
        size = header_size + len(payload)
        return [command, f"{reply} {header_size} {size}\r\n".encode(), fixed, header, payload,
                b"\r\n"], size
