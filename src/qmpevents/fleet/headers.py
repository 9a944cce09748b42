"""A faster parser of NATS header blocks for our own connections, same results as nats-py's.

nats-py 2.16 parses each header line with a per-character generator
(``any(c.isspace() for c in key)``): with the agent's six headers that is
about half of a consumer's time per message.  :func:`parse_header_lines`
gives exactly the same dict (same skipped lines, same decoding; the tests
compare both on odd input), checking each header name once, not per message.
:func:`install` puts it on one client instance only, and only when that
client parses headers with the pure-Python method this replaces.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

_CRLF = b"\r\n"
#: ``str.isspace`` characters: for ``str`` patterns ``\s`` is Unicode whitespace, the same set.
_SPACE = re.compile(r"\s")


#: Header names seen, raw bytes -> name (None: a name nats-py skips); bounded.
_names: dict[bytes, str | None] = {}
_MAX_NAMES = 1024


def _name(raw: bytes) -> str | None:
    try:
        key = raw.strip().decode("ascii")
    except UnicodeDecodeError:
        return None
    return None if _SPACE.search(key) is not None else key


#: The agent's own header block (any values), with or without its ``NATS/1.0`` line.
_AGENT_BLOCK = re.compile(
    r"(?:NATS/1\.0\r\n)?"
    r"Qmp-Host:([^\r\n]*)\r\nQmp-Vm:([^\r\n]*)\r\nQmp-Received:([^\r\n]*)\r\n"
    r"Qmp-Seq:([^\r\n]*)\r\nNats-Msg-Id:([^\r\n]*)\r\n"
    r"(?:Nats-Expected-Stream:([^\r\n]*)\r\n)?(?:\r\n)?")
_AGENT_NAMES = ("Qmp-Host", "Qmp-Vm", "Qmp-Received", "Qmp-Seq", "Nats-Msg-Id")
#: What ``bytes.strip()`` strips (``str.strip()`` strips more).
_ASCII_SPACE = " \t\n\r\x0b\x0c"


def agent_headers(raw: bytes) -> tuple[str, str, str, str, str, str | None] | None:
    """The values of the agent's own header block (host, VM, received, sequence, message
    id, expected stream) as :func:`parse_header_lines` gives them, or None for any other
    block: the usual case in one match, without a dict."""
    agents = _AGENT_BLOCK.fullmatch(raw.decode("utf-8", "replace"))
    if agents is None:
        return None
    host, vm, received, seq, msg_id, stream = agents.groups()
    return (host.strip(_ASCII_SPACE), vm.strip(_ASCII_SPACE), received.strip(_ASCII_SPACE),
            seq.strip(_ASCII_SPACE), msg_id.strip(_ASCII_SPACE),
            None if stream is None else stream.strip(_ASCII_SPACE))


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """``Name: Value`` lines as nats-py's ``Client._parse_header_lines`` reads them."""
    agents = agent_headers(raw)
    if agents is not None:
        out = dict(zip(_AGENT_NAMES, agents[:5], strict=True))
        if agents[5] is not None:
            out["Nats-Expected-Stream"] = agents[5]
        return out
    out = {}
    names = _names
    for line in raw.split(_CRLF):
        name, sep, value = line.partition(b":")
        if not sep:
            continue  # also the empty lines
        try:
            key = names[name]
        except KeyError:
            key = _name(name)
            if len(names) < _MAX_NAMES:
                names[name] = key
        if key is not None:
            out[key] = value.strip().decode("utf-8", "replace")
    return out


def install(client: NATS) -> bool:
    """Use :func:`parse_header_lines` on *client*; False (nothing changed) if not applicable."""
    import nats.aio.client

    original = getattr(type(client), "_parse_header_lines", None)
    if original is None or getattr(nats.aio.client, "parse_email", None) is not None:
        return False  # another nats-py, or its own fast parser (fast_mail_parser) in use
    client._parse_header_lines = parse_header_lines  # type: ignore[method-assign]
    return True
