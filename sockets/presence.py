"""This server's connection counts, published in ``server_presence`` for the ops page.

Several server processes run at once and each knows only its own connections
(sockets/handlers.py). Every ``SERVER_HEARTBEAT_SECONDS`` each one writes its counts into its
row; the ops page shows the rows seen within ``LIVE_HEARTBEATS`` heartbeats (a server that
died simply stops renewing its row), and each heartbeat deletes rows older than
``FORGET_HEARTBEATS`` heartbeats, so the table holds about one row per live server.
"""

import logging
import os
import socket
import uuid
from collections import Counter
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite

from campaigns.metrics import clients_by_transport
from campaigns.models import ServerPresence
from campaigns.timeutil import utcnow
from extensions import db, socketio

log = logging.getLogger(__name__)
LIVE_HEARTBEATS = 3
FORGET_HEARTBEATS = 12
# A server with clients of thousands of tenants publishes the largest ones (the rest as "other").
TENANTS_PUBLISHED = 200


def server_id(port):
    """This process's name in the table: host, port, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{port}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def count_clients(connections, tenant_clients, transport_of, tenants_published=TENANTS_PUBLISHED):
    """``{"transports": {...}, "tenants": {...}}`` of this server's connections right now."""
    transports = clients_by_transport(connections, transport_of)
    ranked = Counter(tenant_clients).most_common()
    tenants = dict(ranked[:tenants_published])
    rest = sum(count for _, count in ranked[tenants_published:])
    if rest:
        tenants["(other tenants)"] = rest
    return {"transports": transports, "tenants": tenants}


def publish(identity, clients, now, heartbeat_seconds, started_at):
    """Write this server's row and forget the rows of servers gone long ago (one transaction)."""
    table = ServerPresence.__table__
    host = identity.partition(":")[0]
    builder = postgresql.insert if db.session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = builder(table).values(
        id=identity, host=host, pid=os.getpid(), started_at=started_at, seen_at=now, clients=clients
    )
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.id], set_={"seen_at": now, "clients": clients}
    )
    db.session.execute(statement)
    forget_before = now - timedelta(seconds=heartbeat_seconds * FORGET_HEARTBEATS)
    db.session.execute(delete(table).where(table.c.seen_at < forget_before))
    db.session.commit()


def live_servers(now, heartbeat_seconds):
    """The rows of the servers that heartbeated recently, by id."""
    since = now - timedelta(seconds=heartbeat_seconds * LIVE_HEARTBEATS)
    query = select(ServerPresence).where(ServerPresence.seen_at >= since).order_by(ServerPresence.id)
    return db.session.scalars(query).all()


class Presence:
    """The heartbeat task of one server process."""

    def __init__(self, app, connections, tenant_clients, transport_of):
        self.app = app
        self.connections = connections
        self.tenant_clients = tenant_clients
        self.transport_of = transport_of
        self.heartbeat_seconds = app.config["SERVER_HEARTBEAT_SECONDS"]
        self.identity = server_id(app.config["PORT"])
        self.started_at = utcnow()

    def beat(self):
        """Publish the counts once."""
        with self.app.app_context():
            try:
                clients = count_clients(self.connections, self.tenant_clients, self.transport_of)
                publish(self.identity, clients, utcnow(), self.heartbeat_seconds, self.started_at)
            finally:
                db.session.remove()

    def run(self):
        """Heartbeat forever (a background task); a failure is logged and tried again at the next beat."""
        log.info("[WEBSOCKET] publishing connection counts as %s every %ss", self.identity, self.heartbeat_seconds)
        while True:
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - the ops page shows this server as gone, nothing worse
                log.warning("[WEBSOCKET] could not publish connection counts: %s", exc)
            socketio.sleep(self.heartbeat_seconds)
