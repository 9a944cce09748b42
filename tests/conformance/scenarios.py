"""The fast scenarios: protocol, run state, VNC, monitors and connection rules.

Every scenario runs on a fresh QEMU (``-S -nodefaults -display none``, TCG; QEMU
starts in well under a second) and a fresh ``SimulatedVM(profile="qemu-7.2",
start_paused=True, ignore_acpi=True)``.  Inputs follow ``spec/qemu-7.2-wire.md``.
"""

from __future__ import annotations

from .harness import (
    Close,
    Count,
    Open,
    Scenario,
    Send,
    Setup,
    Step,
    Sync,
    Vnc,
    WaitEOF,
    WaitFor,
    cmd,
    negotiate,
)

CRLF = b"\r\n"
VNC_PASSWORD = "s3cret"  # VNC passwords are at most 8 characters


def _qs(id_json: bytes) -> Send:
    """query-status with a raw JSON *id*."""
    return Send(b'{"execute": "query-status", "id": ' + id_json + b"}" + CRLF)


def _lines(*inputs: bytes) -> tuple[Step, ...]:
    """Each input on its own write, each followed by a sync (so replies stay in order)."""
    steps: list[Step] = []
    for data in inputs:
        steps += [Send(data), Sync()]
    return tuple(steps)


ID_VALUES: tuple[bytes, ...] = (
    b'"text"', b'""', b"0", b"42", b"-7", b"1.5", b"-0.25", b"1e3",
    b"9223372036854775807", b"-9223372036854775808", b"18446744073709551616",
    b"true", b"false", b"null", b"{}", b"[]", b'{"b": 1, "a": [true, null, "x"]}',
    b'[1, [2, [3, []]], {"k": [null, false]}]',
    b'"\\u00e9\\u2603\\ud83d\\ude00"', b'"' + "\u00e9\u2603\U0001f600".encode() + b'"',
    b'"a\\/b"', b'"\\b\\f\\n\\r\\t\\"\\\\"', b'"\\u0000"',
)

REQUEST_ERRORS: tuple[bytes, ...] = (
    b'{"execute": "no-such-command", "id": 3}',
    b'{"execute": }',
    b'{"execute": "query-status",}',
    b"}",
    b'{"execute": nope}',
    b'{"execute": "query-status" ]',
    b'{"execute": "a\tb", "id": "tab"}',
    b"[1,2,3]",
    b'"x"',
    b"42",
    b"null",
    b"{}",
    b'{"id": 5}',
    b'{"foo": 1, "id": "f"}',
    b'{"execute": "query-status", "foo": 1}',
    b'{"execute": 1, "id": "e1"}',
    b'{"execute": "query-status", "arguments": [], "id": "arr"}',
    b'{"exec-oob": "query-status", "id": "oob"}',
    b'{"execute": "query-status", "exec-oob": "query-status"}',
    b'{"execute": "change-vnc-password", "arguments": {"password": 1}, "id": "t"}',
    b'{"execute": "change-vnc-password", "arguments": {"password": "p", "x": 1}, "id": "u"}',
    b'{"execute": "change-vnc-password", "arguments": {}, "id": "m"}',
    b'{"execute": "device_del", "arguments": {"id": "nope"}, "id": "dd"}',
    b'{"execute": "qom-list", "arguments": {"path": "/nope"}, "id": "ql"}',
)


def _ids() -> tuple[Step, ...]:
    return tuple(s for v in ID_VALUES for s in (_qs(v), Sync()))


def _nested(depth: int) -> bytes:
    """query-status whose id is *depth* nested arrays (total depth ``depth + 1``)."""
    return b'{"execute": "query-status", "id": ' + b"[" * depth + b"]" * depth + b"}" + CRLF


PROTOCOL: tuple[Scenario, ...] = (
    Scenario("greeting", "the greeting, then a clean close",
             (Close(0),)),
    Scenario("before-negotiation", "commands before qmp_capabilities, then negotiation",
             _lines(b'{"execute": "query-status"}' + CRLF,
                    b'{"execute": "query-status", "id": 1}' + CRLF,
                    b'{"execute": "no-such-command", "id": 3}' + CRLF,
                    b'{"execute": "stop", "id": "not-yet"}' + CRLF,
                    b'{"execute": "qmp_capabilities", "arguments": {"enable": ["bogus"]},'
                    b' "id": 9}' + CRLF,
                    b'{"execute": "qmp_capabilities", "id": "neg"}' + CRLF,
                    b'{"execute": "query-status", "id": "after"}' + CRLF)),
    Scenario("negotiate-twice", "qmp_capabilities twice (in one write, then again)",
             _lines(b'{"execute": "qmp_capabilities", "id": "c1"}\r\n'
                    b'{"execute": "qmp_capabilities", "id": "c2"}' + CRLF,
                    b'{"execute": "qmp_capabilities"}' + CRLF)),
    Scenario("oob", "oob negotiated: exec-oob of a command without OOB support",
             _lines(b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}' + CRLF,
                    b'{"exec-oob": "query-status", "id": "oob1"}' + CRLF)),
    Scenario("id-echo", "every JSON type as id, before and after negotiation",
             (*_ids(), negotiate(), Sync(), *_ids())),
    Scenario("request-errors", "every request error of the wire doc, negotiated",
             (negotiate(), Sync(), *_lines(*(e + CRLF for e in REQUEST_ERRORS)))),
    Scenario("several-in-one-write", "three commands in one write, with and without CRLF",
             (negotiate(),
              *_lines(b'{"execute": "query-status", "id": 1}{"execute": "query-status",'
                      b' "id": 2}' + CRLF,
                      b'{"execute": "query-status", "id": 1}\r\n{"execute": "query-status",'
                      b' "id": 2}\r\n{"execute": "query-status", "id": 3}' + CRLF,
                      b"{'execute': 'query-status', 'id': 'sq'}" + CRLF,
                      b'\r\n\r\n  \t{"execute": "query-status", "id": "ws"}' + CRLF))),
    Scenario("split-writes", "one command over many writes",
             (negotiate(), Sync(),
              Send(b'{"execute": "query-status", "arguments": {}, "id": "split"}' + CRLF,
                   chunks=20),
              Sync(),
              Send(b'{"execute": "query-version", "id": "bytes"}' + CRLF, chunks=44),
              Sync())),
    Scenario("no-trailing-newline", "a command without CRLF; a bare number needs a delimiter",
             (negotiate(), Sync(),
              Send(b'{"execute": "query-status", "id": "nonl"}'), Sync(),
              Send(b"42"), Sync(),
              Send(b'{"execute": "query-status", "id": "lf"}\n'), Sync())),
    Scenario("nesting", "total depth 1024 is accepted, 1025 is refused (and re-lexed)",
             (negotiate(), Sync(), Send(_nested(1023)), Sync(), Send(_nested(1024)), Sync(),
              Send(b'{"execute": "query-status", "id": "alive"}' + CRLF), Sync())),
)

RUNSTATE: tuple[Scenario, ...] = (
    Scenario("runstate", "stop/cont (twice each), system_reset paused and running,"
             " system_powerdown, quit",
             (negotiate(), Sync(), *_lines(*(c + CRLF for c in (
                 b'{"execute": "query-status", "id": "s0"}',
                 b'{"execute": "stop", "id": "stop-prelaunch"}',
                 b'{"execute": "cont", "id": "cont1"}',
                 b'{"execute": "cont", "id": "cont2"}',
                 b'{"execute": "query-status", "id": "s1"}',
                 b'{"execute": "stop", "id": "stop1"}',
                 b'{"execute": "stop", "id": "stop2"}',
                 b'{"execute": "query-status", "id": "s2"}',
                 b'{"execute": "system_reset", "id": "reset-paused"}',
                 b'{"execute": "query-status", "id": "s3"}',
                 b'{"execute": "cont", "id": "cont3"}',
                 b'{"execute": "system_reset", "id": "reset-running"}'))),
              *_lines(*(c + CRLF for c in (
                 b'{"execute": "query-status", "id": "s4"}',
                 b'{"execute": "system_powerdown", "id": "powerdown"}',
                 b'{"execute": "query-status", "id": "s5"}'))),
              # quit without CRLF: QEMU closes before reading it, a CRLF would make an RST
              Send(b'{"execute": "quit", "id": "quit"}'), WaitEOF())),
    Scenario("quit-paused", "quit of a paused VM: SHUTDOWN, no STOP",
             (negotiate(), cmd("cont"), cmd("stop"), Sync(),
              Send(b'{"execute": "quit", "id": "q"}'), WaitEOF())),
)

VNC: tuple[Scenario, ...] = (
    Scenario("vnc-none", "VNC without authentication: a full handshake, an early close",
             (negotiate(), Sync(),
              Vnc("handshake"), WaitFor(rb'"VNC_DISCONNECTED"', 1), Sync(),
              Vnc("early-close"), WaitFor(rb'"VNC_DISCONNECTED"', 2), Sync()),
             Setup(vnc=True)),
    Scenario("vnc-password", "VNC password authentication: good, bad, early close",
             (negotiate(), Sync(),
              Vnc("handshake", VNC_PASSWORD), WaitFor(rb'"VNC_DISCONNECTED"', 1), Sync(),
              Vnc("bad-password", "wrong"), WaitFor(rb'"VNC_DISCONNECTED"', 2), Sync(),
              Vnc("early-close"), WaitFor(rb'"VNC_DISCONNECTED"', 3), Sync()),
             Setup(vnc=True, vnc_password=VNC_PASSWORD)),
)

MONITORS: tuple[Scenario, ...] = (
    Scenario("two-monitors", "two monitors, the second negotiates late; events only to"
             " negotiated monitors, never queued",
             (negotiate(0), Sync(),
              cmd("cont", "c1"), cmd("stop", "s1"), Sync(),
              cmd("query-status", "m1-early", monitor=1), Sync(),
              negotiate(1), Sync(),
              cmd("cont", "c2"), Sync(),
              cmd("stop", "s2", monitor=1), Sync(),
              Send(b'{"execute": "quit", "id": "quit"}'), WaitEOF(0), WaitEOF(1)),
             Setup(monitors=2)),
    Scenario("one-never-negotiates", "a second monitor that never negotiates sees only"
             " its greeting and its own errors",
             (negotiate(0), Sync(),
              cmd("cont", "c1"), cmd("stop", "s1"), cmd("system_reset", "r1"), Sync(),
              cmd("system_powerdown", "p1"), Sync(),
              Send(b'{"execute": "quit", "id": "quit"}'), WaitEOF(0), WaitEOF(1)),
             Setup(monitors=2)),
)

#: Requests in one write, the last one unfinished: what ``echo ... | socat -`` sends.
HALF_CLOSE_BURST = (
    b'{"execute": "qmp_capabilities"}{"execute": "query-status", "id": 1}'
    b'{"execute": "cont", "id": "c"}{"execute": "no-such-command", "id": "x"}\r\n'
    b'{"execute": "stop", "id": "s"}{"execute": "query-status", "id": 2}'
    b'{"execute": "query-status", "id": "unfinished"'
)

#: What the pretty monitor is asked: events, errors, empty and nested values.
PRETTY_BURST = (
    b'{"execute": "qmp_capabilities"}{"execute": "query-status", "id": 1}'
    b'{"execute": "cont", "id": "c"}{"execute": "stop", "id": "s"}'
    b'{"execute": "no-such-command", "id": "x"}{"execute": "query-block", "id": "b"}'
    b'{"execute": "query-status", "id": [[], {}, {"k": [1, "\\u00e9\\n", null]}, -1.5]}'
    b'{"execute": "query-version", "id": "v"}'
)

CONNECTION: tuple[Scenario, ...] = (
    Scenario("half-close", "requests then shutdown(SHUT_WR): every complete request is"
             " answered, then EOF",
             (Send(HALF_CLOSE_BURST), Close(0))),
    Scenario("half-close-silent", "a half-close right after the greeting: EOF",
             (Close(0),)),
    Scenario("one-client", "one client per socket: the next connections wait ungreeted,"
             " then are served in order, with what they sent meanwhile",
             (Open(0), negotiate(), Sync(),
              Open(1, socket=0, greeted=False),
              Send(b'{"execute": "qmp_capabilities"}{"execute": "query-status", "id": "w1"}'
                   + CRLF, monitor=1),
              Open(2, socket=0, greeted=False),
              Send(b'{"execute": "query-status", "id": "w2"}' + CRLF, monitor=2),
              cmd("cont", "c0"), Sync((0,)), Count(1), Count(2),
              Close(0), Sync((1,)), Count(2),
              cmd("stop", "s1", monitor=1), Sync((1,)),
              Close(1), Sync((2,)), Close(2)),
             Setup(open_all=False, monitors=1)),
    Scenario("pretty", "pretty=on: QEMU's pretty-printed greeting, replies, errors and"
             " events", (Send(PRETTY_BURST), Close(0)),
             Setup(pretty=True)),
)

FAST: tuple[Scenario, ...] = PROTOCOL + RUNSTATE + VNC + MONITORS + CONNECTION
