"""Looking at and requeueing dead-lettered events (``flask --app app dead-letters ...``)."""

from kombu import Connection, Producer

from worker.queues import REJECTION_HEADER, dead_letter_queue, events_exchange

OUR_HEADERS = (REJECTION_HEADER, "x-original-routing-key", "x-original-exchange", "x-rejected-at", "x-death")


def _held_messages(channel, limit):
    """Take up to ``limit`` dead letters without acknowledging them (closing gives them back)."""
    queue = dead_letter_queue(channel)
    queue.declare()
    held = []
    while limit is None or len(held) < limit:
        message = queue.get(no_ack=False)
        if message is None:
            break
        held.append(message)
    return held


def describe(message):
    """What a dead letter is: its reason, routing key, when, and the start of its body."""
    headers = message.headers or {}
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    return {
        "reason": headers.get(REJECTION_HEADER, "(none: dead-lettered by RabbitMQ)"),
        "routing_key": headers.get("x-original-routing-key", message.delivery_info.get("routing_key")),
        "rejected_at": headers.get("x-rejected-at"),
        "size": len(body),
        "body": body[:200].decode("utf-8", "replace"),
    }


def list_dead_letters(broker_url, limit=100):
    """Up to ``limit`` dead letters, oldest first; the queue is left as it was."""
    with Connection(broker_url) as connection:
        channel = connection.channel()
        try:
            return [describe(message) for message in _held_messages(channel, limit)]
        finally:
            channel.close()  # everything taken goes back to the queue


def requeue_dead_letters(broker_url, reason=None, limit=None):
    """Publish dead letters (those whose reason starts with ``reason``) back to ``campaign.events``.

    Each one is republished with its original routing key and body, confirmed by the broker,
    and only then removed from the dead-letter queue. Returns ``(requeued, kept)``.
    """
    requeued = kept = 0
    with Connection(broker_url, transport_options={"confirm_publish": True}) as connection:
        channel = connection.channel()
        producer = Producer(connection.channel(), exchange=events_exchange)
        try:
            for message in _held_messages(channel, limit):
                info = describe(message)
                if reason and not str(info["reason"]).startswith(reason):
                    kept += 1
                    continue
                headers = {k: v for k, v in (message.headers or {}).items() if k not in OUR_HEADERS}
                producer.publish(
                    message.body,
                    routing_key=info["routing_key"] or "",
                    headers=headers,
                    delivery_mode=2,
                    content_type=message.content_type or "application/json",
                    content_encoding="binary",
                    retry=True,
                )
                message.ack()
                requeued += 1
        finally:
            channel.close()
    return requeued, kept


