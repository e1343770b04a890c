"""Exchanges and queues (CONTRACT.md section 1), declared once here.

The publisher, the worker, the server's start-up, ``doctor``, the dead-letter tools and the tests
import them from here: campaigns/ is what the worker is built on, never the other way round.
"""

from kombu import Connection, Exchange, Queue

EVENTS_EXCHANGE = "campaign.events"
DEAD_LETTER_QUEUE = "campaign.events.dead"
REJECTION_HEADER = "x-rejection-reason"

events_exchange = Exchange(EVENTS_EXCHANGE, type="topic", durable=True)
dead_letter_queue = Queue(DEAD_LETTER_QUEUE, durable=True)


def worker_queue(name="campaign.events.worker"):
    """The durable queue the workers share, bound to every routing key of the exchange.

    Messages rejected without our own dead-lettering (none today, but a future
    ``reject(requeue=False)``) still land in the dead-letter queue through the DLX arguments.
    """
    return Queue(
        name,
        exchange=events_exchange,
        routing_key="#",
        durable=True,
        queue_arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": DEAD_LETTER_QUEUE,
        },
    )


def declare_topology(connection, queue_name="campaign.events.worker"):
    """Declare the exchange, the worker queue and the dead-letter queue on a connection."""
    channel = connection.default_channel
    events_exchange(channel).declare()
    dead_letter_queue(channel).declare()
    worker_queue(queue_name)(channel).declare()


def declare_topology_at(url, queue_name="campaign.events.worker"):
    """Declare the topology on the broker at ``url``: None when done, else why not (one line).

    The server's start-up and ``create-tenant`` call it, so that events a sender publishes
    before any worker ever ran wait in the worker queue instead of being dropped by the exchange.
    """
    try:
        with Connection(url, connect_timeout=5) as connection:
            connection.ensure_connection(max_retries=2)
            declare_topology(connection, queue_name)
        return None
    except Exception as exc:  # noqa: BLE001 - the caller reports any failure
        return f"{exc.__class__.__name__}: {str(exc)[:200]}"
