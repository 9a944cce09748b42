"""Coverage-guided fuzzing of the codec and the server protocol with atheris (libFuzzer).

Run by ``tests/test_fuzz_atheris.py`` as a subprocess (libFuzzer owns the
process and exits when done); by hand: ``python tests/fuzz_atheris.py -runs=100000``.

Each input is checked for three properties:

* the fast+exact framer gives exactly what QEMU's lexer/parser, fed byte by
  byte, gives (the fast path never changes an answer);
* a negotiated server monitor never raises, answers every message, and after
  ``\\xff\\n`` (which resynchronises QEMU's lexer from any state) still answers
  a valid command normally;
* the client side never raises on the same bytes as server output.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).parent))

with atheris.instrument_imports():
    from test_framing import canon, reference

    from qmpevents.codec import value_framer
    from qmpevents.protocol import NEED_DATA, ClientConnection, ServerConnection

VERSION = {"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": ""}
PROBE = b'{"execute": "query-status", "id": "probe"}\n'
PROBE_REPLY = b'{"return": {}, "id": "probe"}\r\n'


def check(data: bytes) -> None:
    whole = data + b"\n"
    framer = value_framer()
    assert [canon(x) for x in framer.feed(whole)] == [canon(x) for x in reference(whole)]

    server = ServerConnection(version=VERSION)
    server.send_greeting()
    server.receive_data(b'{"execute": "qmp_capabilities"}\n')
    server.next_event()
    server.data_to_send()
    server.receive_data(data + b"\xff\n" + PROBE)
    for command in server.commands():
        server.send_return(command, {})
    replies = server.data_to_send()
    assert replies.endswith(PROBE_REPLY), replies[-200:]

    client = ClientConnection()
    client.receive_data(data)
    while client.next_event() is not NEED_DATA:
        pass


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
