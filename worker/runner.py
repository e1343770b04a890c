"""Starting the consumer: as its own process (``python -m worker``) or inside the demo server."""

import logging
import os
import signal
import warnings

from kombu import Connection

from campaigns import metrics
from campaigns.queues import declare_topology
from extensions import db
from factory import create_service_app, freeze_startup_objects
from worker.consumer import EventConsumer, StopRequested
from worker.emitter import message_queue_emitter
from worker.failures import RETRY_REASONS
from worker.health import WorkerHealth, serve_health

log = logging.getLogger(__name__)
# How long one wait for the broker may block the loop (bounds the merged-update check when idle).
DRAIN_TIMEOUT_SECONDS = 0.05


def broker_connection(url, heartbeat):
    """A kombu connection for consuming; its clones publish dead letters with confirms."""
    return Connection(url, heartbeat=heartbeat, transport_options={"confirm_publish": True})


class ExitBeforeEmit:
    """A fault point for tests (``WORKER_FAULT=exit_before_emit``): the worker dies after its
    first commit, before the emit, as when it is killed there. Servers must still converge."""

    def emit(self, *args, **kwargs):
        """Exit at once, without cleaning up."""
        log.error("[WORKER] WORKER_FAULT=exit_before_emit: exiting between commit and emit")
        os._exit(70)


def build_consumer(app, connection, emitter, health=None):
    """An ``EventConsumer`` wired to the app's database and settings."""
    return EventConsumer(connection, db.engine, emitter, app.config, health)


def run_embedded_worker(app, emitter):
    """The demo's worker: same consumer, in-process broker, emitting straight to the server."""
    with app.app_context():
        connection = broker_connection(app.config["EVENTS_BROKER_URL"], 0)
        declare_topology(connection, app.config["WORKER_QUEUE"])
        consumer = build_consumer(app, connection, emitter)
        consumer.run(safety_interval=DRAIN_TIMEOUT_SECONDS)


def main():
    """Entry point of ``python -m worker``."""
    # As in app.py: eventlet (which the app's Socket.IO imports) is the default and deprecated upstream.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    app = create_service_app("[WORKER]")
    if app is None:
        return 2
    config = app.config
    if not config["BROKER_URL"] or not config["DATABASE_URL"]:
        log.error("[WORKER] set BROKER_URL and DATABASE_URL (the demo runs its worker inside `make run`)")
        return 2
    emitter = message_queue_emitter(config["SOCKETIO_MESSAGE_QUEUE_URL"], config["SOCKETIO_CHANNEL"])
    if config["WORKER_FAULT"] == "exit_before_emit":
        emitter = ExitBeforeEmit()
    health = WorkerHealth()
    for reason in RETRY_REASONS:
        metrics.worker_retries.labels(reason)  # every series from the start, at 0
    metrics.watch_worker_health(health)
    if config["WORKER_METRICS_PORT"]:
        serve_health(health, config["HOST"], config["WORKER_METRICS_PORT"])

    def broker_unavailable(exc, interval):
        log.warning("[WORKER] broker unavailable (%s); retrying", exc)
        health.fail("broker", f"{exc.__class__.__name__}: {str(exc)[:200]}")
        metrics.worker_retries.labels("broker_unavailable").inc()

    with app.app_context():
        connection = broker_connection(config["BROKER_URL"], config["AMQP_HEARTBEAT"])
        connection.ensure_connection(errback=broker_unavailable, max_retries=None)
        declare_topology(connection, config["WORKER_QUEUE"])
        consumer = build_consumer(app, connection, emitter, health)

        def stop(signum, frame):
            log.info("[WORKER] signal %s: finishing the batch in hand, then stopping", signum)
            consumer.should_stop = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("[WORKER] started (batch %d, throttle %.1fs)", config["WORKER_BATCH_SIZE"], config["THROTTLE_SECONDS"])
        freeze_startup_objects()
        try:
            consumer.run(safety_interval=DRAIN_TIMEOUT_SECONDS)
        except StopRequested:  # asked to stop while the broker was unreachable
            log.info("[WORKER] stopping without a broker: what was not acknowledged will be delivered again")
        finally:
            # Also when kombu's loop ended on a connection error after the stop was asked
            # (``run`` returns then, and ``on_consume_end`` did not run).
            consumer.close_database()
        connection.release()
    log.info("[WORKER] stopped: %s", consumer.stats)
    return 0
