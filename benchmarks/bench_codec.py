"""Codec benchmark: typed decode of a mixed 8-event stream, events/s.

Run: ``.venv/bin/python benchmarks/bench_codec.py [--events N] [--repeat R]``

Compares, on the same pre-encoded CRLF-terminated stream of the spec's 8
events (half in the ``qemu-7.2`` profile shape, half in the ``seed`` shape):

* (a) msgspec's ceiling: ``Decoder(catalog.AnyEvent).decode_lines(stream)``;
* (b) ``json.loads`` per line (untyped);
* (c) our client path: ``Framer(messages.decode_line, messages.from_value)``
  fed 64 KiB chunks, giving typed events with their raw line attached.

The issue's target is (c) within 1.5x of (a): a ratio ours/ceiling >= 0.67.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import msgspec

from qmpevents import catalog
from qmpevents.catalog import Timestamp, build_event
from qmpevents.codec import Framer, encode_message
from qmpevents.protocol import messages

CHUNK = 64 * 1024

_VNC = {
    "server": {"auth": "none", "family": "ipv4", "service": "5910", "host": "127.0.0.1",
               "websocket": False},
    "client": {"family": "ipv4", "service": "44302", "host": "127.0.0.1", "websocket": False,
               "sasl_username": "luiz"},
}
_DATA: dict[str, dict[str, Any] | None] = {
    "BLOCK_IO_ERROR": {"device": "d_stop", "node-name": "d_stop-fmt", "operation": "write",
                       "action": "stop", "nospace": False, "reason": "Input/output error"},
    "RESET": {"guest": False, "reason": "host-qmp-system-reset"},
    "RTC_CHANGE": {"offset": 97754175, "qom-path": "/machine/unattached/device[9]"},
    "SHUTDOWN": {"guest": True, "reason": "guest-shutdown"},
    "STOP": None,
    "VNC_CONNECTED": _VNC,
    "VNC_DISCONNECTED": _VNC,
    "VNC_INITIALIZED": _VNC,
}


def build_stream(count: int) -> bytes:
    """*count* event lines cycling through the 8 events and both profiles."""
    lines = []
    names = list(_DATA)
    for i in range(count):
        name = names[i % len(names)]
        profile: catalog.Profile = "qemu-7.2" if (i // len(names)) % 2 == 0 else "seed"
        stamp = Timestamp(1795701759 + i // 1000, (i * 7919) % 1_000_000)
        lines.append(encode_message(build_event(name, _DATA[name], stamp, profile)))
    return b"".join(lines)


def ceiling(stream: bytes) -> int:
    decoder = msgspec.json.Decoder(catalog.AnyEvent)
    return len(decoder.decode_lines(stream))


def line_blocks(stream: bytes) -> list[bytes]:
    """The stream cut at the last newline of every 64 KiB: what a reader would decode."""
    blocks, start = [], 0
    while start < len(stream):
        cut = stream.rfind(b"\n", start, start + CHUNK) + 1
        blocks.append(stream[start:cut])
        start = cut
    return blocks


def ceiling_in_blocks(blocks: list[bytes]) -> int:
    decoder = msgspec.json.Decoder(catalog.AnyEvent)
    return sum(len(decoder.decode_lines(block)) for block in blocks)


def json_per_line(stream: bytes) -> int:
    loads = json.loads
    return len([loads(line) for line in stream.splitlines()])


def ours(stream: bytes) -> int:
    framer: Framer[Any] = Framer(messages.decode_line, messages.from_value,
                                 decode_block=messages.decode_event_block)
    count = 0
    for start in range(0, len(stream), CHUNK):
        items = framer.feed(stream[start:start + CHUNK])
        count += len(items)
    return count


def measure(func: Callable[[Any], int], stream: Any, expected: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        got = func(stream)
        elapsed = time.perf_counter() - began
        if got != expected:
            raise SystemExit(f"{func.__name__} decoded {got} events, expected {expected}")
        best = min(best, elapsed)
    return expected / best


def check_ours(stream: bytes) -> None:
    """Our path must give typed events, each keeping its exact raw line."""
    framer: Framer[Any] = Framer(messages.decode_line, messages.from_value,
                                 decode_block=messages.decode_event_block)
    items = framer.feed(stream[:CHUNK]) + framer.feed(stream[CHUNK:2 * CHUNK])
    lines = stream[:2 * CHUNK].split(b"\r\n")
    for item, line in zip(items, lines, strict=False):
        assert isinstance(item, catalog.Event), item
        assert item.raw == line, (item.raw, line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    stream = build_stream(args.events)
    check_ours(stream)
    print(f"stream: {args.events} events, {len(stream) / 1e6:.1f} MB, "
          f"{len(stream) / args.events:.0f} bytes/event; best of {args.repeat}")
    rates = {}
    for label, func in (("(a) msgspec decode_lines ceiling", ceiling),
                        ("(b) json.loads per line", json_per_line),
                        ("(c) ours: Framer(decode_line) 64 KiB chunks", ours)):
        rates[func.__name__] = rate = measure(func, stream, args.events, args.repeat)
        print(f"{label:46s} {rate / 1e6:6.3f} M events/s")
    blocks = line_blocks(stream)
    block_rate = measure(ceiling_in_blocks, blocks, args.events, args.repeat)
    print(f"{'(info) msgspec decode_lines per 64 KiB block':46s} {block_rate / 1e6:6.3f} M events/s"
          "  (cache-friendly; no raw lines, no framing)")
    ratio = rates["ours"] / rates["ceiling"]
    print(f"ours / ceiling = {ratio:.2f}  (target >= 0.67: {'met' if ratio >= 0.67 else 'MISSED'})")
    print(f"ours / json    = {rates['ours'] / rates['json_per_line']:.2f}")
    print(f"ours / per-block ceiling = {rates['ours'] / block_rate:.2f}")


if __name__ == "__main__":
    main()
