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

    MAX_CONSTANTS = 4096

    def __init__(self, stream: str) -> None:
        self._suffix = f"{EXPECTED_STREAM_HEADER}: {header_value(stream)}\r\n\r\n"
        self._constants: dict[tuple[str, str, str], tuple[str, str, bool]] = {}

    def _constant(self, host: str, vm: str, event: str) -> tuple[str, str, bool]:
        """``HPUB <subject> ``, the headers that are the same for all such events, and
        whether their message ids (``host/vm/stamp/event/seq``) need :func:`header_value`:
        not when host, VM and event name are printable (the id then starts with the host
        and ends with a digit)."""
        if len(self._constants) >= self.MAX_CONSTANTS:
            self._constants.clear()
        made = self._constants[host, vm, event] = (
            f"HPUB {subject(host, vm, event)} ",
            f"NATS/1.0\r\n{HOST_HEADER}: {header_value(host)}\r\n"
            f"{VM_HEADER}: {header_value(vm)}\r\n",
            not (f"{host}{vm}{event}".isprintable() and host[:1] != " "))
        return made

    def frame_into(self, out: bytearray, host: str, vm: str, event: str, reply: str,
                   received: float, sequence: int, msg_id: str, payload: bytes,
                   limit: int) -> int:
        """Append the frame to *out* unless its size (headers + payload, what the broker's
        max_payload applies to) is over *limit*; returns that size."""
        constant = self._constants.get((host, vm, event))
        command, fixed, odd = (constant if constant is not None
                               else self._constant(host, vm, event))
        if odd:
            msg_id = header_value(msg_id)
        header = (f"{fixed}{RECEIVED_HEADER}: {received:.6f}\r\n{SEQUENCE_HEADER}: {sequence}"
                  f"\r\n{MSG_ID_HEADER}: {msg_id}\r\n{self._suffix}").encode()
        header_size = len(header)
        size = header_size + len(payload)
        if size <= limit:
            out += f"{command}{reply} {header_size} {size}\r\n".encode()
            out += header
            out += payload
            out += b"\r\n"
        return size
