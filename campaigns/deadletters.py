"""Looking at, requeueing and discarding dead-lettered events (``flask --app app dead-letters ...``, /ops)."""

import hashlib

from kombu import Connection, Producer

from campaigns.metrics import reason_code
from campaigns.queues import DEAD_LETTER_QUEUE, REJECTION_HEADER, dead_letter_queue, events_exchange

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


def letter_id(message):
    """A stable name of one dead letter (its reason, rejection time and body), for picking it out."""
    headers = message.headers or {}
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    digest = hashlib.sha256()
    for part in (str(headers.get(REJECTION_HEADER, "")), str(headers.get("x-rejected-at", ""))):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    digest.update(body)
    return digest.hexdigest()[:16]


def describe(message):
    """What a dead letter is: its id, reason, routing key, when, and the start of its body."""
    headers = message.headers or {}
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    return {
        "id": letter_id(message),
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


def inspect_dead_letters(connection, scan_limit, newest=50):
    """Counts by reason code over up to ``scan_limit`` dead letters and the ``newest`` of them.

    Returns ``{"total", "scanned", "by_reason": {code: n}, "newest": [describe(), newest first]}``;
    the queue is left as it was. ``total`` is the queue's depth (a passive declare), so a
    page can say when only part of the queue was looked at.
    """
    channel = connection.channel()
    try:
        held = _held_messages(channel, scan_limit)
        total = channel.queue_declare(queue=DEAD_LETTER_QUEUE, passive=True).message_count + len(held)
        letters = [describe(message) for message in held]
    finally:
        channel.close()  # everything taken goes back to the queue
    by_reason = {}
    for letter in letters:
        code = reason_code(str(letter["reason"]))
        by_reason[code] = by_reason.get(code, 0) + 1
    return {"total": total, "scanned": len(letters), "by_reason": by_reason, "newest": letters[::-1][:newest]}


def _chosen(info, reason, ids):
    """True when a dead letter is one of ``ids`` (when given) and its reason starts with ``reason``."""
    if ids is not None and info["id"] not in ids:
        return False
    return not reason or str(info["reason"]).startswith(reason)


def requeue_dead_letters(broker_url, reason=None, limit=None, ids=None):
    """Publish dead letters (those whose reason starts with ``reason``, those of ``ids``) back to ``campaign.events``.

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
                if not _chosen(info, reason, ids):
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


def discard_dead_letters(broker_url, reason=None, limit=None, ids=None):
    """Delete dead letters (those whose reason starts with ``reason``, those of ``ids``) for good.

    Returns ``(discarded, kept)``.
    """
    discarded = kept = 0
    with Connection(broker_url) as connection:
        channel = connection.channel()
        try:
            for message in _held_messages(channel, limit):
                if not _chosen(describe(message), reason, ids):
                    kept += 1
                    continue
                message.ack()
                discarded += 1
        finally:
            channel.close()
    return discarded, kept
