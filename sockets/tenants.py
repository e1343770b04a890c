"""Each server's state of the tenants it has clients for, and how it stays equal to PostgreSQL.

Connect path: the first client of a tenant loads the tenant's state once (its ``seq`` and epoch,
its live campaigns, its newest stored updates); every later connect of that tenant is served from
memory (``prepare`` in the connect handler, ``deliver`` once the client is connected): the
snapshot is built once per ``seq``, a replay within the ring needs no
query. When memory lacks what a client asks for, one query answers every client waiting on the
same thing (``SingleFlight``), and no more than ``STATE_LOAD_CONCURRENCY`` queries of connects run
at once, so a connect storm never waits on the database pool: a connect that cannot be served
within ``CONNECT_WAIT_SECONDS`` is refused with ``unavailable``.

Feeding: the update stream (``sockets/stream.py``) hands every ``campaign_update`` to
``receive``, which applies it in ``seq`` order and delivers it to the tenant's room. The server
itself fills what the message queue lost (``catch_up``, from the stored updates):

- a gap in a tenant's ``seq`` (an update ahead of the next one waits until the missing ones
  are read);
- a reconnect of the stream's listener (``listener_reconnected``);
- every ``RECONCILE_SECONDS / 2``, one query for all the tenants held (``reconcile_once``): a
  tenant whose stored ``seq`` is still ahead of this server's half a second later (``behind_grace``)
  is caught up,
  and one whose epoch changed (or whose ``seq`` went back) is reloaded and its clients resync.

A tenant's state is dropped when its last client leaves.
"""

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import NamedTuple

from sqlalchemy import text

from campaigns import metrics
from campaigns.models import Campaign, CampaignUpdate, Tenant
from campaigns.timeutil import utcnow
from campaigns.updates import RESYNC_EVENT, SNAPSHOT_EVENT, UPDATE_EVENT, as_replayed, tenant_room
from extensions import db, socketio
from sockets.encoding import PreEncoded
from sockets.fanout import emit_in_order
from sockets.tenant_state import CampaignEntry, TenantState

log = logging.getLogger(__name__)
# Campaigns read when a tenant is loaded: the snapshot shows 500; the rest keeps their order known.
LIVE_SET_LIMIT = 2000
# How long a tenant found behind PostgreSQL may stay so before the server fetches (in-flight updates).
BEHIND_GRACE_SECONDS = 0.5
# Decisions of a connect (``prepare``) whose tenant moves faster than its replay can be read; then
# it starts again from the snapshot.
SERVE_ATTEMPTS = 3
# After a failed catch-up (database down), the next one waits this long.
CATCH_UP_RETRY_SECONDS = 1.0


class Unavailable(Exception):
    """What a client needs could not be read in time (database slow, down, or busy)."""


class TooManyConnections(Exception):
    """The tenant has ``MAX_CONNECTIONS_PER_TENANT`` clients on this server already."""


class UnknownTenant(Exception):
    """The tenant does not exist (or no longer does)."""


@dataclass
class _Call:
    done: object
    result: object = None
    error: BaseException | None = None


class SingleFlight:
    """One call per key at a time; callers with the same key meanwhile wait for its result."""

    def __init__(self):
        self._calls = {}
        self._lock = threading.Lock()

    def run(self, key, function, timeout):
        """``function()``'s result, computed once for everyone asking ``key`` meanwhile.

        Raises ``Unavailable`` when it failed or took longer than ``timeout`` for a waiter.
        """
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if leader:
                call = self._calls[key] = _Call(socketio.server.eio.create_event())
        if leader:
            try:
                call.result = function()
            except Exception as exc:  # noqa: BLE001 - every waiter gets it as Unavailable
                call.error = exc
            finally:
                with self._lock:
                    del self._calls[key]
                call.done.set()
        elif not call.done.wait(timeout):
            raise Unavailable(f"{key[0]} took longer than {timeout} s")
        if call.error is not None:
            raise Unavailable(str(call.error)) from call.error
        return call.result


@dataclass
class _Loading:
    """Updates that arrived from the stream while a tenant was being loaded."""

    arrived: list = field(default_factory=list)


class TenantStates:
    """The tenants this server holds, fed by the stream and reconciled with PostgreSQL."""

    def __init__(self):
        self.app = None
        self.states = {}
        self.clients = Counter()
        self.loading = {}
        self.lock = threading.RLock()
        self.flights = SingleFlight()
        self.catching_up = {}
        self._db_slots = None
        self._wake = None

    def init_app(self, app):
        """Read the settings; called by ``create_app``."""
        self.app = app
        config = app.config
        self.ring_size = config["REPLAY_RING_SIZE"]
        self.replay_max = config["REPLAY_MAX_UPDATES"]
        self.reconcile_seconds = config["RECONCILE_SECONDS"]
        self.connect_wait = config["CONNECT_WAIT_SECONDS"]
        self.retention = config["EVENT_RETENTION_SECONDS"]
        self._db_slots = threading.BoundedSemaphore(config["STATE_LOAD_CONCURRENCY"])
        self._background_slots = threading.BoundedSemaphore(2)
        self._postgresql = config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")
        self._timeout_ms = int(self.connect_wait * 1000)
        self.catch_up_failed_at = {}
        self.states.clear()  # an app of its own starts with nothing held (tests build several)
        self.clients.clear()

    # clients -----------------------------------------------------------------------------

    def acquire(self, tenant_id, limit=None):
        """Count one more client of ``tenant_id``, loading the tenant first if it is not held.

        ``clients`` is the one count of a tenant's connections on this server, those still
        connecting included: ``TooManyConnections`` beyond ``limit``. Raises ``Unavailable`` (and
        counts nothing) when the load fails or takes too long, and ``UnknownTenant`` when the
        tenant does not exist.
        """
        with self.lock:
            if limit is not None and self.clients[tenant_id] >= limit:
                raise TooManyConnections(tenant_id)
            self.clients[tenant_id] += 1
            state = self.states.get(tenant_id)
        if state is None:
            try:
                self.flights.run(("load", tenant_id), lambda: self._load(tenant_id), self.connect_wait)
            except Unavailable:
                self.release(tenant_id)
                raise
            state = self.states.get(tenant_id)
        if state is None or not state.epoch:  # no such tenant, or deleted since it was loaded
            self.release(tenant_id)
            raise UnknownTenant(tenant_id)

    def release(self, tenant_id):
        """Count one client less; the tenant's state goes with its last client."""
        with self.lock:
            self.clients[tenant_id] -= 1
            if self.clients[tenant_id] <= 0:
                del self.clients[tenant_id]
                self.states.pop(tenant_id, None)

    def prepare(self, tenant_id, last_seq, client_epoch):
        """What a connecting client needs, decided before it is accepted: a plan for ``deliver``.

        A ``ConnectPlan``. Reading the database for a replay
        (and waiting for it) happens here, in the connect handler, which may still refuse. When
        the tenant was reloaded or moved past the ring while the replay was read, it decides
        again (``SERVE_ATTEMPTS``), then starts the client from the snapshot (``too_far_behind``).
        """
        for _ in range(SERVE_ATTEMPTS):
            state = self.states[tenant_id]
            reason, replayed = self.recovery(tenant_id, last_seq, client_epoch, state)
            plan = ConnectPlan(state, reason, replayed, last_seq, client_epoch)
            with self.lock:
                ready = self._brought_up_to_date(tenant_id, plan)
            if ready is not None:  # deliver then adds only what comes in from here on
                return plan._replace(replayed=ready[2])
        return ConnectPlan(self.states[tenant_id], "too_far_behind", None, last_seq, client_epoch)

    def deliver(self, tenant_id, plan, send, join):
        """Send a client its ``plan`` and what came in since, in order, then ``join`` it to the room.

        ``resync`` first when it cannot be brought up to date, then the snapshot, then the
        updates after ``last_seq`` (replayed), then the room's live updates. Never waits: under
        the lock, from memory (``deliver`` follows ``prepare`` at once, after the CONNECT packet).
        False when the tenant's state is gone (its last client, this one, left meanwhile).
        """
        with self.lock:
            current = self.states.get(tenant_id)
            if current is None:
                return False
            ready = self._brought_up_to_date(tenant_id, plan)
            if ready is None:  # reloaded or moved past the ring since prepare: from the snapshot
                ready = (current, plan.fallback_reason(current.epoch), None)
            self._send_in_order(*ready, send)
            join()
            return True

    def _brought_up_to_date(self, tenant_id, plan):
        """``(state, reason, replayed)`` of a ``prepare`` plan with the updates since, or None
        when the plan no longer holds (its state replaced, or the ring moved past it); under the lock."""
        state, reason, replayed, last_seq, _ = plan
        if self.states.get(tenant_id) is not state:
            return None
        if replayed is None:
            return state, reason, None
        sent = replayed[-1]["seq"] if replayed else last_seq
        tail = state.replay_from_memory(sent, self.not_before())
        return None if tail is None else (state, reason, replayed + tail)

    def _send_in_order(self, state, reason, replayed, send):
        """``resync`` (if any), the snapshot, the replayed updates (if any); under the lock."""
        if reason:
            metrics.resyncs_sent.labels(reason).inc()
            send(RESYNC_EVENT, {"reason": reason})
        send(SNAPSHOT_EVENT, state.encoded_snapshot(utcnow()))
        for payload in replayed or ():
            send(UPDATE_EVENT, payload)
        if replayed:
            metrics.replayed_updates.labels("socket").inc(len(replayed))

    def recovery(self, tenant_id, after_seq, client_epoch=None, state=None):
        """``(resync_reason, replayed_updates)`` for a client that saw up to ``after_seq``.

        One of the two is None. Served from memory when the ring holds the updates; otherwise
        one query for every client asking the same.
        """
        state = state or self.states[tenant_id]
        if client_epoch is not None and client_epoch != state.epoch:
            return "epoch_changed", None
        if after_seq is None:
            return None, None
        if after_seq > state.seq:
            self.catch_up(tenant_id, "client_ahead")  # this server may lag PostgreSQL
            if after_seq > state.seq:
                return "history_expired", None
        if state.seq - after_seq > self.replay_max:
            return "too_far_behind", None
        with self.lock:
            held = state.replay_from_memory(after_seq, self.not_before())
        if held is not None:
            return None, held
        up_to = state.seq
        stored = self.flights.run(
            ("replay", tenant_id, after_seq, up_to),
            lambda: _encoded_replay(
                self._read(lambda: _stored_between(tenant_id, after_seq, up_to, self.not_before()))
            ),
            self.connect_wait,
        )
        if stored is None:
            return "history_expired", None
        return None, stored

    def encoded_snapshot(self, tenant_id):
        """The tenant's current snapshot, encoded once (the tenant must be held)."""
        with self.lock:
            return self.states[tenant_id].encoded_snapshot(utcnow())

    def not_before(self):
        """The oldest time of the kept history."""
        return utcnow() - timedelta(seconds=self.retention)

    # loading ---------------------------------------------------------------------------

    def _read(self, query, background=False):
        """Run ``query()`` in an app context, with one of the connect path's database slots
        (``background``: one of the reconciliation's, so a connect storm never delays it).

        On PostgreSQL the read may last ``CONNECT_WAIT_SECONDS`` at most: a connect handler that
        outlived its client's Engine.IO session would keep its slot (python-socketio ignores a
        disconnect while a connect is pending).
        """
        slots = self._background_slots if background else self._db_slots
        if not slots.acquire(timeout=self.connect_wait):
            raise Unavailable("every database slot of the connect path is busy")
        try:
            with self.app.app_context():
                try:
                    if self._postgresql:
                        db.session.execute(text("SET LOCAL statement_timeout = :ms"), {"ms": self._timeout_ms})
                    return query()
                finally:
                    db.session.rollback()
        finally:
            slots.release()

    def _load(self, tenant_id):
        with self.lock:
            self.loading[tenant_id] = _Loading()
        try:
            state = self._read(lambda: self._read_state(tenant_id))
        finally:
            with self.lock:
                arrived = self.loading.pop(tenant_id).arrived
        with self.lock:
            if state is None or self.clients[tenant_id] <= 0:
                return
            for payload in arrived:
                state.apply(payload)
            self.states[tenant_id] = state
        log.info("[WEBSOCKET] tenant %s loaded at seq %s (%d campaigns)", tenant_id, state.seq, len(state.campaigns))

    def _read_state(self, tenant_id):
        """A ``TenantState`` from PostgreSQL: ``seq`` first, so that nothing read after it is older."""
        position = Tenant.positions([tenant_id]).get(tenant_id)
        if position is None:
            return None
        last_seq, epoch = position
        state = TenantState(tenant_id, epoch, last_seq, self.ring_size)
        recent = CampaignUpdate.newest(tenant_id, last_seq, self.ring_size, self.not_before())
        live = Campaign.live_set(tenant_id, utcnow(), LIVE_SET_LIMIT)
        state.load([CampaignEntry(campaign, created, ended) for campaign, created, ended in live], recent)
        return state

    # the stream --------------------------------------------------------------------------

    def receive(self, payload):
        """One ``campaign_update`` from the stream: apply it in order and deliver it."""
        self.receive_many([payload])

    def receive_many(self, payloads):
        """``campaign_update``s from the stream, in arrival order: each tenant's are applied in
        ``seq`` order and delivered together (``emit_in_order``: one write per client)."""
        by_tenant = {}
        for payload in payloads:
            by_tenant.setdefault(payload["campaign"]["tenant_id"], []).append(payload)
        for tenant_id, arrived in by_tenant.items():
            with self.lock:
                loading = self.loading.get(tenant_id)
                if loading is not None:
                    loading.arrived.extend(arrived)
                state = self.states.get(tenant_id)
                if state is None:
                    continue
                self._apply_and_deliver(tenant_id, state, arrived)
                gap = state.missing_after()
            if gap is not None:
                log.info(
                    "[WEBSOCKET] tenant %s: seq %s to %s missing on the message queue", tenant_id, gap[0] + 1, gap[1]
                )
                self.start_catch_up(tenant_id, "gap")

    def _apply_and_deliver(self, tenant_id, state, payloads, cause=None):
        """Apply payloads to a tenant's state (under ``self.lock``) and deliver, together, those
        now in order. A payload that cannot be applied is skipped and logged: the ones applied
        before it are delivered all the same (their ``seq`` is taken: nothing would resend them),
        and what it missed the server fetches like any gap."""
        ready = []
        try:
            for payload in payloads:
                try:
                    ready.extend(state.apply(payload))
                except Exception:  # noqa: BLE001 - one bad update must not cost the others
                    log.exception("[WEBSOCKET] tenant %s: an update could not be applied", tenant_id)
        finally:
            self._deliver(tenant_id, ready, cause)

    def _deliver(self, tenant_id, payloads, cause=None):
        emit_in_order(socketio.server, UPDATE_EVENT, payloads, tenant_room(tenant_id))
        if cause and payloads:
            metrics.reconciled_updates.labels(cause).inc(len(payloads))

    def start_catch_up(self, tenant_id, cause):
        """Fetch and deliver what the tenant's clients miss, in a background task (one per tenant)."""
        with self.lock:
            failed_at = self.catch_up_failed_at.get(tenant_id)
            if self.catching_up.get(tenant_id) or (failed_at and time.monotonic() - failed_at < CATCH_UP_RETRY_SECONDS):
                return
            self.catching_up[tenant_id] = True
        socketio.start_background_task(self._catch_up_task, tenant_id, cause)

    def _catch_up_task(self, tenant_id, cause):
        try:
            # Again while a gap remains: one may have opened while this one was reading.
            for _ in range(SERVE_ATTEMPTS):
                self.catch_up(tenant_id, cause)
                state = self.states.get(tenant_id)
                if state is None or state.missing_after() is None:
                    break
            self.catch_up_failed_at.pop(tenant_id, None)
        except Exception as exc:  # noqa: BLE001 - the next reconciliation tries again
            self.catch_up_failed_at[tenant_id] = time.monotonic()
            log.warning("[WEBSOCKET] catching up tenant %s (%s) failed; retrying: %s", tenant_id, cause, exc)
        finally:
            with self.lock:
                self.catching_up.pop(tenant_id, None)

    def catch_up(self, tenant_id, cause):
        """Read the stored updates after this server's ``seq`` of the tenant and deliver them."""
        state = self.states.get(tenant_id)
        if state is None:
            return
        after = state.seq
        stored = self.flights.run(
            ("catch_up", tenant_id, after),
            lambda: self._read(
                lambda: _stored_after(tenant_id, after, self.replay_max + 1, self.not_before()), background=True
            ),
            self.connect_wait,
        )
        with self.lock:
            if self.states.get(tenant_id) is not state:
                return
            if stored is None or len(stored) > self.replay_max:
                reason = "history_expired" if stored is None else "too_far_behind"
            else:
                self._apply_and_deliver(tenant_id, state, stored, cause)
                return
        self.reset(tenant_id, reason, state)

    def reset(self, tenant_id, reason, replaced):
        """Reload a tenant held as ``replaced`` and send its clients ``resync`` and the new snapshot."""
        with self.lock:
            self.loading[tenant_id] = _Loading()  # what the stream brings meanwhile goes on top
        try:
            state = self._read(lambda: self._read_state(tenant_id), background=True)
        finally:
            with self.lock:
                arrived = self.loading.pop(tenant_id).arrived
        with self.lock:
            if self.states.get(tenant_id) is not replaced:
                return  # dropped, or loaded again meanwhile: that state is newer
            if state is None:
                # Deleted: its clients get an empty snapshot, and a new epoch if it comes back.
                state = TenantState(tenant_id, "", 0, self.ring_size)
            for payload in arrived:
                state.apply(payload)
            self.states[tenant_id] = state
            room = tenant_room(tenant_id)
            socketio.emit(RESYNC_EVENT, {"reason": reason}, to=room, ignore_queue=True)
            socketio.emit(SNAPSHOT_EVENT, state.encoded_snapshot(utcnow()), to=room, ignore_queue=True)
            metrics.resyncs_sent.labels(reason).inc()
        log.warning("[WEBSOCKET] tenant %s reloaded at seq %s: clients resync (%s)", tenant_id, state.seq, reason)

    # reconciliation ----------------------------------------------------------------------

    def listener_reconnected(self):
        """The stream's listener came back: whatever it missed is read at once."""
        log.warning("[WEBSOCKET] message-queue listener reconnected: reconciling every tenant")
        if self._wake is not None:
            self._wake.set()

    def run_reconciliation(self):
        """Background loop: ``reconcile_once`` every ``RECONCILE_SECONDS / 2`` or when woken.

        Each look starts ``RECONCILE_SECONDS / 2`` after the previous one started, not after it
        ended: a look waits its grace (``behind_grace``) whenever a tenant is behind, which under
        traffic is nearly always, and counted after the look the interval grew by that grace.
        A look that ran longer than that (a slow database) still leaves ``RECONCILE_SECONDS / 8``
        of rest before the next, and a failed one ``RECONCILE_SECONDS / 2``: never back to back."""
        self._wake = socketio.server.eio.create_event()
        started = ended = time.monotonic()
        while True:
            due = max(started + self.reconcile_seconds / 2, ended + self.reconcile_seconds / 8)
            self._wake.wait(max(due - time.monotonic(), 0))
            self._wake.clear()
            started = time.monotonic()
            try:
                self.reconcile_once()
            except Exception:  # noqa: BLE001 - the loop must outlive a database outage
                log.exception("[WEBSOCKET] reconciliation failed; retrying in %ss", self.reconcile_seconds / 2)
                started = time.monotonic()
            ended = time.monotonic()

    def behind_grace(self):
        """How long a tenant found behind PostgreSQL may stay so before this server fetches (the
        updates are mostly in flight on the message queue): ``BEHIND_GRACE_SECONDS``, and at most a
        quarter of ``RECONCILE_SECONDS``, so that a look every R/2 plus the grace stays within R of a
        commit whatever R is (with R = 1 s a fixed 0.5 s made it 1 s plus the query)."""
        return min(BEHIND_GRACE_SECONDS, self.reconcile_seconds / 4)

    def reconcile_once(self):
        """One query for every tenant held; catch up the ones behind, reload the ones replaced."""
        with self.lock:
            held = dict(self.states)
            # Before the read: the stream may deliver more while it runs, and PostgreSQL's seq
            # only grows, so only a seq below what was delivered *before* the read went back.
            delivered = {tenant_id: state.seq for tenant_id, state in held.items()}
        if not held:
            return
        positions = self._read(lambda: Tenant.positions(held), background=True)
        behind, replaced, unplaced = {}, [], []
        for tenant_id, state in held.items():
            last_seq, epoch = positions.get(tenant_id, (0, ""))
            if epoch != state.epoch or last_seq < delivered[tenant_id]:
                replaced.append((tenant_id, state))
            elif last_seq > state.seq:
                behind[tenant_id] = last_seq
            elif state.provisional_ids():
                unplaced.append((tenant_id, state))
        if behind:
            socketio.sleep(self.behind_grace())  # most are in flight on the message queue
            for tenant_id, last_seq in behind.items():
                state = self.states.get(tenant_id)
                if state is not None and state.seq < last_seq:
                    self.start_catch_up(tenant_id, "behind")
        for tenant_id, state in replaced:
            self._each(self.reset, tenant_id, "epoch_changed", state)
        for tenant_id, state in unplaced:
            self._each(self._place_new_campaigns, tenant_id, state)

    def _each(self, step, tenant_id, *args):
        """One tenant's step of a reconciliation; its failure does not stop the others'."""
        try:
            step(tenant_id, *args)
        except Exception as exc:  # noqa: BLE001 - retried at the next reconciliation
            log.warning("[WEBSOCKET] reconciling tenant %s: %s failed: %s", tenant_id, step.__name__, exc)

    def _place_new_campaigns(self, tenant_id, state):
        """Campaigns first seen in the stream take their real place in the snapshot's order."""
        ids = state.provisional_ids()
        keys = self._read(lambda: Campaign.order_keys(tenant_id, ids), background=True)
        with self.lock:
            for campaign_id, (created_at, ended_at) in keys.items():
                entry = state.campaigns.get(campaign_id)
                if entry is not None:
                    state.merge_entry(CampaignEntry(entry.campaign, created_at, ended_at))


class ConnectPlan(NamedTuple):
    """What ``TenantStates.prepare`` decided for a connecting client, for ``deliver``."""

    state: object  # the TenantState it was decided on
    reason: str | None  # the resync reason, if any
    replayed: list | None  # the updates after last_seq, if it is replayed
    last_seq: int | None
    client_epoch: str | None

    def fallback_reason(self, epoch):
        """The resync reason when the plan no longer holds and the client starts from a snapshot."""
        if self.last_seq is None and self.client_epoch is None:
            return None  # it saw nothing before: the snapshot is all it needs
        return "epoch_changed" if epoch != self.state.epoch else "too_far_behind"


def _encoded_replay(stored):
    """Stored updates as replayed, encoded once for every client that waited on the same read."""
    return None if stored is None else [PreEncoded(as_replayed(payload)) for payload in stored]


def _stored_between(tenant_id, after_seq, up_to, not_before):
    """The kept updates with ``after_seq < seq <= up_to``, or None when the first of them is gone."""
    if up_to <= after_seq:
        return []
    stored = _stored_after(tenant_id, after_seq, up_to - after_seq, not_before)
    return stored if stored else None


def _stored_after(tenant_id, after_seq, limit, not_before):
    """At most ``limit`` kept updates after ``after_seq``, or None when the next one is no longer kept."""
    stored = CampaignUpdate.after(tenant_id, after_seq, limit, not_before)
    if stored and stored[0]["seq"] != after_seq + 1:
        return None
    return stored


tenant_states = TenantStates()
