"""Prometheus metrics of the server and the worker (one module, so names never drift).

No metric is labelled by tenant: tenants are unbounded, and Prometheus keeps one series per
label value. Labels are limited to small fixed sets (event type, transport, rejection code,
HTTP status and route rule). Per-tenant numbers come from the database (REST API, SQL).
"""

import time

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY

PREFIX = "campaign_live"

events_applied = Counter(f"{PREFIX}_events_applied_total", "Inbound events applied to the database", ["type"])
events_duplicate = Counter(f"{PREFIX}_events_duplicate_total", "Inbound events already applied (redeliveries)")
updates_emitted = Counter(f"{PREFIX}_updates_emitted_total", "campaign_update events emitted", ["type"])
updates_merged = Counter(
    f"{PREFIX}_updates_merged_total",
    "Progress events merged into a later update (by the throttle, or into a status update of the same batch)",
)
dead_lettered = Counter(f"{PREFIX}_dead_lettered_total", "Messages moved to campaign.events.dead", ["reason"])
replayed_updates = Counter(f"{PREFIX}_replayed_updates_total", "Stored updates sent again for recovery", ["via"])
failure_alerts_raised = Counter(
    f"{PREFIX}_failure_alerts_raised_total", "Failure alerts set on running campaigns (campaigns/rules.py)"
)
updates_not_emitted = Counter(
    f"{PREFIX}_updates_not_emitted_total",
    "Stored updates a worker did not emit because the message queue failed (servers deliver them from PostgreSQL)",
)
resyncs_sent = Counter(f"{PREFIX}_resyncs_sent_total", "resync events sent to clients", ["reason"])
reconciled_updates = Counter(
    f"{PREFIX}_reconciled_updates_total",
    "Stored updates a server read from PostgreSQL and delivered itself (the message queue lost or delayed them)",
    ["cause"],
)
connections_refused = Counter(f"{PREFIX}_connections_refused_total", "Socket.IO connections refused", ["reason"])
http_requests = Counter(f"{PREFIX}_http_requests_total", "HTTP requests served", ["method", "route", "status"])
receive_to_emit = Histogram(
    f"{PREFIX}_receive_to_emit_seconds",
    "From the worker receiving a batch's first message to emitting its immediate updates",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
worker_retries = Counter(
    f"{PREFIX}_worker_retries_total",
    "Worker attempts that failed for a reason other than the event (nothing acknowledged; tried again)",
    ["reason"],
)
event_loop_lag = Histogram(
    f"{PREFIX}_event_loop_lag_seconds",
    "How late a server's event loop woke a task that slept a fixed interval (sockets/loop_lag.py)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
batch_size = Histogram(
    f"{PREFIX}_worker_batch_size", "Messages per applied batch", buckets=(1, 5, 10, 50, 100, 250, 500, 1000)
)


def clients_by_transport(connections, transport_of):
    """``{"websocket": n, "polling": m}`` of the connections right now (a client that left while
    they were counted is skipped)."""
    counts = {"websocket": 0, "polling": 0}
    for sid in list(connections):
        try:
            transport = transport_of(sid)
        except Exception:  # noqa: BLE001 - the client left while we counted
            continue
        counts[transport] = counts.get(transport, 0) + 1
    return counts


class ConnectionsCollector:
    """Connected Socket.IO clients by transport, read at scrape time (clients upgrade transports)."""

    def __init__(self, connections, transport_of):
        self.connections = connections
        self.transport_of = transport_of

    def collect(self):
        """Yield the gauge."""
        gauge = GaugeMetricFamily(f"{PREFIX}_connected_clients", "Connected Socket.IO clients", labels=["transport"])
        for transport, count in clients_by_transport(self.connections, self.transport_of).items():
            gauge.add_metric([transport], count)
        yield gauge


_collectors = {}


def _register_once(collector):
    """Register one collector of its class per process; a later one (a new app in the same
    process, as in tests) only hands its sources to the registered one."""
    registered = _collectors.get(type(collector))
    if registered is None:
        _collectors[type(collector)] = collector
        REGISTRY.register(collector)
    else:
        registered.__dict__.update(collector.__dict__)


def watch_connections(connections, transport_of):
    """Count connected clients by transport at scrape time."""
    _register_once(ConnectionsCollector(connections, transport_of))


class PacketWritesCollector:
    """Engine.IO packets sent to clients, by path: written straight to the websocket or queued
    for python-engineio's writer (sockets/fanout.py). Plain ints on the hot path, read here.
    Exported only while direct writes are on."""

    def __init__(self, writes):
        self.writes = writes

    def collect(self):
        """Yield the counter."""
        counter = CounterMetricFamily(
            f"{PREFIX}_socketio_packets_sent", "Engine.IO packets sent to clients", labels=["path"]
        )
        counter.add_metric(["direct"], self.writes.direct)
        counter.add_metric(["queued"], self.writes.queued)
        yield counter


def watch_packet_writes(writes):
    """Count the packets of a ``sockets.fanout.DirectWrites`` by path at scrape time."""
    _register_once(PacketWritesCollector(writes))


class WorkerReadyCollector:
    """1 while the worker can apply events, 0 while it retries the database or reconnects to the
    broker (worker/health.py). Exported by workers only: a server has no such state."""

    def __init__(self, health):
        self.health = health

    def collect(self):
        """Yield the gauge."""
        gauge = GaugeMetricFamily(
            f"{PREFIX}_worker_ready", "1 while the worker can apply events, 0 while it retries or reconnects"
        )
        gauge.add_metric([], 1 if self.health.readiness()[0] else 0)
        yield gauge


def watch_worker_health(health):
    """Export a ``worker.health.WorkerHealth`` as ``campaign_live_worker_ready``."""
    _register_once(WorkerReadyCollector(health))


def reason_code(reason):
    """The bounded part of a rejection reason (``invalid_field: ...`` -> ``invalid_field``)."""
    return reason.split(":", 1)[0][:40]


def since(started):
    """Seconds since a ``time.monotonic()`` reading."""
    return time.monotonic() - started
