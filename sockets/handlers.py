"""Socket.IO event handlers, named after their events (CONTRACT.md section 2).

What a handler sends goes to a client of this very process, so it bypasses the message queue
(``ignore_queue=True``): no round trip through RabbitMQ, no fan-out to every other server, and
no contention on the process's one publishing connection when many clients connect at once.
"""

import logging
from collections import Counter
from datetime import timedelta

from flask import current_app, request
from flask_socketio import ConnectionRefusedError, disconnect, emit, join_room

from campaigns import metrics
from campaigns.auth import AuthError, identity_from_session, identity_from_token
from campaigns.models import Campaign, CampaignUpdate
from campaigns.timeutil import utcnow
from campaigns.updates import RESYNC_EVENT, SNAPSHOT_EVENT, UPDATE_EVENT, as_replayed, tenant_room
from extensions import db, socketio
from sockets.limits import TokenBucket

log = logging.getLogger(__name__)
REPLAY_PAGE = 500
DISCONNECT_AFTER_REFUSALS = 20

# Every connection this process serves: sid -> Identity, and the client-event budget.
connections = {}
budgets = {}
per_tenant = Counter()


def refuse(reason):
    """Refuse a connection; the client's ``connect_error`` carries ``reason`` as its message."""
    metrics.connections_refused.labels(reason).inc()
    raise ConnectionRefusedError(reason)


def authenticate_socket(auth):
    """The identity behind a connection: ``auth.token``, else the admin-page session cookie."""
    token = auth.get("token") if isinstance(auth, dict) else None
    try:
        if token is not None:
            return identity_from_token(token)
        identity = identity_from_session()
    except AuthError as exc:
        refuse(exc.code)
    if identity is None:
        refuse("unauthorized")
    return identity


def _retention_start():
    return utcnow() - timedelta(seconds=current_app.config["EVENT_RETENTION_SECONDS"])


def _send_snapshot(tenant_id):
    snapshot = Campaign.snapshot(tenant_id)
    db.session.commit()
    emit(SNAPSHOT_EVENT, snapshot, ignore_queue=True)
    return snapshot["seq"]


def _send_stored_updates(tenant_id, after_seq):
    """Emit every kept update after ``after_seq`` as replayed; return the last ``seq`` sent."""
    not_before = _retention_start()
    while True:
        page = CampaignUpdate.after(tenant_id, after_seq, REPLAY_PAGE, not_before)
        db.session.commit()
        for payload in page:
            emit(UPDATE_EVENT, as_replayed(payload), ignore_queue=True)
        metrics.replayed_updates.labels("socket").inc(len(page))
        if page:
            after_seq = page[-1]["seq"]
        if len(page) < REPLAY_PAGE:
            return after_seq


def _recover(tenant_id, after_seq):
    """Replay after ``after_seq``, or tell the client to resync when that history is gone."""
    if CampaignUpdate.history_expired(tenant_id, after_seq, _retention_start()):
        db.session.commit()
        emit(RESYNC_EVENT, {"reason": "history_expired"}, ignore_queue=True)
        return None
    return _send_stored_updates(tenant_id, after_seq)


def _parse_seq(value):
    """An integer ``seq`` >= 0, or None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def connect(auth=None):
    """Authenticate, send the snapshot and any missed updates, then join the tenant's room.

    Any unexpected failure (database down, pool exhausted) refuses the connection with
    ``unavailable``: an accepted connection without snapshot or room would never work.
    """
    if request.sid in connections:
        # python-socketio also dispatches a client *event* named "connect" to this handler.
        return refuse_event("connect")
    try:
        return _connect(auth)
    except ConnectionRefusedError:
        raise
    except Exception:
        log.exception("[WEBSOCKET] connect of %s failed; refusing it", request.sid)
        db.session.rollback()
        _forget(request.sid)
        refuse("unavailable")


def _connect(auth):
    identity = authenticate_socket(auth)
    tenant_id = identity.tenant_id
    if per_tenant[tenant_id] >= current_app.config["MAX_CONNECTIONS_PER_TENANT"]:
        refuse("too_many_connections")
    auth = auth if isinstance(auth, dict) else {}
    last_seq = _parse_seq(auth.get("last_seq"))
    if auth.get("last_seq") is not None and last_seq is None:
        log.warning("[WEBSOCKET] ignoring invalid last_seq %r from %s", auth.get("last_seq"), request.sid)
    connections[request.sid] = identity
    per_tenant[tenant_id] += 1
    budgets[request.sid] = TokenBucket(
        current_app.config["SOCKET_EVENT_BURST"], current_app.config["SOCKET_EVENT_RATE"]
    )
    sent = _send_snapshot(tenant_id)
    if last_seq is not None:
        replayed = _recover(tenant_id, last_seq)
        if replayed is not None:
            sent = max(sent, replayed)
    join_room(tenant_room(tenant_id))
    # Anything stored between the snapshot and joining the room would be missed otherwise.
    _send_stored_updates(tenant_id, sent)
    log.info("[WEBSOCKET] client %s connected for tenant %s (last_seq=%s)", request.sid, tenant_id, last_seq)


def disconnect_handler(*args):
    """Forget the connection."""
    if socketio.server.manager.is_connected(request.sid, "/"):
        # Not a real disconnect (those are pending here) but a client event named "disconnect".
        return refuse_event("disconnect")
    identity = _forget(request.sid)
    log.info("[WEBSOCKET] client %s disconnected (tenant %s)", request.sid, identity and identity.tenant_id)


def _forget(sid):
    """Drop what this process keeps about a connection; return its identity (or None)."""
    identity = connections.pop(sid, None)
    budgets.pop(sid, None)
    if identity is not None:
        per_tenant[identity.tenant_id] -= 1
        if per_tenant[identity.tenant_id] <= 0:
            del per_tenant[identity.tenant_id]
    return identity


def _within_budget():
    """Spend one client event of this connection's budget; disconnect persistent flooders."""
    budget = budgets.get(request.sid)
    if budget is None or budget.take():
        return True
    if budget.refusals >= DISCONNECT_AFTER_REFUSALS:
        log.warning("[WEBSOCKET] disconnecting %s: too many client events", request.sid)
        disconnect()
    return False


def replay(data=None):
    """Client event ``replay`` ``{"after_seq": N}``: send the stored updates after N again."""
    identity = connections.get(request.sid)
    if identity is None:
        return {"error": "unauthorized", "message": "not connected"}
    if not _within_budget():
        return {"error": "rate_limited", "message": "too many client events; slow down"}
    after_seq = _parse_seq(data.get("after_seq")) if isinstance(data, dict) else None
    if after_seq is None:
        return {"error": "bad_request", "message": "after_seq must be an integer >= 0"}
    last = _recover(identity.tenant_id, after_seq)
    if last is None:
        _send_snapshot(identity.tenant_id)
        return {"ok": True, "resync": True}
    return {"ok": True, "seq": last}


def refuse_event(event):
    """Refuse a client event: counted against the budget, answered with an error."""
    if request.sid in connections:
        _within_budget()
    log.info("[WEBSOCKET] refused unknown event %r from %s", str(event)[:64], request.sid)
    return {"error": "unknown_event", "message": "this server accepts only the replay event"}


def unknown_event(event, *args):
    """Any other client event is refused (the server picks rooms; clients cannot)."""
    return refuse_event(event)


def on_error(exc):
    """Log every exception a handler raised; the connection stays up."""
    log.exception("[WEBSOCKET] handler error for %s: %s", request.sid, exc)
    db.session.rollback()


def register_handlers():
    """Attach the handlers to the ``SocketIO`` instance and count its connections for /metrics."""
    socketio.on_event("connect", connect)
    socketio.on_event("disconnect", disconnect_handler)
    socketio.on_event("replay", replay)
    socketio.on_error_default(on_error)
    socketio.on("*")(unknown_event)
    metrics.watch_connections(connections, lambda sid: socketio.server.transport(sid))
