"""Socket.IO event handlers, named after their events (CONTRACT.md section 2)."""

import logging
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app, request
from flask_socketio import ConnectionRefusedError, emit, join_room

from campaigns.models import Campaign, CampaignUpdate, Tenant
from campaigns.timeutil import utcnow
from campaigns.tokens import TokenError, decode_token
from campaigns.updates import RESYNC_EVENT, SNAPSHOT_EVENT, UPDATE_EVENT, as_replayed, tenant_room
from extensions import db

log = logging.getLogger(__name__)
REPLAY_PAGE = 500


@dataclass(frozen=True)
class Identity:
    """Who is on the other end of a connection or request."""

    tenant_id: str
    subject: str


# sid -> Identity of every connection this process serves
connections = {}


def authenticate_socket(auth):
    """The identity behind a connection's ``auth`` object; refuse the connection otherwise."""
    token = auth.get("token") if isinstance(auth, dict) else None
    if token is None:
        raise ConnectionRefusedError("unauthorized")
    try:
        claims = decode_token(current_app.config["JWT_SECRET"], token)
    except TokenError as exc:
        raise ConnectionRefusedError(exc.code) from None
    if db.session.get(Tenant, claims["tenant"]) is None:
        raise ConnectionRefusedError("unauthorized")
    return Identity(claims["tenant"], claims["sub"])


def _retention_start():
    return utcnow() - timedelta(seconds=current_app.config["EVENT_RETENTION_SECONDS"])


def _send_snapshot(tenant_id):
    snapshot = Campaign.snapshot(tenant_id)
    db.session.commit()
    emit(SNAPSHOT_EVENT, snapshot)
    return snapshot["seq"]


def _send_stored_updates(tenant_id, after_seq):
    """Emit every kept update after ``after_seq`` as replayed; return the last ``seq`` sent."""
    not_before = _retention_start()
    while True:
        page = CampaignUpdate.after(tenant_id, after_seq, REPLAY_PAGE, not_before)
        db.session.commit()
        for payload in page:
            emit(UPDATE_EVENT, as_replayed(payload))
        if page:
            after_seq = page[-1]["seq"]
        if len(page) < REPLAY_PAGE:
            return after_seq


def _recover(tenant_id, after_seq):
    """Replay after ``after_seq``, or tell the client to resync when that history is gone."""
    if CampaignUpdate.history_expired(tenant_id, after_seq, _retention_start()):
        db.session.commit()
        emit(RESYNC_EVENT, {"reason": "history_expired"})
        return None
    return _send_stored_updates(tenant_id, after_seq)


def _parse_seq(value):
    """An integer ``seq`` >= 0, or None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def connect(auth=None):
    """Authenticate, send the snapshot and any missed updates, then join the tenant's room."""
    identity = authenticate_socket(auth)
    tenant_id = identity.tenant_id
    last_seq = _parse_seq(auth.get("last_seq")) if "last_seq" in auth else None
    if "last_seq" in auth and last_seq is None:
        log.warning("[WEBSOCKET] ignoring invalid last_seq %r from %s", auth.get("last_seq"), request.sid)
    sent = _send_snapshot(tenant_id)
    if last_seq is not None:
        replayed = _recover(tenant_id, last_seq)
        if replayed is not None:
            sent = max(sent, replayed)
    join_room(tenant_room(tenant_id))
    # Anything stored between the snapshot and joining the room would be missed otherwise.
    _send_stored_updates(tenant_id, sent)
    connections[request.sid] = identity
    log.info(
        "[WEBSOCKET] client %s connected for tenant %s (last_seq=%s)", request.sid, tenant_id, last_seq
    )


def disconnect(*args):
    """Forget the connection."""
    identity = connections.pop(request.sid, None)
    log.info(
        "[WEBSOCKET] client %s disconnected (tenant %s)", request.sid, identity and identity.tenant_id
    )


def replay(data=None):
    """Client event ``replay`` ``{"after_seq": N}``: send the stored updates after N again."""
    identity = connections.get(request.sid)
    if identity is None:
        return {"error": "unauthorized", "message": "not connected"}
    after_seq = _parse_seq(data.get("after_seq")) if isinstance(data, dict) else None
    if after_seq is None:
        return {"error": "bad_request", "message": "after_seq must be an integer >= 0"}
    last = _recover(identity.tenant_id, after_seq)
    if last is None:
        _send_snapshot(identity.tenant_id)
        return {"ok": True, "resync": True}
    return {"ok": True, "seq": last}


def on_error(exc):
    """Log every exception a handler raised; the connection stays up."""
    log.exception("[WEBSOCKET] handler error for %s: %s", request.sid, exc)
    db.session.rollback()


def register_handlers(socketio):
    """Attach the handlers to a ``SocketIO`` instance."""
    socketio.on_event("connect", connect)
    socketio.on_event("disconnect", disconnect)
    socketio.on_event("replay", replay)
    socketio.on_error_default(on_error)
