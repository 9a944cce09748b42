"""vCPU threads that fail while they start: reported in one error, never waited for."""

from __future__ import annotations

import threading

import pytest

from qmpevents.qemu_compat import vcpus
from qmpevents.qemu_compat.vcpus import Topology, VcpuStartError, VcpuThreads


def test_threads_start_with_distinct_ids_and_stop() -> None:
    threads = VcpuThreads(Topology(cpus=4), "qemu64")
    threads.start()
    try:
        ids = threads.thread_ids
        assert len(set(ids)) == 4 and threading.get_native_id() not in ids
    finally:
        threads.stop()


def test_a_thread_that_fails_as_it_starts_is_one_error_and_the_others_end(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # At the edge of the host's memory a new thread can fail before its first
    # line: Thread.start() then waited for it for ever (the flaky -smp 255 test).
    def name_or_fail(name: str) -> None:
        if name == "CPU 3/TCG":
            raise MemoryError
    monkeypatch.setattr(vcpus, "_set_thread_name", name_or_fail)
    threads = VcpuThreads(Topology(cpus=8), "qemu64")
    outcome: list[BaseException | None] = []

    def start() -> None:
        try:
            threads.start()
        except VcpuStartError as exc:
            outcome.append(exc)
        else:
            outcome.append(None)
    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    starter.join(timeout=vcpus.START_DEADLINE + 5)  # the old code never returned
    assert outcome, "start() did not return"
    assert str(outcome[0]) == ("cannot start vCPU thread 3 of 8: "
                               "it failed as it started (out of memory)")
    assert threads._running == 0  # the others were ended
    assert "MemoryError" not in capsys.readouterr().err  # the one line says it
