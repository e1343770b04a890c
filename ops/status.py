"""What the ops page shows, gathered from RabbitMQ, PostgreSQL and this process.

Each part is read on its own and fails on its own: a broker that does not answer leaves the
database's figures on the page, with the broker's error in place of its numbers.
"""

import logging
import time
from collections import Counter

from flask import current_app
from kombu import Connection
from sqlalchemy import select

from campaigns.deadletters import inspect_dead_letters
from campaigns.models import AppliedEvent
from campaigns.timeutil import isoformat, utcnow
from extensions import db
from ops.recent_errors import recent_errors
from ops.throughput import SAMPLE_LIMIT, throughput, window_start
from sockets.presence import live_servers

log = logging.getLogger(__name__)
NEWEST_DEAD_LETTERS = 50
TENANTS_SHOWN = 50
# Scanning the dead-letter queue takes one round trip per letter: one look serves every poll
# of this process for a few seconds (an action on the queue clears it).
DEAD_LETTER_CACHE_SECONDS = 5.0
_dead_letter_cache = {}


def _broker_error(exc):
    return f"{exc.__class__.__name__}: {str(exc)[:200]}"


def worker_queue_status(url, queue):
    """``{"queue", "depth", "consumers"}`` of the workers' queue (a passive declare), or ``{"error"}``."""
    try:
        with Connection(url, connect_timeout=3) as connection:
            channel = connection.channel()
            try:
                answer = channel.queue_declare(queue=queue, passive=True)
            finally:
                channel.close()
        return {"queue": queue, "depth": answer.message_count, "consumers": answer.consumer_count}
    except Exception as exc:  # noqa: BLE001 - shown on the page
        return {"queue": queue, "error": _broker_error(exc)}


def applied_throughput(now):
    """Events applied per second and their lag over the last minute, from a bounded sample."""
    query = (
        select(AppliedEvent.applied_at, AppliedEvent.occurred_at)
        .where(AppliedEvent.applied_at >= window_start(now))
        .order_by(AppliedEvent.applied_at.desc())
        .limit(SAMPLE_LIMIT)
    )
    return throughput(db.session.execute(query).all(), now)


def dead_letter_status(url, scan_limit):
    """Dead letters by reason and the newest ones (cached for a few seconds), or ``{"error"}``."""
    cached = _dead_letter_cache.get(url)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    try:
        with Connection(url, connect_timeout=3) as connection:
            found = inspect_dead_letters(connection, scan_limit, NEWEST_DEAD_LETTERS)
    except Exception as exc:  # noqa: BLE001 - shown on the page
        return {"error": _broker_error(exc)}
    ranked = sorted(found["by_reason"].items(), key=lambda rc: (-rc[1], rc[0]))
    found["by_reason"] = [{"reason": reason, "count": count} for reason, count in ranked]
    _dead_letter_cache[url] = (time.monotonic() + DEAD_LETTER_CACHE_SECONDS, found)
    return found


def forget_dead_letters():
    """Drop the cached look at the dead-letter queue (after requeueing or discarding)."""
    _dead_letter_cache.clear()


def server_status(now, heartbeat_seconds, own_id=None):
    """Every live server's clients by transport, and clients per tenant over all of them."""
    servers, tenants = [], Counter()
    for row in live_servers(now, heartbeat_seconds):
        transports = row.clients.get("transports", {})
        tenants.update(row.clients.get("tenants", {}))
        servers.append(
            {
                "id": row.id,
                "host": row.host,
                "pid": row.pid,
                "started_at": isoformat(row.started_at),
                "seen_at": isoformat(row.seen_at),
                "this": row.id == own_id,
                "transports": transports,
                "clients": sum(transports.values()),
            }
        )
    return {
        "servers": servers,
        "clients": sum(server["clients"] for server in servers),
        "tenants": [{"tenant_id": t, "clients": n} for t, n in tenants.most_common(TENANTS_SHOWN)],
        "tenant_count": len(tenants),
    }


def ops_status():
    """The whole JSON answer of ``GET /ops/status``."""
    config = current_app.config
    now = utcnow()
    url = config["EVENTS_BROKER_URL"]
    presence = current_app.extensions.get("presence")
    workers = worker_queue_status(url, config["WORKER_QUEUE"])
    workers.update(applied_throughput(now))
    return {
        "generated_at": isoformat(now),
        "poll_seconds": config["OPS_POLL_SECONDS"],
        "workers": workers,
        "dead_letters": dead_letter_status(url, config["OPS_DEAD_LETTER_SCAN"]),
        "sockets": server_status(now, config["SERVER_HEARTBEAT_SECONDS"], presence and presence.identity),
        "errors": recent_errors.newest(),
    }
