"""The exporter's label values come from the VMs: bounded per VM, every event still counted."""

from __future__ import annotations

from qmpevents.catalog import Timestamp, UnknownEvent, event_from_value
from qmpevents.fleet.metrics import LABEL_VALUES_PER_VM, OTHER, RUN_STATES, FleetMetrics

STAMP = {"seconds": 1, "microseconds": 0}


def _series(metrics: FleetMetrics, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {frozenset(sample.labels.items()): sample.value
            for family in metrics.registry.collect() for sample in family.samples
            if sample.name == name}


async def test_a_vm_inventing_event_names_gets_a_bounded_number_of_series() -> None:
    """An attacker's 200,000 unique names gave 69,632 series and 124 MB in 15 s."""
    metrics = FleetMetrics()
    for index in range(3 * LABEL_VALUES_PER_VM):
        await metrics.on_event("vm1", UnknownEvent(event=f"X_{index}", stamp=Timestamp(1, 0)))
    await metrics.on_event("vm1", event_from_value({"event": "STOP", "timestamp": STAMP}))
    await metrics.on_event("vm2", UnknownEvent(event="X_0", stamp=Timestamp(1, 0)))
    await metrics.stop()
    series = _series(metrics, "qmpevents_events_total")
    vm1 = {dict(labels)["event"]: value for labels, value in series.items()
           if dict(labels)["vm"] == "vm1"}
    assert len(vm1) == LABEL_VALUES_PER_VM + 2  # the first 64, "other", and STOP (known)
    assert vm1[OTHER] == 2 * LABEL_VALUES_PER_VM and vm1["STOP"] == 1
    assert sum(vm1.values()) == 3 * LABEL_VALUES_PER_VM + 1  # nothing uncounted
    assert series[frozenset({("vm", "vm2"), ("event", "X_0")})] == 1  # per VM


async def test_block_io_error_series_and_odd_run_states_are_bounded_too() -> None:
    """The bound is on the series: device x operation x action combined (a reviewer's
    64 x 64 x 8 distinct events made 32,768 series with a bound per label)."""
    metrics = FleetMetrics()
    for index in range(2 * LABEL_VALUES_PER_VM):
        for action in ("report", "stop", "ignore"):
            await metrics.on_event("vm1", event_from_value({
                "event": "BLOCK_IO_ERROR", "timestamp": STAMP,
                "data": {"device": f"d{index % 8}", "operation": f"op{index // 8}",
                         "action": action}}))
        metrics.set_run_state("vm1", f"state-{index}")
    metrics.set_run_state("vm1", "running")
    await metrics.stop()
    errors = _series(metrics, "qmpevents_block_io_errors_total")
    assert len(errors) == LABEL_VALUES_PER_VM + 1
    assert errors[frozenset({("vm", "vm1"), ("device", OTHER), ("operation", OTHER),
                             ("action", OTHER)})] == 5 * LABEL_VALUES_PER_VM
    assert sum(errors.values()) == 2 * 3 * LABEL_VALUES_PER_VM
    states = {dict(labels)["state"]: value
              for labels, value in _series(metrics, "qmpevents_vm_run_state").items()}
    assert len(states) == len(RUN_STATES) + LABEL_VALUES_PER_VM + 1  # QEMU's, 64 odd, other
    assert [state for state, value in states.items() if value == 1] == ["running"]
