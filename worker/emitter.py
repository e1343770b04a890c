"""The worker's emitter: Flask-SocketIO's write-only message-queue client, with bounded retries.

python-socketio's ``KombuManager`` publishes through ``connection.ensure(producer,
producer.publish)`` without ``max_retries``: once its connection was established, a broker
that stops answering makes ``emit`` retry forever. The worker emits while it holds tenant
locks (that is what keeps a tenant's updates in ``seq`` order across workers), so one worker
cut off from the broker would block every other worker on those tenants. Here a publish
gives up after ``EMIT_RETRIES`` reconnection attempts, as python-socketio then logs
"giving up" and drops the update; clients get it from PostgreSQL (replay, ``last_seq``).
Measured with the broker behind a cut TCP proxy: ``emit`` never returned (> 100 s) before,
about 2 ms after. ``tests/test_worker_emitter.py`` fails if an upgrade renames the method.
"""

import socketio
from flask_socketio import SocketIO

EMIT_RETRIES = 1
CONNECT_TIMEOUT_SECONDS = 2.0
RETRY_POLICY = {"interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


class BoundedKombuManager(socketio.KombuManager):
    """``KombuManager`` whose publish gives up after ``EMIT_RETRIES`` reconnections."""

    def _producer_publish(self, connection):
        producer = connection.Producer(exchange=self._exchange(), **self.producer_options)
        return connection.ensure(producer, producer.publish, max_retries=EMIT_RETRIES, **RETRY_POLICY)


def message_queue_emitter(url, channel):
    """A write-only ``SocketIO`` that emits through the message queue at ``url``."""
    manager = BoundedKombuManager(
        url,
        channel=channel,
        write_only=True,
        connection_options={
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "transport_options": {"max_retries": EMIT_RETRIES, **RETRY_POLICY},
        },
    )
    return SocketIO(message_queue=url, client_manager=manager, async_mode="threading")
