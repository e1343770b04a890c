"""Liveness and readiness probes."""

import logging

from flask import Blueprint, Response, current_app, jsonify
from kombu import Connection
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from extensions import db

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """200 while the process serves."""
    return jsonify(status="ok")


def check_database():
    """None when the database answers, else why not."""
    try:
        db.session.execute(text("SELECT 1"))
        db.session.commit()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        db.session.rollback()
        return f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"


def check_broker(url):
    """None when the broker at ``url`` accepts a connection, else why not."""
    if url.startswith("memory://"):
        return None
    try:
        with Connection(url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return f"{exc.__class__.__name__}: {str(exc)[:200]}"


@bp.get("/readyz")
def readyz():
    """200 when the database and the broker answer; 503 naming the part that does not.

    The Socket.IO message queue is checked too when it has its own URL (its own vhost or user).
    """
    config = current_app.config
    checks = {"database": check_database(), "broker": check_broker(config["EVENTS_BROKER_URL"])}
    if config["SOCKETIO_MESSAGE_QUEUE_URL"] and config["SOCKETIO_MESSAGE_QUEUE_URL"] != config["BROKER_URL"]:
        checks["message_queue"] = check_broker(config["SOCKETIO_MESSAGE_QUEUE_URL"])
    failing = {name: reason for name, reason in checks.items() if reason}
    if failing:
        log.warning("not ready: %s", failing)
        return jsonify(status="unavailable", failing=failing), 503
    return jsonify(status="ok")


@bp.get("/metrics")
def metrics():
    """Prometheus text format (bind the server to a private interface in production)."""
    # As a header: mimetype= would append a second "charset", which strict scrapers refuse.
    return Response(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
