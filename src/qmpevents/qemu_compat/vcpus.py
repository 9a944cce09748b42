"""One real host thread per simulated vCPU, as QEMU has.

libvirt reads each vCPU's ``thread-id`` from ``query-cpus-fast``, moves it into
the domain's ``vcpuN`` cgroup and pins it (``virsh vcpuinfo``/``vcpupin``); a
thread id equal to the emulator's pid is rejected ("vCPU PID duplicates
process"), so each vCPU gets a thread of its own, named ``CPU N/TCG`` like
QEMU's.  The threads only wait: there is no guest code to run.

The number of threads is bounded by the command line (the machine's maximum,
see :func:`qmpevents.qemu_compat.cmdline.machine_max_cpus`); if the host still
refuses one (thread or memory limits), :meth:`VcpuThreads.start` ends the
threads already started and raises :class:`VcpuStartError`, which
``qmpevents-qemu`` reports in one line before exiting 1.
"""

from __future__ import annotations

import _thread
import ctypes
import sys
import threading
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from qmpevents.errors import QMPEventsError

_PR_SET_NAME = 15
#: How long the threads may take to start (they start in microseconds): a
#: thread whose failure could not even be reported is given up on after it.
START_DEADLINE: Final = 5.0


class VcpuStartError(QMPEventsError):
    """The host refused a vCPU thread (RLIMIT_NPROC, cgroup pids.max, address space)."""


_LIBC = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc's prctl


def _set_thread_name(name: str) -> None:
    """prctl(PR_SET_NAME): what ``ps -L`` and /proc/TID/comm show (best effort).

    Looked up once, not per thread: a thread started at the edge of the host's
    limits must not fail in its first line (find_library even runs ldconfig).
    """
    try:
        _LIBC.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (AttributeError, OSError, MemoryError):
        return


@dataclass(frozen=True, slots=True)
class Topology:
    """``-smp CPUS,sockets=S,cores=C,threads=T`` (missing members derived as QEMU does)."""

    cpus: int = 1
    sockets: int = 1
    cores: int = 1
    threads: int = 1

    def props(self, index: int) -> dict[str, int]:
        """The CpuInstanceProperties of vCPU *index*, in QEMU's member order."""
        return {"core-id": (index // self.threads) % self.cores,
                "thread-id": index % self.threads,
                "socket-id": index // (self.threads * self.cores)}


def qom_path(index: int) -> str:
    """QEMU x86 puts CPU 0 at device[0]; the next ones after the other early devices."""
    return f"/machine/unattached/device[{0 if index == 0 else index + 1}]"


class _ThreadStart:
    """What a vCPU thread runs: it carries its index, so that a failure reported
    for it (see :meth:`VcpuThreads._unraisable`) names the thread."""

    __slots__ = ("index", "owner")

    def __init__(self, owner: VcpuThreads, index: int) -> None:
        self.owner = owner
        self.index = index

    def __call__(self) -> None:
        self.owner._run(self.index)


class VcpuThreads:
    """Start one waiting thread per vCPU; :meth:`stop` ends them.

    Raw ``_thread`` threads, not ``threading.Thread``: at the edge of the
    host's memory a new thread can fail inside its own start-up (a
    MemoryError before its first line), which ``Thread.start()`` would wait
    for without end.  Such a failure reaches ``sys.unraisablehook``, which
    :meth:`start` watches while the threads start.
    """

    def __init__(self, topology: Topology, model: str) -> None:
        self.topology = topology
        self.model = model
        self._stop = threading.Event()
        self._state = threading.Condition()
        self._arrived = 0  # threads waiting for the stop: their id is known
        self._running = 0  # threads inside _run
        self._started = 0  # threads the host accepted
        self._failures = 0  # of those, how many failed as they started
        self._failed: int | None = None  # the first of them
        self._previous_hook = sys.unraisablehook  # what other failures go to meanwhile
        self.thread_ids: list[int] = [0] * topology.cpus

    def start(self) -> None:
        """Start every thread; on a refusal, end the ones started and raise VcpuStartError."""
        count = self.topology.cpus
        previous = self._previous_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        refused: str | None = None
        try:
            for index in range(count):
                try:
                    _thread.start_new_thread(_ThreadStart(self, index), ())
                except RuntimeError as exc:  # "can't start new thread"
                    refused = f"cannot start vCPU thread {index} of {count}: {exc}"
                    break
                self._started += 1
                with self._state:
                    # One thread starting at a time: at the edge of the host's
                    # memory the refusal then comes as the next start's error,
                    # never as a thread failing after the watch below has ended.
                    if (not self._state.wait_for(self._settled, timeout=START_DEADLINE)
                            or self._failed is not None):
                        break  # no more threads once one did not start
            with self._state:
                failed, arrived = self._failed, self._arrived
        finally:
            sys.unraisablehook = previous
        if refused is not None:
            self._abort(refused)
        if failed is not None:
            self._abort(f"cannot start vCPU thread {failed} of {count}: "
                        "it failed as it started (out of memory)")
        if arrived != count:
            self._abort(f"cannot start vCPU threads: {count - arrived} of {count} "
                        f"not started after {START_DEADLINE:g} s")

    def _settled(self) -> bool:
        """Every thread started has arrived or failed."""
        return self._arrived + self._failures == self._started

    def _unraisable(self, unraisable: Any) -> None:
        """A thread's start-up failed (its MemoryError is not raised anywhere): say which."""
        start = unraisable.object
        if isinstance(start, _ThreadStart) and start.owner is self:
            with self._state:
                self._failures += 1
                if self._failed is None:
                    self._failed = start.index
                self._state.notify_all()
            return
        self._previous_hook(unraisable)

    def _abort(self, message: str) -> NoReturn:
        self.stop()
        raise VcpuStartError(message) from None

    def _run(self, index: int) -> None:
        with self._state:
            self._running += 1
        try:
            _set_thread_name(f"CPU {index}/TCG")
            self.thread_ids[index] = threading.get_native_id()
            with self._state:
                self._arrived += 1
                self._state.notify_all()
            self._stop.wait()
        finally:
            with self._state:
                self._running -= 1
                self._state.notify_all()

    def stop(self) -> None:
        """End the threads: wait for those running (one still starting sees the stop
        as it begins, and ends at once)."""
        self._stop.set()
        with self._state:
            self._state.wait_for(lambda: self._running == 0, timeout=START_DEADLINE)

    def query_cpus_fast(self) -> list[dict[str, Any]]:
        return [{"thread-id": self.thread_ids[i], "props": self.topology.props(i),
                 "qom-path": qom_path(i), "cpu-index": i, "target": "x86_64"}
                for i in range(self.topology.cpus)]

    def query_hotpluggable_cpus(self) -> list[dict[str, Any]]:
        return [{"props": self.topology.props(i), "vcpus-count": 1, "qom-path": qom_path(i),
                 "type": f"{self.model}-x86_64-cpu"}
                for i in reversed(range(self.topology.cpus))]
