"""The fleet path: every host's QMP events in NATS JetStream, and Prometheus metrics.

* :mod:`~qmpevents.fleet.subjects` -- subjects, message ids and headers (no I/O);
* :mod:`~qmpevents.fleet.spool` -- the agent's durable write-ahead spool;
* :mod:`~qmpevents.fleet.broker` -- connecting to NATS and creating the stream;
* :mod:`~qmpevents.fleet.publisher` -- drains the spool into JetStream, in order;
* :mod:`~qmpevents.fleet.consumer` -- :func:`fleet_events`, the typed library API;
* :mod:`~qmpevents.fleet.metrics` -- the Prometheus exporter's series.

``nats-py`` and ``prometheus-client`` are the optional extra ``fleet``: this
package imports them only when a broker or an exporter is really used, so the
base install works without them (:class:`MissingDependency` says what to
install).
"""

from qmpevents.fleet.consumer import FleetEvent, fleet_events
from qmpevents.fleet.deps import MissingDependency
from qmpevents.fleet.subjects import DEFAULT_STREAM, message_id, subject

__all__ = ["DEFAULT_STREAM", "FleetEvent", "MissingDependency", "fleet_events", "message_id",
           "subject"]
