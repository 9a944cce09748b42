"""The Prometheus exporter: what each VM did and how each target is doing.

Series (Prometheus naming: ``_total`` for counters, base units, one label
set per thing):

======================================================  ====================================
``qmpevents_events_total{vm,event}``                    events received
``qmpevents_block_io_errors_total{vm,device,operation,action}``  BLOCK_IO_ERROR events
``qmpevents_vm_run_state{vm,state}``                    1 for the VM's current run state
``qmpevents_vnc_clients{vm}``                           VNC clients connected
``qmpevents_target_connected{vm}``                      1 while the QMP connection is up
``qmpevents_target_reconnects_total{vm}``               connections after the first
``qmpevents_agent_spool_bytes`` / ``..._dropped_total``  the agent's spool (agent only)
``qmpevents_agent_published_total``, ``..._broker_connected``  the agent's broker link
======================================================  ====================================

The strings in the labels come from the VMs, so each VM may make at most
:data:`LABEL_VALUES_PER_VM` series of each kind with values it chose (event
names the catalog does not know; BLOCK_IO_ERROR's device, operation and
action together; run states QEMU does not have); past that an event is
counted under ``other``: a broken or hostile VM cannot create series without
end (each costs the exporter and Prometheus memory), and every event is
still counted.

The run state comes from ``query-status`` and the VNC client count from
``query-vnc``, asked when a VM is attached and again after its events (any
event: QEMU's ``cont`` in the seed profile says nothing, the next event
corrects the state).  The queries run in the background, one at a time per
VM, and a burst of events costs one more query, not one each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from qmpevents.catalog import EVENT_TYPES, BlockIoError
from qmpevents.client import QMPClient, QMPEvent
from qmpevents.client.targets import Target
from qmpevents.errors import QMPEventsError
from qmpevents.fleet.deps import require

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

#: QEMU's RunState values (qapi/run-state.json), the ``state`` label of the run state.
RUN_STATES = ("debug", "inmigrate", "internal-error", "io-error", "paused", "postmigrate",
              "prelaunch", "finish-migrate", "restore-vm", "running", "save-vm", "shutdown",
              "suspended", "watchdog", "guest-panicked", "colo")

LABEL_VALUES_PER_VM: Final = 64
"""Series with VM-chosen label values, per kind and VM; the next count as :data:`OTHER`."""
OTHER: Final = "other"

T = TypeVar("T", bound=Hashable)


class LabelBound(Generic[T]):
    """Bounds the label values (one, or a tuple of them) one VM may use in one
    series kind; *known* values always pass, the rest past the bound become *other*."""

    def __init__(self, other: T, known: Iterable[T] = ()) -> None:
        self._other = other
        self._known = frozenset(known)
        self._seen: dict[str, set[T]] = {}

    def __call__(self, vm: str, value: T) -> T:
        if value in self._known:
            return value
        seen = self._seen.setdefault(vm, set())
        if value in seen:
            return value
        if len(seen) >= LABEL_VALUES_PER_VM:
            return self._other
        seen.add(value)
        return value


class FleetMetrics:
    """The exporter's series in their own registry, fed by :class:`~qmpevents.client.VMs` hooks."""

    def __init__(self) -> None:
        prom = require("prometheus_client")
        self.registry: CollectorRegistry = prom.CollectorRegistry()
        reg = self.registry
        self.events = prom.Counter("qmpevents_events", "QMP events received.",
                                   ["vm", "event"], registry=reg)
        self.block_io_errors = prom.Counter(
            "qmpevents_block_io_errors", "BLOCK_IO_ERROR events received.",
            ["vm", "device", "operation", "action"], registry=reg)
        self.run_state = prom.Gauge("qmpevents_vm_run_state",
                                    "1 for the run state the VM is in (query-status), 0 else.",
                                    ["vm", "state"], registry=reg)
        self.vnc_clients = prom.Gauge("qmpevents_vnc_clients", "VNC clients connected.",
                                      ["vm"], registry=reg)
        self.connected = prom.Gauge("qmpevents_target_connected",
                                    "1 while the QMP connection to the VM is up.",
                                    ["vm"], registry=reg)
        self.reconnects = prom.Counter("qmpevents_target_reconnects",
                                       "QMP connections to the VM after the first.",
                                       ["vm"], registry=reg)
        self._event_name = LabelBound(OTHER, EVENT_TYPES)
        self._block_error = LabelBound((OTHER, OTHER, OTHER))  # device, operation, action
        self._state = LabelBound(OTHER, RUN_STATES)
        self._odd_states: dict[str, set[str]] = {}
        self._clients: dict[str, QMPClient] = {}
        self._seen: set[str] = set()
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._stopping = False

    # -- hooks ------------------------------------------------------------------

    def on_link(self, target: Target, client: QMPClient | None) -> None:
        """A VM's connection came up (*client*) or went down (None)."""
        vm = target.name
        if client is None:
            self._clients.pop(vm, None)
            self.connected.labels(vm).set(0)
            return
        if vm in self._seen:
            self.reconnects.labels(vm).inc()
        else:
            self.reconnects.labels(vm)  # the series exists from the start at 0
            self._seen.add(vm)
        self._clients[vm] = client
        self.connected.labels(vm).set(1)
        self._refresh(vm)

    async def on_event(self, vm: str, event: QMPEvent) -> None:
        self.events.labels(vm, self._event_name(vm, event.name)).inc()
        if isinstance(event, BlockIoError):
            data = event.data
            labels = self._block_error(vm, (data.device, data.operation, data.action))
            self.block_io_errors.labels(vm, *labels).inc()
        self._refresh(vm)

    # -- the queries -------------------------------------------------------------

    def _refresh(self, vm: str) -> None:
        """Query the VM's state in the background; coalesces a burst into one more query."""
        if self._stopping:
            return
        if vm in self._refreshing:
            self._again.add(vm)
            return
        task = asyncio.create_task(self._query(vm))
        self._refreshing[vm] = task

        def finished(_: asyncio.Task[None]) -> None:
            del self._refreshing[vm]
            if vm in self._again:
                self._again.discard(vm)
                self._refresh(vm)

        task.add_done_callback(finished)

    async def _query(self, vm: str) -> None:
        client = self._clients.get(vm)
        if client is None:
            return
        try:
            status: Any = await client.execute("query-status")
            self.set_run_state(vm, str(status.get("status", "")))
            vnc: Any = await client.execute("query-vnc")
            clients = vnc.get("clients", []) if vnc.get("enabled") else []
            self.vnc_clients.labels(vm).set(len(clients))
        except (OSError, QMPEventsError, TimeoutError, AttributeError) as exc:
            log.debug("%s: state query failed: %s", vm, exc)

    def set_run_state(self, vm: str, state: str) -> None:
        state = self._state(vm, state)
        shown = self._odd_states.setdefault(vm, set())  # states QEMU does not have, once set
        if state not in RUN_STATES:
            shown.add(state)
        for name in (*RUN_STATES, *shown):
            self.run_state.labels(vm, name).set(1 if name == state else 0)

    async def stop(self) -> None:
        """Cancel the state queries; none starts afterwards (a coalesced one included)."""
        self._stopping = True
        self._again.clear()
        while self._refreshing:
            tasks = list(self._refreshing.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def serve(metrics_registry: CollectorRegistry, listen: str) -> tuple[Callable[[], None], int]:
    """Serve ``/metrics`` on ``HOST:PORT`` (port 0: any) in a thread.

    Returns the function that stops it and the port; ValueError for a bad
    *listen*, OSError when it cannot be bound.
    """
    prom = require("prometheus_client")
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{listen!r}: expected HOST:PORT")
    server, thread = prom.start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1",
                                            registry=metrics_registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop, int(server.server_port)


class AgentMetrics:
    """The agent's own series: its spool and its link to the broker."""

    def __init__(self, registry: CollectorRegistry) -> None:
        prom = require("prometheus_client")
        self.spool_bytes = prom.Gauge("qmpevents_agent_spool_bytes",
                                      "Bytes spooled and not yet acknowledged by JetStream.",
                                      registry=registry)
        self.dropped = prom.Counter("qmpevents_agent_spool_dropped",
                                    "Events dropped because the spool was full.",
                                    registry=registry)
        self.published = prom.Counter("qmpevents_agent_published",
                                      "Events acknowledged by JetStream.", registry=registry)
        self.broker_connected = prom.Gauge("qmpevents_agent_broker_connected",
                                           "1 while the agent is connected to NATS.",
                                           registry=registry)
