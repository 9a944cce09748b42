"""Our own subscriptions' messages straight from the wire, without nats-py's work per message.

nats-py turns each ``MSG``/``HMSG`` into dictionaries, a ``Msg`` object, a
parsed header dict and a queue entry for the subscription's task: most of
the agent's time per acknowledgement and of a consumer's per event.
:func:`route` makes one subscription's messages go to a plain function,
``handler(subject, reply, headers, payload)`` (raw bytes; ``headers`` empty
when the message has none), called by the parser as each complete message
arrives.  Everything else (PING, INFO, errors, other subscriptions) goes
nats-py's way unchanged; a message nats-py's own parser completes (it took
over after something else in the same read) reaches the same handler
through ``_process_msg``.  Only applied to the nats-py internals this was
written against (:func:`route` returns False otherwise: then use the
subscription as usual).
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

log = logging.getLogger(__name__)

Handler = Callable[[bytes, bytes, bytes, bytes], None]

#: nats-py's ``Client._process_msg`` and ``Parser`` internals, as used here.
_PROCESS_MSG = ["self", "sid", "subject", "reply", "data", "headers"]
_PARSER_STATE = ("buf", "state", "needed", "header_needed", "msg_arg")

_MSG = re.compile(rb"MSG[ \t]+(\S+)[ \t]+(\d+)[ \t]+(?:(\S+)[ \t]+)?(\d+)\r\n")
_HMSG = re.compile(rb"HMSG[ \t]+(\S+)[ \t]+(\d+)[ \t]+(?:(\S+)[ \t]+)?(\d+)[ \t]+(\d+)\r\n")
_PING = b"PING\r\n"
_PONG = b"PONG\r\n"
_OK = b"+OK\r\n"


def _fast_parser_class(base: type[Any]) -> type[Any]:
    """nats-py's parser class with a fast path for routed subscriptions' messages."""

    class FastParser(base):  # type: ignore[misc]
        #: Handlers by subscription id, as the wire writes it (``b"7"``).
        handlers: dict[bytes, Handler]

        async def parse(self, data: bytes = b"") -> None:
            handlers = self.handlers
            if not handlers or self.state != 1:  # 1: AWAITING_CONTROL_LINE
                await super().parse(data)
                return
            buf: bytearray = self.buf
            if buf:
                buf.extend(data)
                data = bytes(buf)  # slices of bytes are one copy each, of a bytearray two
            size = len(data)
            pos = 0
            waiting = False  # for the rest of a routed message
            nc = self.nc
            hmsg, msg = _HMSG.match, _MSG.match
            while pos < size:
                first = data[pos]
                if first == 72 or first == 77:  # "H": HMSG, "M": MSG
                    if first == 72:
                        match = hmsg(data, pos)
                        if match is None:
                            break
                        subject, sid, reply, header_size, total_size = match.groups()
                    else:
                        match = msg(data, pos)
                        if match is None:
                            break
                        subject, sid, reply, total_size = match.groups()
                        header_size = None
                    handler = handlers.get(sid)
                    if handler is None:
                        break
                    start = match.end()
                    end = start + int(total_size)
                    if end + 2 > size:
                        waiting = True
                        break
                    split = start if header_size is None else start + int(header_size)
                    pos = end + 2
                    try:
                        handler(subject, reply or b"", data[start:split], data[split:end])
                    except Exception:  # a bug of ours must not end the connection's reader
                        log.exception("nats: handling a message of subscription %s", sid)
                elif data.startswith(_PING, pos):
                    pos += len(_PING)
                    await nc._process_ping()
                elif data.startswith(_PONG, pos):
                    pos += len(_PONG)
                    await nc._process_pong()
                elif data.startswith(_OK, pos):
                    pos += len(_OK)
                else:
                    break
            if buf:
                del buf[:pos]
            else:
                buf += data[pos:]
            if buf and not waiting:  # anything else, or a partial line: nats-py's way
                await super().parse()

    return FastParser


_classes: dict[type[Any], type[Any]] = {}


def routable(nc: NATS) -> bool:
    """Whether :func:`route` can be used on *nc* (the nats-py internals it needs)."""
    parser = getattr(nc, "_ps", None)
    if parser is None or not all(hasattr(parser, name) for name in _PARSER_STATE):
        return False
    try:
        names = list(inspect.signature(type(nc)._process_msg).parameters)
    except (AttributeError, TypeError, ValueError):
        return False
    return names == _PROCESS_MSG


def route(nc: NATS, sid: int, handler: Handler) -> bool:
    """Send subscription *sid*'s messages to *handler*; False (nothing changed) if not
    applicable to this nats-py."""
    if not routable(nc):
        return False
    parser: Any = nc._ps
    if not hasattr(parser, "handlers"):
        base = type(parser)
        if base not in _classes:
            _classes[base] = _fast_parser_class(base)
        parser.handlers = {}
        parser.__class__ = _classes[base]  # in place: the same buffer and state
        _route_process_msg(nc, parser.handlers)
    parser.handlers[str(sid).encode()] = handler
    return True


def unroute(nc: NATS, sid: int) -> None:
    """Stop routing *sid* (its messages go to the subscription again)."""
    handlers = getattr(getattr(nc, "_ps", None), "handlers", None)
    if isinstance(handlers, dict):
        handlers.pop(str(sid).encode(), None)


def _route_process_msg(nc: NATS, handlers: dict[bytes, Handler]) -> None:
    """Routed messages that nats-py's own parser completed reach their handler too."""
    original = nc._process_msg

    async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes,
                          headers: bytes) -> None:
        handler = handlers.get(str(sid).encode())
        if handler is None:
            await original(sid, subject, reply, data, headers)
            return
        handler(subject, reply, headers or b"", data)  # nats-py passes None for none

    nc._process_msg = process_msg  # type: ignore[method-assign]
