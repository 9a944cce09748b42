"""Run one scenario against real QEMU 7.2 or the simulator and record every line.

A :class:`Scenario` is a :class:`Setup` (monitors, VNC, drives, extra QEMU args)
and a list of steps:

* :class:`Send` -- raw bytes on monitor N (or, with ``chunks``, over several writes);
* :class:`Sync` -- wait for quiet: probe each open monitor (``query-status`` with a
  hidden id) and wait for the probe's reply, which proves every earlier input was
  handled and every event it caused was delivered;
* :class:`WaitFor` -- wait (with a deadline) until a monitor has received N lines
  matching a pattern: for what happens asynchronously (VNC, a guest);
* :class:`WaitEOF`, :class:`Open`, :class:`Close` -- the connection's life (an
  :class:`Open` may make a further connection to an already used socket, and
  need not wait for a greeting: QEMU greets one client per socket at a time);
* :class:`Count` -- note how many lines a monitor has received so far (what a
  client waiting for its turn has seen: nothing);
* :class:`Vnc` -- an RFB client action (handshake with or without a password,
  a wrong password, an early close), whose outcome is recorded in the ``vnc`` stream.

A step may be limited to one target with ``only="qemu"`` or ``only="sim"`` (a
guest's action in QEMU is an ``x-sim-*`` command in the simulator).  Replies to
commands whose ``id`` starts with ``__`` (probes, hidden ``x-sim-*`` commands) are
not recorded.  Every read has a deadline; a deadline that passes is recorded as a
``<timeout ...>`` line, which no allowed difference matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

from qemu_support import QemuProcess

from qmpevents.sim import SimulatedVM
from qmpevents.sim.vnc import free_display
from qmpevents.testing import RawQMP
from qmpevents.vnc_client import AuthFailed, RfbClient

Who = Literal["qemu", "sim"]
TARGETS: tuple[Who, ...] = ("qemu", "sim")

#: What every run records: stream name ("qmp0", "qmp1", ..., "vnc") -> lines.
Recording = dict[str, list[bytes]]

EOF_LINE = b"<EOF>"
STEP_DEADLINE = 20.0
_HIDDEN = re.compile(rb'"id": "__')


# -- steps ------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    data: bytes
    monitor: int = 0
    chunks: int = 1  # split into this many writes
    only: Who | None = None


@dataclass(frozen=True)
class Sync:
    """Wait for quiet on every open monitor (or those listed), via probes."""

    monitors: tuple[int, ...] | None = None
    only: Who | None = None


@dataclass(frozen=True)
class WaitFor:
    pattern: bytes
    count: int = 1  # total number of matching lines on the monitor so far
    monitor: int = 0
    timeout: float = STEP_DEADLINE
    only: Who | None = None


@dataclass(frozen=True)
class WaitEOF:
    monitor: int = 0
    only: Who | None = None


@dataclass(frozen=True)
class Open:
    monitor: int
    only: Who | None = None
    socket: int | None = None  # the socket to connect to (default: the monitor's own)
    greeted: bool = True  # wait for the greeting


@dataclass(frozen=True)
class Count:
    """Record ``<N lines received>`` on monitor N's stream."""

    monitor: int
    only: Who | None = None


@dataclass(frozen=True)
class Close:
    """Half-close monitor N and wait for the peer's EOF."""

    monitor: int
    only: Who | None = None


VncAction = Literal["handshake", "bad-password", "early-close"]


@dataclass(frozen=True)
class Vnc:
    action: VncAction
    password: str | None = None
    only: Who | None = None


Step = Send | Sync | WaitFor | WaitEOF | Open | Close | Count | Vnc


@dataclass(frozen=True)
class Setup:
    monitors: int = 1
    vnc: bool = False
    vnc_password: str | None = None
    no_shutdown: bool = False
    sim_drives: tuple[str, ...] = ()
    qemu_args: tuple[str, ...] = ()
    open_all: bool = True  # connect every monitor first (recording its greeting)
    # QEMU runs HALT_FIRMWARE instead of SeaBIOS (see there); False for a booting guest
    halt_firmware: bool = True
    pretty: bool = False  # monitor 0 pretty-prints (QEMU: -mon ...,pretty=on)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    steps: tuple[Step, ...]
    setup: Setup = field(default_factory=Setup)
    slow: bool = False


def negotiate(monitor: int = 0) -> Send:
    return Send(b'{"execute": "qmp_capabilities"}\r\n', monitor)


def cmd(name: str, id_: str | None = None, monitor: int = 0, args: str | None = None,
        only: Who | None = None) -> Send:
    """A command line (keys in a fixed order, CRLF-terminated)."""
    text = f'{{"execute": "{name}"'
    if args is not None:
        text += f', "arguments": {args}'
    if id_ is not None:
        text += f', "id": "{id_}"'
    return Send(text.encode() + b"}\r\n", monitor, only=only)


# -- one monitor connection ------------------------------------------------


class _Monitor:
    """A raw QMP connection whose every line is recorded by a reader task."""

    def __init__(self, raw: RawQMP, lines: list[bytes]) -> None:
        self._raw = raw
        self.lines = lines
        self.hidden: set[bytes] = set()
        self.eof = False
        self._changed = asyncio.Condition()
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, path: str, lines: list[bytes]) -> _Monitor:
        # retry: the previous client may still be being torn down
        return cls(await RawQMP.unix(path, timeout=STEP_DEADLINE, retry=True), lines)

    async def _read(self) -> None:
        try:
            while True:
                try:
                    line = await self._raw.line(timeout=None)
                except (EOFError, ConnectionError, OSError):
                    break
                await self._add(line)
        finally:
            self.eof = True
            self.lines.append(EOF_LINE)
            async with self._changed:
                self._changed.notify_all()

    async def _add(self, line: bytes) -> None:
        if _HIDDEN.search(line):
            match = re.search(rb'"id": "(__[^"]*)"', line)
            if match:
                self.hidden.add(match.group(1))
        else:
            self.lines.append(line)
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: predicate() or self.eof)
        except TimeoutError:
            return False
        return predicate()

    async def send(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self._raw.send(data)

    def half_close(self) -> None:
        self._raw.half_close()

    async def close(self) -> None:
        await self._raw.close()
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# -- targets ----------------------------------------------------------------


@dataclass
class Endpoints:
    qmp_paths: list[str]
    vnc_port: int | None



#: A 64 KiB x86 "firmware" whose reset vector is ``cli; 1: hlt; jmp 1b``: the vCPU
#: halts at once.  SeaBIOS, QEMU's default, resets the machine by itself (two
#: RESET {guest: true} some milliseconds after a system_reset, depending on how
#: far it had got), which is firmware behaviour, not QMP's, and would make the
#: run-state scenarios depend on timing.  The simulator has no firmware either.
HALT_FIRMWARE = bytes(65536 - 16) + b"\xfa\xf4\xeb\xfd" + bytes(12)


def qemu_argv(setup: Setup, display: int | None, firmware: str | None = None) -> list[str]:
    args: list[str] = []
    if firmware is not None:
        args += ["-bios", firmware]
    if setup.no_shutdown:
        args.append("-no-shutdown")
    if display is not None:
        vnc = f"127.0.0.1:{display}"
        if setup.vnc_password is not None:
            args += ["-object", f"secret,id=vncpw,data={setup.vnc_password}"]
            vnc += ",password-secret=vncpw"
        args += ["-vnc", vnc]
    return args + list(setup.qemu_args)


@contextlib.asynccontextmanager
async def run_qemu(setup: Setup) -> AsyncIterator[Endpoints]:
    display = free_display() if setup.vnc else None
    with tempfile.TemporaryDirectory(prefix="qmpev-fw-") as tmp:
        firmware = None
        if setup.halt_firmware:
            firmware = os.path.join(tmp, "halt.bin")
            with open(firmware, "wb") as out:
                out.write(HALT_FIRMWARE)
        async with QemuProcess(*qemu_argv(setup, display, firmware), pretty=setup.pretty,
                               extra_qmp=setup.monitors - 1, startup_deadline=30.0) as qemu:
            yield Endpoints([qemu.socket_path, *qemu.extra_socket_paths],
                            None if display is None else 5900 + display)


@contextlib.asynccontextmanager
async def run_sim(setup: Setup) -> AsyncIterator[Endpoints]:
    tmp = tempfile.mkdtemp(prefix="qmpev-conf-")
    paths = [os.path.join(tmp, f"qmp{i}.sock") for i in range(setup.monitors)]
    try:
        qmp = [f"unix:{path}" + (",pretty=on" if setup.pretty and i == 0 else "")
               for i, path in enumerate(paths)]
        vm = SimulatedVM(qmp=qmp,
                         profile="qemu-7.2",  # one client per socket: the profile's default
                         start_paused=True, ignore_acpi=True, no_shutdown=setup.no_shutdown,
                         drives=setup.sim_drives,
                         vnc="127.0.0.1:0" if setup.vnc else None, vnc_port=0,
                         vnc_password=setup.vnc_password)
        async with vm:
            yield Endpoints(paths, vm.vnc_port)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


TargetFactory = Callable[[Setup], contextlib.AbstractAsyncContextManager[Endpoints]]
FACTORIES: dict[Who, TargetFactory] = {"qemu": run_qemu, "sim": run_sim}


# -- the runner -------------------------------------------------------------


class _Run:
    def __init__(self, who: Who, endpoints: Endpoints, recording: Recording) -> None:
        self.who = who
        self.endpoints = endpoints
        self.recording = recording
        self.monitors: dict[int, _Monitor] = {}
        self._probes = 0

    def stream(self, name: str) -> list[bytes]:
        return self.recording.setdefault(name, [])

    def note(self, stream: str, text: str) -> None:
        self.stream(stream).append(text.encode())

    async def open(self, index: int, socket: int | None = None) -> None:
        old = self.monitors.pop(index, None)
        if old is not None:
            await old.close()
        path = self.endpoints.qmp_paths[index if socket is None else socket]
        self.monitors[index] = await _Monitor.open(path, self.stream(f"qmp{index}"))

    async def step(self, step: Step) -> None:
        if step.only is not None and step.only != self.who:
            return
        match step:
            case Open(monitor=index, socket=socket, greeted=greeted):
                await self.open(index, socket)
                # the greeting is the first line
                if greeted and not await self.monitors[index].wait(
                        lambda: bool(self.monitors[index].lines), STEP_DEADLINE):
                    self.note(f"qmp{index}", "<timeout waiting for the greeting>")
            case Send(data=data, monitor=index, chunks=chunks):
                mon = self.monitors[index]
                size = max(1, -(-len(data) // chunks))
                for start in range(0, len(data), size):
                    await mon.send(data[start:start + size])
            case Sync(monitors=indexes):
                for index in indexes if indexes is not None else sorted(self.monitors):
                    await self.probe(index)
            case WaitFor(pattern=pattern, count=count, monitor=index, timeout=timeout):
                mon = self.monitors[index]
                regex = re.compile(pattern)
                if not await mon.wait(
                        lambda: sum(bool(regex.search(x)) for x in mon.lines) >= count,
                        timeout):
                    self.note(f"qmp{index}", f"<timeout waiting for {count} x {pattern!r}>")
            case WaitEOF(monitor=index):
                mon = self.monitors[index]
                if not await mon.wait(lambda: mon.eof, STEP_DEADLINE):
                    self.note(f"qmp{index}", "<timeout waiting for EOF>")
            case Close(monitor=index):
                mon = self.monitors[index]
                mon.half_close()
                if not await mon.wait(lambda: mon.eof, STEP_DEADLINE):
                    self.note(f"qmp{index}", "<timeout waiting for EOF after close>")
                await mon.close()
            case Count(monitor=index):
                received = sum(not line.startswith(b"<") for line in self.monitors[index].lines)
                self.note(f"qmp{index}", f"<{received} lines received>")
            case Vnc(action=action, password=password):
                await self.vnc(action, password)

    async def probe(self, index: int) -> None:
        mon = self.monitors[index]
        if mon.eof:
            return
        self._probes += 1
        probe_id = f"__probe{self._probes}".encode()
        await mon.send(b'{"execute": "query-status", "id": "' + probe_id + b'"}\r\n')
        if not await mon.wait(lambda: probe_id in mon.hidden, 60.0):
            self.note(f"qmp{index}", "<no reply to the probe>")

    async def vnc(self, action: VncAction, password: str | None) -> None:
        port = self.endpoints.vnc_port
        assert port is not None, "scenario has no VNC"
        out = "vnc"
        client = await asyncio.wait_for(RfbClient.connect("127.0.0.1", port), STEP_DEADLINE)
        try:
            async with asyncio.timeout(STEP_DEADLINE):
                version = await client.read_version()
                self.note(out, f"server version {version!r}")
                if action == "early-close":
                    return
                await client.send_version(8)
                try:
                    await client.security(password)
                except AuthFailed as exc:
                    self.note(out, f"security types {client.security_types}")
                    self.note(out, f"auth failed: result {exc.result} reason {exc.reason!r}")
                    self.note(out, f"server closes: {await client.closed_by_server()}")
                    return
                self.note(out, f"security types {client.security_types}")
                self.note(out, f"security result {client.security_result}")
                await client.client_init()
                self.note(out, "ServerInit received")
        except TimeoutError:
            self.note(out, f"<timeout in VNC {action}>")
        finally:
            await client.close()

    async def close(self) -> None:
        for mon in self.monitors.values():
            await mon.close()


async def record(scenario: Scenario, who: Who) -> Recording:
    """Run *scenario* against a fresh *who* and return what each stream received."""
    recording: Recording = {}
    async with FACTORIES[who](scenario.setup) as endpoints:
        run = _Run(who, endpoints, recording)
        try:
            if scenario.setup.open_all:
                for index in range(scenario.setup.monitors):
                    await run.step(Open(index))
            for step in scenario.steps:
                await run.step(step)
        finally:
            await run.close()
    return recording


async def record_both(scenario: Scenario) -> dict[Who, Recording]:
    """QEMU and the simulator, one after the other (each in a fresh process / VM)."""
    return {who: await record(scenario, who) for who in TARGETS}

