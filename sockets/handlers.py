"""Socket.IO event handlers, named after their events (CONTRACT.md section 2).

A connect is served from this server's memory of the tenant (sockets/tenants.py): no query
per client. What a handler sends goes to a client of this very process, so it bypasses the message queue
(``ignore_queue=True``): no round trip through RabbitMQ, no fan-out to every other server, and
no contention on the process's one publishing connection when many clients connect at once.
"""

import logging

from flask import current_app, request
from flask_socketio import ConnectionRefusedError, disconnect

from campaigns import metrics
from campaigns.auth import AuthError, identity_from_session, identity_from_token
from campaigns.events import is_integer
from campaigns.updates import RESYNC_EVENT, SNAPSHOT_EVENT, UPDATE_EVENT, tenant_room
from extensions import db, socketio
from sockets.limits import ConnectThrottle, EventBudget
from sockets.tenants import TooManyConnections, Unavailable, UnknownTenant, tenant_states

log = logging.getLogger(__name__)
DISCONNECT_AFTER_REFUSALS = 20
# Packets waiting in a connection's Engine.IO queue above which it gets no more replays.
REPLAY_BACKLOG_LIMIT = 200

# Every connection this process serves: sid -> Identity, and the client-event budget.
connections = {}
budgets = {}
# sid -> tenant whose state (sockets/tenants.py) this connection holds.
holding = {}
connect_throttle = None


def refuse(reason):
    """Refuse a connection; the client's ``connect_error`` carries ``reason`` as its message."""
    metrics.connections_refused.labels(reason).inc()
    raise ConnectionRefusedError(reason)


def authenticate_socket(auth):
    """The identity behind a connection: ``auth.token``, else the admin-page session cookie."""
    token = auth.get("token") if isinstance(auth, dict) else None
    try:
        if token is not None:
            # Existence is checked by loading the tenant (tenant_states.acquire), not once per connect.
            return identity_from_token(token, tenant_exists=lambda tenant_id: True)
        identity = identity_from_session()
    except AuthError as exc:
        refuse(exc.code)
    if identity is None:
        refuse("unauthorized")
    return identity


def _parse_seq(value):
    """An integer ``seq`` >= 0, or None."""
    if not is_integer(value) or value < 0:
        return None
    return value


def _send(sid, event, data):
    """Emit to a client of this process, bypassing the message queue (see the module docstring)."""
    socketio.server.emit(event, data, to=sid, namespace="/", ignore_queue=True)


def connect(auth=None):
    """Authenticate, then send the snapshot and any missed updates from memory and join the room.

    Any unexpected failure (database down or busy) refuses the connection with ``unavailable``:
    an accepted connection without snapshot or room would never work.
    """
    if request.sid in connections:
        # python-socketio also dispatches a client *event* named "connect" to this handler.
        return refuse_event("connect")
    try:
        return _connect(auth)
    except ConnectionRefusedError:
        _forget(request.sid)
        raise
    except Exception as exc:
        expected = isinstance(exc, Unavailable)
        level = logging.WARNING if expected else logging.ERROR
        log.log(level, "[WEBSOCKET] connect of %s failed; refusing it: %s", request.sid, exc, exc_info=not expected)
        db.session.rollback()
        _forget(request.sid)
        refuse("unavailable")


def _connect(auth):
    identity = authenticate_socket(auth)
    tenant_id = identity.tenant_id
    auth = auth if isinstance(auth, dict) else {}
    last_seq = _parse_seq(auth.get("last_seq"))
    if auth.get("last_seq") is not None and last_seq is None:
        log.warning("[WEBSOCKET] ignoring invalid last_seq %r from %s", auth.get("last_seq"), request.sid)
    epoch = auth.get("epoch") if isinstance(auth.get("epoch"), str) else None
    _slow_down(auth.get("token"), identity)
    db.session.remove()  # nothing below needs the request's session: give its connection back
    connections[request.sid] = identity
    budgets[request.sid] = EventBudget(
        current_app.config["SOCKET_EVENT_BURST"], current_app.config["SOCKET_EVENT_RATE"]
    )
    sid = request.sid
    try:
        tenant_states.acquire(tenant_id, current_app.config["MAX_CONNECTIONS_PER_TENANT"])
    except UnknownTenant:
        refuse("unauthorized")
    except TooManyConnections:
        refuse("too_many_connections")
    holding[sid] = tenant_id
    if _left(sid):
        refuse("unavailable")  # gone while the tenant loaded
    plan = tenant_states.prepare(tenant_id, last_seq, epoch)
    if _left(sid):
        refuse("unavailable")  # gone while the replay was read
    # Sent once python-socketio has sent CONNECT (sockets/after_connect.py), in seq order with live updates.
    socketio.server.manager.after_connect(sid, "/", lambda: _deliver(sid, tenant_id, plan))
    log.info("[WEBSOCKET] client %s connected for tenant %s (last_seq=%s)", sid, tenant_id, last_seq)


def _deliver(sid, tenant_id, plan):
    """The snapshot, replayed updates and room of an accepted client (after its CONNECT packet)."""
    server = socketio.server
    if _left(sid):  # after the handler's last look
        _forget(sid)
        server.manager.disconnect(sid, "/", ignore_queue=True)
        return
    try:
        tenant_states.deliver(
            tenant_id,
            plan,
            lambda event, data: _send(sid, event, data),
            lambda: server.enter_room(sid, tenant_room(tenant_id), namespace="/"),
        )
    except Exception:
        # Connected without its snapshot or room, the client would never be served. Closing the
        # Engine.IO session (not a Socket.IO DISCONNECT, after which clients do not come back)
        # makes it reconnect.
        log.exception("[WEBSOCKET] serving %s after its connect failed; closing its connection", sid)
        server.eio.disconnect(server.manager.eio_sid_from_sid(sid, "/"))


def _engineio_session(sid):
    """The Engine.IO socket of a client (None under Flask-SocketIO's test client, or once it ended)."""
    server = socketio.server
    eio_sid = server.manager.eio_sid_from_sid(sid, "/")
    return server.eio.sockets.get(eio_sid) if eio_sid is not None else None


def _left(sid):
    """True when a connecting client's Engine.IO session has ended.

    python-socketio ignores a disconnect while a connect is pending (a websocket closed, a
    long-polling CLOSE in another request, the sweeper) and marks the client connected all the
    same, so whoever holds its slot must see this and let it go. It drops the environ when the
    session ends (Flask-SocketIO's test client has an environ but no session)."""
    server = socketio.server
    session = _engineio_session(sid)
    ended = session is not None and (session.closing or session.closed)
    return ended or server.manager.eio_sid_from_sid(sid, "/") not in server.environ


def _slow_down(token, identity):
    """Hold a connect that goes over its credential's budget; refuse it with ``rate_limited`` beyond."""
    key = token.rsplit(".", 1)[-1] if isinstance(token, str) else f"session:{identity.tenant_id}:{identity.subject}"
    wait = connect_throttle.reserve(key)
    if wait is None:
        refuse("rate_limited")
    if wait:
        socketio.sleep(wait)


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
    budget = budgets.pop(sid, None)
    if budget is not None:
        budget.clear()
    held = holding.pop(sid, None)
    if held is not None:
        tenant_states.release(held)
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
    if identity is None or request.sid not in holding:
        return {"error": "unauthorized", "message": "not connected"}
    if not _within_budget():
        return {"error": "rate_limited", "message": "too many client events; slow down"}
    engineio_session = _engineio_session(request.sid)
    if engineio_session is not None and engineio_session.queue.qsize() > REPLAY_BACKLOG_LIMIT:
        # A client that does not read what it asked for would make this server queue without end.
        return {"error": "rate_limited", "message": "read what was sent first"}
    after_seq = _parse_seq(data.get("after_seq")) if isinstance(data, dict) else None
    if after_seq is None:
        return {"error": "bad_request", "message": "after_seq must be an integer >= 0"}
    try:
        reason, replayed = tenant_states.recovery(identity.tenant_id, after_seq)
    except Unavailable as exc:
        log.warning("[WEBSOCKET] replay for %s failed: %s", request.sid, exc)
        return {"error": "unavailable", "message": "try again in a moment"}
    if reason is not None:
        metrics.resyncs_sent.labels(reason).inc()
        _send(request.sid, RESYNC_EVENT, {"reason": reason})
        _send(request.sid, SNAPSHOT_EVENT, tenant_states.encoded_snapshot(identity.tenant_id))
        return {"ok": True, "resync": True}
    for payload in replayed:
        _send(request.sid, UPDATE_EVENT, payload)
    metrics.replayed_updates.labels("socket").inc(len(replayed))
    return {"ok": True, "seq": replayed[-1]["seq"] if replayed else after_seq}


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


def refuse_malformed_packets(server):
    """Close, in one log line, the connection of a client that sends what is no Socket.IO packet.

    python-socketio raises on such a message (not JSON, an unknown packet type, an event without
    a name) and python-engineio logs the traceback at ERROR, once per message: a client could fill
    the log at line rate. What it raises is checked in tests/test_library_internals.py.
    """
    handle = server._handle_eio_message

    def handle_eio_message(eio_sid, data):
        try:
            return handle(eio_sid, data)
        except (ValueError, LookupError, TypeError) as exc:
            # python-socketio decodes and dispatches here, in this call (event handlers run in
            # background tasks; the connect handler catches its own errors): not JSON or an
            # unknown packet type (ValueError), an event without a name (``42[]``: IndexError,
            # ``42{}``: KeyError, ``42 5``: TypeError, when it logs ``data[0]``).
            return _refuse_packet(server, eio_sid, f"{exc.__class__.__name__}: {exc}")

    # python-socketio registered its bound method as Engine.IO's message handler when it was made.
    server.eio.on("message", handle_eio_message)
    server._handle_eio_message = handle_eio_message  # Flask-SocketIO's test client calls it by name


def _refuse_packet(server, eio_sid, reason):
    log.warning("[WEBSOCKET] closing %s: it sent a malformed packet (%s)", eio_sid, reason[:200])
    server.eio.disconnect(eio_sid)


def register_handlers(config):
    """Attach the handlers to the ``SocketIO`` instance and count its connections for /metrics."""
    global connect_throttle
    connect_throttle = ConnectThrottle(
        config["CONNECT_BURST_PER_CREDENTIAL"],
        config["CONNECT_RATE_PER_CREDENTIAL"],
        config["CONNECT_MAX_DELAY_SECONDS"],
    )
    socketio.on_event("connect", connect)
    socketio.on_event("disconnect", disconnect_handler)
    socketio.on_event("replay", replay)
    socketio.on_error_default(on_error)
    socketio.on("*")(unknown_event)
    refuse_malformed_packets(socketio.server)
    metrics.watch_connections(connections, lambda sid: socketio.server.transport(sid))
