"""The worker's emitter: Flask-SocketIO's write-only message-queue client, with bounded retries.

python-socketio's ``KombuManager`` publishes through ``connection.ensure(producer,
producer.publish)`` without ``max_retries``: once its connection was established, a broker
that stops answering makes ``emit`` retry forever. The worker emits while it holds tenant
locks (that is what keeps a tenant's updates in ``seq`` order across workers), so one worker
cut off from the broker would block every other worker on those tenants. Here a publish
gives up after ``EMIT_RETRIES`` reconnection attempts, as python-socketio then logs
"giving up" and drops the update; clients get it from PostgreSQL (replay, ``last_seq``).
Measured with the broker behind a cut TCP proxy: ``emit`` never returned (> 100 s) before,
about 2 ms after.

A broker that accepts the connection but stops reading (a resource alarm, a black-holed
network) still costs each emit its timeouts (4-7 s measured), under the tenant locks. So once
a publish failed, the emitter skips emits for ``PAUSE_SECONDS`` (counted in
``campaign_live_updates_not_emitted_total``): the message queue is a latency path only, the
updates are stored, and every server delivers what it did not get within
``RECONCILE_SECONDS``. One emit after the pause tries the broker again.
``tests/test_worker_emitter.py`` fails if an upgrade renames the methods overridden here.
"""

import logging
import time

import socketio
from flask_socketio import SocketIO

from campaigns import metrics

log = logging.getLogger(__name__)
EMIT_RETRIES = 1
CONNECT_TIMEOUT_SECONDS = 2.0
WRITE_TIMEOUT_SECONDS = 2.0
PAUSE_SECONDS = 15.0
RETRY_POLICY = {"interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


class BoundedKombuManager(socketio.KombuManager):
    """``KombuManager`` whose publish gives up after ``EMIT_RETRIES`` reconnections, and that
    stops emitting for ``pause_seconds`` after a publish failed."""

    def __init__(self, *args, pause_seconds=PAUSE_SECONDS, **kwargs):
        super().__init__(*args, **kwargs)
        self.pause_seconds = pause_seconds
        self.paused_until = 0.0

    def _producer_publish(self, connection):
        producer = connection.Producer(exchange=self._exchange(), **self.producer_options)
        return connection.ensure(producer, producer.publish, max_retries=EMIT_RETRIES, **RETRY_POLICY)

    def _publish(self, data):
        if time.monotonic() < self.paused_until:
            metrics.updates_not_emitted.inc()
            return
        try:
            self._producer_publish(self.publisher_connection)(self.json.dumps(data))
        except Exception as exc:  # noqa: BLE001 - whatever the broker did, the update is stored
            self.paused_until = time.monotonic() + self.pause_seconds
            metrics.updates_not_emitted.inc()
            log.warning(
                "[WORKER] message queue unreachable (%s: %s): not emitting for %.0f s; the updates are stored "
                "and every server delivers them from PostgreSQL",
                exc.__class__.__name__,
                exc,
                self.pause_seconds,
            )


def message_queue_emitter(url, channel, pause_seconds=PAUSE_SECONDS):
    """A write-only ``SocketIO`` that emits through the message queue at ``url``."""
    manager = BoundedKombuManager(
        url,
        channel=channel,
        write_only=True,
        pause_seconds=pause_seconds,
        connection_options={
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "transport_options": {
                "max_retries": EMIT_RETRIES,
                "write_timeout": WRITE_TIMEOUT_SECONDS,
                **RETRY_POLICY,
            },
        },
    )
    return SocketIO(message_queue=url, client_manager=manager, async_mode="threading")
