"""Publishing campaign events from Python: persistent, confirmed by the broker, retried.

Producers in other languages do the same with their AMQP client: declare the topic
exchange ``campaign.events`` (durable), publish JSON with ``delivery_mode=2`` and
``content_type=application/json`` under the routing key ``<tenant_id>.<type>``, and wait
for the publisher confirm before counting an event as sent (see docs/architecture.md).
"""

import uuid

from kombu import Connection, Producer

from campaigns.queues import declare_topology, events_exchange
from campaigns.timeutil import isoformat, utcnow

RETRY_POLICY = {"max_retries": 30, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 3}


def make_event(tenant_id, campaign_id, kind, data=None, event_id=None, occurred_at=None):
    """An event dict as the contract defines it, with a fresh ``event_id`` and ``occurred_at``."""
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "type": kind,
        "tenant_id": tenant_id,
        "campaign_id": campaign_id,
        "occurred_at": occurred_at or isoformat(utcnow()),
        "data": data or {},
    }


class EventPublisher:
    """Publishes events to ``campaign.events``; with ``confirm`` each publish waits for the broker."""

    def __init__(self, broker_url, confirm=True, heartbeat=0):
        self.connection = Connection(broker_url, heartbeat=heartbeat, transport_options={"confirm_publish": confirm})
        self.connection.ensure_connection(max_retries=RETRY_POLICY["max_retries"])
        # The worker queue too: events published before any worker ever ran must wait for one.
        declare_topology(self.connection)
        self.producer = Producer(self.connection, exchange=events_exchange, auto_declare=True)

    def publish(self, event, routing_key=None):
        """Publish one event dict (routing key ``<tenant_id>.<type>`` unless given)."""
        self.producer.publish(
            event,
            serializer="json",
            routing_key=routing_key or f"{event['tenant_id']}.{event['type']}",
            delivery_mode=2,
            retry=True,
            retry_policy=RETRY_POLICY,
        )

    def publish_raw(self, body, routing_key, content_type="application/json", headers=None):
        """Publish a body as it is (bytes or str), for tests and tools that send anything."""
        self.producer.publish(
            body,
            routing_key=routing_key,
            content_type=content_type,
            content_encoding="binary" if isinstance(body, bytes) else "utf-8",
            headers=headers or {},
            delivery_mode=2,
            retry=True,
            retry_policy=RETRY_POLICY,
        )

    def close(self):
        """Close the connection."""
        self.connection.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
