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

import ctypes
import threading
from dataclasses import dataclass
from typing import Any

from qmpevents.errors import QMPEventsError

_PR_SET_NAME = 15


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


class VcpuThreads:
    """Start one waiting thread per vCPU; :meth:`stop` ends them."""

    def __init__(self, topology: Topology, model: str) -> None:
        self.topology = topology
        self.model = model
        self._stop = threading.Event()
        self._ready = threading.Barrier(topology.cpus + 1)
        self.thread_ids: list[int] = [0] * topology.cpus
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True,
                                          name=f"CPU {i}/TCG") for i in range(topology.cpus)]

    def start(self) -> None:
        """Start every thread; on a refusal, end the ones started and raise VcpuStartError."""
        for index, thread in enumerate(self._threads):
            try:
                thread.start()
            except RuntimeError as exc:  # "can't start new thread"
                self._ready.abort()  # the started threads stop waiting for the others
                self.stop()
                raise VcpuStartError(f"cannot start vCPU thread {index} of "
                                     f"{self.topology.cpus}: {exc}") from None
        self._ready.wait()  # every thread id is known before QMP answers

    def _run(self, index: int) -> None:
        _set_thread_name(f"CPU {index}/TCG")
        self.thread_ids[index] = threading.get_native_id()
        try:
            self._ready.wait()
        except threading.BrokenBarrierError:
            return  # a later thread could not start: the VM is not coming up
        self._stop.wait()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.ident is not None:  # never started: nothing to join
                thread.join()

    def query_cpus_fast(self) -> list[dict[str, Any]]:
        return [{"thread-id": self.thread_ids[i], "props": self.topology.props(i),
                 "qom-path": qom_path(i), "cpu-index": i, "target": "x86_64"}
                for i in range(self.topology.cpus)]

    def query_hotpluggable_cpus(self) -> list[dict[str, Any]]:
        return [{"props": self.topology.props(i), "vcpus-count": 1, "qom-path": qom_path(i),
                 "type": f"{self.model}-x86_64-cpu"}
                for i in reversed(range(self.topology.cpus))]
