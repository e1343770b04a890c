"""The kombu consumer: validate, apply in batches, acknowledge after commit, then emit.

One loop (kombu's ``ConsumerMixin``) does everything in order, so there is no locking
inside the process: messages are collected by ``on_message``; ``on_iteration`` turns a
full (or lingering) batch into one database transaction (two when it holds a status event,
``status_first``: that event's campaign first), emits merged updates whose
throttle window has ended, and prunes old history from time to time.

Failures (worker/failures.py): a database error that the event cannot have caused is
retried with backoff, acknowledging nothing, for as long as it lasts; only an event that
fails alone with an error of its own is dead-lettered. Whatever fails after a commit (the
ack, a dead letter, the emit), the batch's updates are emitted and the tenant locks given
back before the error goes on to kombu's reconnection.
"""

import contextlib
import fcntl
import logging
import select
import socket
import struct
import termios
import time

from kombu.mixins import ConsumerProducerMixin
from sqlalchemy.orm import Session

from campaigns import metrics
from campaigns.events import InvalidEvent, parse_event
from campaigns.ingest import DUE_BATCH, PRUNE_CHUNK, TenantLocks, apply_batch, flush_due_updates, prune
from campaigns.models import PROGRESS_EVENTS
from campaigns.queues import DEAD_LETTER_QUEUE, REJECTION_HEADER, dead_letter_queue, worker_queue
from campaigns.rules import FailureAlertRule
from campaigns.timeutil import utcnow
from campaigns.updates import UPDATE_EVENT, tenant_room
from worker.broker_reads import buffered_bytes, read_ahead
from worker.failures import caused_by_event, describe, retry_reason
from worker.health import WorkerHealth
from worker.throttle_log import ThrottleSummary

log = logging.getLogger(__name__)
DUE_CHECK_SECONDS = 0.1
# A batch's events of campaigns without a status event get a transaction of their own after the
# status events' campaigns when there are at least this many (``status_first``).
STATUS_FIRST_MIN_REST = 8
PRUNE_SECONDS = 60.0
# Low enough that events flow within about 2 s of the database's return; one failed attempt
# every 2 s per worker costs the database nothing worth counting.
MAX_BACKOFF_SECONDS = 2.0
# A flush of merged updates that fails for another reason than the database (which
# in_transaction retries) is tried again this much later, not in a tight loop; a prune, at
# the next prune.
TASK_RETRY_SECONDS = 5.0
# Between two chunks of a history backlog: the loop applies events in between.
PRUNE_CHUNK_PAUSE_SECONDS = 0.2
# A status event ends its batch at once unless the broker has already sent this much that the
# worker has not read: a backlog (the broker keeps up to the prefetch, ~1,000 events of ~400
# bytes, coming), applied in large batches whatever its share of status events. Live at 1,000
# events/s, what arrives during a 50 ms transaction is ~20 KB.
BACKLOG_BYTES = 64 * 1024


def tls_pending(sock):
    """Bytes a TLS socket (amqps) has decrypted and not handed over yet: select and FIONREAD do
    not see them (a whole TLS record is decrypted at once, up to 16 KB); 0 on a plain socket."""
    pending = getattr(sock, "pending", None)
    return pending() if pending is not None else 0


def unread_bytes(sock):
    """Bytes the peer sent on ``sock`` that were not read yet (the kernel's FIONREAD, plus TLS);
    0 when the socket cannot tell."""
    try:
        kernel = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0
    return kernel + tls_pending(sock)


def backlog_threshold(sock):
    """``BACKLOG_BYTES``, or a quarter of the socket's receive buffer where that is less: kernels
    that keep the window near half the buffer would never let 64 KB pile up in 128 KB."""
    try:
        return min(BACKLOG_BYTES, sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 4)
    except (OSError, ValueError):
        return BACKLOG_BYTES


class StopRequested(Exception):
    """Raised inside a retry loop when the worker was asked to stop."""


class BrokerLost(ConnectionError):
    """The broker connection was lost while the worker waited on the database.

    One of kombu's ``connection_errors`` (its loop connects and consumes again), and the only
    broker error that can come out of applying events: catching kombu's whole tuple there would
    also catch any ``OSError`` raised by the applying itself and redeliver that event for ever."""


class EventConsumer(ConsumerProducerMixin):
    """Consumes ``campaign.events``; see the module docstring for the loop."""

    def __init__(self, connection, engine, emitter, settings, health=None):
        self.connection = connection
        self.health = health or WorkerHealth()
        self.session_settings = {
            "lock_timeout": int(settings.get("WORKER_LOCK_TIMEOUT_SECONDS", 10.0) * 1000),
            "statement_timeout": int(settings.get("WORKER_STATEMENT_TIMEOUT_SECONDS", 30.0) * 1000),
            "idle_session_timeout": int(settings.get("WORKER_IDLE_SESSION_TIMEOUT_SECONDS", 60.0) * 1000),
        }
        for name, milliseconds in self.session_settings.items():
            if milliseconds < 0:
                raise RuntimeError(f"the worker's {name} must be >= 0 seconds (0 turns it off)")
        self.engine = engine
        self.emitter = emitter
        self.queue = worker_queue(settings["WORKER_QUEUE"])
        self.batch_size = settings["WORKER_BATCH_SIZE"]
        self.linger = settings["WORKER_BATCH_LINGER_MS"] / 1000.0
        self.throttle_seconds = settings["THROTTLE_SECONDS"]
        self.alert_rule = FailureAlertRule.from_config(settings)
        self.update_retention = settings["EVENT_RETENTION_SECONDS"]
        self.event_retention = settings["APPLIED_EVENT_RETENTION_SECONDS"]
        self.prune_every = min(PRUNE_SECONDS, max(self.update_retention / 4, 1.0))
        self.batch = []
        self.batch_started = 0.0
        self.batch_has_status = False
        self.last_batch_at = float("-inf")
        self.backlog = False  # reading_backlog
        self.next_due_check = 0.0
        self.next_prune = time.monotonic() + 1.0
        self.active_connection = None
        # Delivery tags received on this channel and not yet acknowledged, dead-lettered or
        # rejected: a cumulative ack is only used when none of them lies below it.
        self.unsettled = set()
        self.session = None
        self.locks = None
        self.throttle_summary = ThrottleSummary()
        self.stats = {"applied": 0, "duplicates": 0, "dead_lettered": 0, "emitted": 0, "merged": 0}

    # kombu hooks ---------------------------------------------------------------

    def get_consumers(self, Consumer, channel):
        """One consumer on the shared worker queue; raw bodies, we decode and validate."""
        dead_letter_queue(channel).declare()
        return [
            Consumer(
                queues=[self.queue],
                on_message=self.on_message,
                prefetch_count=self.batch_size * 2,
            )
        ]

    def on_consume_ready(self, connection, channel, consumers, **kwargs):
        """Remember the live connection (for heartbeats while waiting on the database)."""
        self.active_connection = connection
        read_ahead(connection.connection)
        self.health.ok("broker")
        log.info("[WORKER] consuming from %s", self.queue.name)

    def on_connection_revived(self):
        """Messages held from a lost connection come back by redelivery: drop them."""
        if self.batch:
            log.warning("[WORKER] dropping %d unacknowledged messages of a lost connection", len(self.batch))
        self.batch = []
        self.batch_has_status = False
        self.backlog = False
        self.unsettled = set()  # a new channel numbers its deliveries from 1 again

    def on_connection_error(self, exc, interval):
        """Log broker outages; kombu retries the connection (unless the worker was asked to stop)."""
        log.warning("[WORKER] broker unavailable (%s); retrying in %.1fs", exc, interval)
        self.health.fail("broker", f"{exc.__class__.__name__}: {str(exc)[:200]}")
        metrics.worker_retries.labels("broker_unavailable").inc()
        self.stop_if_asked()

    @contextlib.contextmanager
    def establish_connection(self):
        """kombu's ``ConsumerMixin.establish_connection``, but a stop request ends the wait for
        an unreachable broker within a second (plus the connect attempt in progress: up to
        kombu's connect timeout, 5 s by default, when the broker's packets are dropped).

        kombu retries the connection for as long as it takes (2, 4, 6, ... 30 s apart), and its
        loop looks at ``should_stop`` only once connected: told to stop during a broker outage,
        a worker went on retrying until it was killed (a supervisor's grace period; 15 s in
        tests/faults/test_broker_cut_after_commit.py). ``StopRequested`` leaves ``run()``;
        what the worker held unacknowledged is delivered again to another worker."""
        with self.create_connection() as conn:
            conn.ensure_connection(self.on_connection_error, self.connect_max_retries, callback=self.stop_if_asked)
            yield conn

    def on_dead_letter_retry(self, exc, interval):
        """Between two attempts to publish a dead letter: log, and give up when asked to stop
        (kombu's publish retries for as long as the broker is away, and never looks otherwise)."""
        log.warning("[WORKER] dead-lettering: broker unavailable (%s); retrying in %.1fs", exc, interval)
        self.stop_if_asked()

    def stop_if_asked(self):
        """Raise ``StopRequested`` when the worker was asked to stop."""
        if self.should_stop:
            raise StopRequested()

    def on_message(self, message):
        """Collect a message; ``on_iteration`` applies the batch."""
        if not self.batch:
            self.batch_started = time.monotonic()
        self.batch.append(message)
        self.unsettled.add(message.delivery_tag)
        if not self.batch_has_status:
            # The routing key is "<tenant>.<type>" (validated later); anything else counts as a status.
            kind = (message.delivery_info.get("routing_key") or "").rpartition(".")[2]
            self.batch_has_status = kind not in PROGRESS_EVENTS

    def on_iteration(self):
        """Apply the batch when it is due (``batch_due``); emit merged updates that fell due; prune."""
        now = time.monotonic()
        # Before a look for due updates, the batch in hand goes too: a campaign's merged update
        # must not leave without the event waiting here (its window would restart without it).
        if self.batch and (self.batch_due(now) or now >= self.next_due_check):
            self.last_batch_at = now
            try:
                self.process_batch()
            except StopRequested:
                # Asked to stop while a dead letter waited for the broker: kombu's loop sees
                # should_stop next and ends through on_consume_end (its flush, its cleanup),
                # which an exception leaving consume() would skip. The message stays unacked.
                return
            if self.backlog and not self.more_ready():
                self.backlog = False  # caught up
        if now >= self.next_due_check:
            more_due = self.run_task("emit_due_updates", self.emit_due_updates)
            if more_due is None:
                self.next_due_check = now + TASK_RETRY_SECONDS
            else:
                self.next_due_check = now if more_due else now + DUE_CHECK_SECONDS
        self.throttle_summary.maybe_log()
        if now >= self.next_prune:
            more = self.run_task("prune_history", self.prune_history)
            self.next_prune = now + (PRUNE_CHUNK_PAUSE_SECONDS if more else self.prune_every)

    def run_task(self, name, task):
        """Run a periodic task and return what it returns; None when it failed.

        The database's own failures are retried inside (``in_transaction``); what reaches
        here is anything else (a bug, a row PostgreSQL refuses). It must not stop the worker:
        it is logged, and the caller tries the task again later while the loop goes on
        applying events. A lost broker connection still goes to kombu.
        """
        try:
            return task()
        except BrokerLost:
            raise
        except StopRequested:
            return False
        except Exception as exc:
            log.exception("[WORKER] %s failed (%s); trying again later", name, describe(exc))
            metrics.worker_retries.labels("task_failed").inc()
            return None

    def batch_due(self, now):
        """True when the batch in hand should be applied now.

        - A full batch, or one that waited ``WORKER_BATCH_LINGER_MS``, goes.
        - A batch with a status event goes at once (a status is never throttled: each ms it
          waits here, the user waits), unless a backlog is being read (``reading_backlog``).
        - While the broker has more bytes ready, the batch keeps filling (a backlog is applied
          in large batches).
        - Then a batch with a status event goes (in a backlog, once nothing more is ready).
        - Progress events wait for more while the stream is steady (this batch began within the
          linger of the previous one): at 1,000 events/s that makes ~20 transactions a second
          instead of one per few events, and costs nothing the user sees, since progress is
          merged per THROTTLE_SECONDS anyway. A lone event after a quiet spell goes at once.
          (A progress event that sets or clears the failure alert waits like any progress: its
          update then goes at once, at most ``WORKER_BATCH_LINGER_MS`` plus one wait for the broker,
          ``DRAIN_TIMEOUT_SECONDS``, after the event.)
        """
        if len(self.batch) >= self.batch_size or now - self.batch_started >= self.linger:
            return True
        if self.batch_has_status and not self.reading_backlog():
            return True
        if self.more_ready():
            return False
        return self.batch_has_status or self.batch_started - self.last_batch_at >= self.linger

    def reading_backlog(self):
        """True from the moment the broker has sent at least ``BACKLOG_BYTES`` we have not read
        (the kernel's count, FIONREAD, plus what was read ahead and not parsed) until a batch
        is applied with nothing more ready (``on_iteration``); always on the demo's in-memory
        transport, whose backlog cannot be seen.

        Not the batches' sizes: with one status event in 50 events, each status ending its batch
        kept every batch of a 30,000-event backlog at ~33 events (975 events/s, where batches
        that fill made 2,349), and none went full to say it was a backlog. Nor the unread bytes
        alone: the socket's receive buffer holds 64-128 KB in a backlog, and one look in many
        below the threshold ended a batch (1,230 events/s)."""
        if not self.backlog:
            amqp = self.amqp_connection()
            sock = getattr(amqp, "sock", None)
            self.backlog = sock is None or (
                unread_bytes(sock) + buffered_bytes(amqp) >= backlog_threshold(sock)
            )
        return self.backlog

    def amqp_connection(self):
        """The py-amqp connection kombu consumes on (its ``sock`` is None on the demo's in-memory
        transport), or None before the first one and once it is lost (``Connection.connection``
        would then connect again quietly, without the consumer; see ``wait``)."""
        connection = self.active_connection
        return connection.connection if connection is not None and connection.connected else None

    def more_ready(self):
        """True when the broker has already sent bytes we have not read: keep filling the batch.

        Under load this makes batches as large as the backlog allows (few transactions); when
        the stream pauses, the batch is applied at once instead of waiting for the linger.
        """
        amqp = self.amqp_connection()
        sock = getattr(amqp, "sock", None)
        if sock is None:  # in-memory transport of the demo
            return True
        try:
            # Bytes read ahead may end inside a frame whose rest is still on its way: as bytes of
            # it in the kernel would, they count (the next read waits for the rest).
            if buffered_bytes(amqp) or tls_pending(sock) > 0:
                return True
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):
            return False

    def on_consume_end(self, connection, channel):
        """On a clean stop: finish the batch in hand and deliver every pending merged update."""
        try:
            if self.batch:
                # A stop while a dead letter waits for the broker (or the database fails): what is
                # not acknowledged comes back; the merged updates below go all the same.
                with contextlib.suppress(StopRequested):
                    self.process_batch()
            self.run_task("emit_due_updates", lambda: self.emit_due_updates(force=True))
        except StopRequested:
            pass
        finally:
            super().on_consume_end(connection, channel)
            self.close_database()

    # database ------------------------------------------------------------------

    def open_database(self):
        """A dedicated connection: advisory locks must be released on the one that took them.

        On PostgreSQL it gets ``lock_timeout`` (a tenant lock another worker does not give
        back) and ``statement_timeout`` (a statement that hangs): either ends in an error the
        worker backs off from and retries, instead of waiting forever. And, from PostgreSQL
        14, ``idle_session_timeout``: a worker that stops talking to the database while it
        holds tenant locks (frozen, cut off) loses its session, and with it the locks. A live
        worker is never idle that long (it looks for due updates every 100 ms).
        """
        if self.session is None:
            connection = self.engine.connect()
            try:
                if connection.dialect.name == "postgresql":
                    for name, milliseconds in self.session_settings.items():
                        if name == "idle_session_timeout" and connection.dialect.server_version_info < (14,):
                            continue
                        connection.exec_driver_sql(f"SET SESSION {name} = {int(milliseconds)}")
                    connection.commit()  # a SET in a transaction that rolls back would be undone
            except Exception:
                connection.invalidate()
                connection.close()
                raise
            self.session = Session(bind=connection, expire_on_commit=False)
            self.locks = TenantLocks(self.session)
        return self.session

    def close_database(self):
        """Drop the database connection (after an error, or at the end)."""
        if self.session is None:
            return
        connection = self.session.get_bind()
        try:
            self.session.close()
            # Never hand a connection that may still hold advisory locks back to the pool.
            connection.invalidate()
            connection.close()
        except Exception:  # noqa: BLE001 - the connection is being thrown away anyway
            log.debug("[WORKER] error while closing the database connection", exc_info=True)
        self.session = None
        self.locks = None

    def in_transaction(self, work, retry=True):
        """Run ``work(session)`` and commit; on a failure the event cannot have caused, back off and retry.

        Nothing is acknowledged meanwhile: a database that is down, read-only, behind the
        code's schema or slow costs time, never an event. The connection is dropped on every
        failure (with it any advisory lock, and a session setting such as a read-only default
        that a failover left). An error that may be the event's is raised to the caller, as
        is every error when ``retry`` is False.
        """
        delay = 0.25
        while True:
            opened = False
            try:
                session = self.open_database()
                opened = True
                result = work(session)
                session.commit()
                self.health.ok("database")
                return result
            except Exception as exc:
                self.close_database()
                # Opening the session involves no event: whatever fails there is the environment's.
                if (opened and caused_by_event(exc)) or not retry:
                    raise
                reason = retry_reason(exc)
                metrics.worker_retries.labels(reason).inc()
                self.health.fail("database", f"{reason}: {describe(exc)}")
                log.warning(
                    "[WORKER] database failed (%s: %s); nothing acknowledged, retrying in %.1fs",
                    reason,
                    describe(exc),
                    delay,
                )
                self.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def wait(self, seconds):
        """Sleep, keeping the AMQP connection alive, and give up early when asked to stop.

        A broker connection that is lost raises ``BrokerLost`` (one of kombu's ``connection_errors``),
        and kombu's loop connects and consumes again; nothing was acknowledged meanwhile. Swallowed, a failed
        heartbeat left the connection marked down, and kombu's next look at ``Connection.connection``
        reconnected quietly, without the consumer: the worker drained an empty connection for good.
        """
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.stop_if_asked()
            connection = self.active_connection
            if connection is not None:
                if not connection.connected:
                    raise BrokerLost("the broker connection was lost while the worker waited")
                # The demo's in-memory transport has no heartbeat (and cannot be lost).
                send_heartbeat = getattr(connection.connection, "send_heartbeat", None)
                try:
                    if send_heartbeat is not None:
                        send_heartbeat()
                except self.connection.connection_errors as exc:
                    raise BrokerLost(f"the broker connection failed its heartbeat: {exc!r}") from exc
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))

    def release_locks(self):
        """Release the tenant locks after emitting; a failure here only delays other workers."""
        if self.locks is None:
            return
        try:
            self.locks.release()
        except Exception as exc:  # noqa: BLE001
            log.warning("[WORKER] could not release tenant locks (%s); reconnecting", exc)
            self.close_database()

    # the work ------------------------------------------------------------------

    def process_batch(self):
        """Validate, apply, commit, acknowledge, emit (in that order) the messages in hand."""
        messages, self.batch = self.batch, []
        self.batch_has_status = False
        received = self.batch_started
        metrics.batch_size.observe(len(messages))
        pairs = []
        for message in messages:
            try:
                event = parse_event(message.body, message.delivery_info.get("routing_key"))
            except InvalidEvent as exc:
                self.dead_letter(message, exc.reason)
                continue
            except Exception as exc:  # a validation bug must not stop the worker
                log.exception("[WORKER] unexpected error while validating a message")
                self.dead_letter(message, f"invalid_message: {exc.__class__.__name__}")
                continue
            pairs.append((event, message))
        for group in self.status_first(pairs):
            if not self.apply_pairs(group, received):
                return

    def status_first(self, pairs):
        """The batch's ``(event, message)`` pairs as the groups to apply, one transaction each, in order.

        A batch that holds a status event (and is not part of a backlog being read) goes as two:
        first the events of the campaigns with a status event, in their order, then the rest. The
        status update then waits for a transaction of a few events instead of the ~50 that arrive
        between two status events at 1,000 events/s (each ~0.2 ms of the worker's CPU). Only the
        order between campaigns changes: a campaign's events stay together and in order, and each
        event is applied once, in one of the two. Small rests are not worth a transaction.
        """
        if self.backlog:
            return [pairs]
        urgent = {(event.tenant_id, event.campaign_id) for event, _ in pairs if event.type not in PROGRESS_EVENTS}
        first, rest = [], []
        for pair in pairs:
            (first if (pair[0].tenant_id, pair[0].campaign_id) in urgent else rest).append(pair)
        if not first or len(rest) < STATUS_FIRST_MIN_REST:
            return [pairs]
        return [first, rest]

    def apply_pairs(self, pairs, received):
        """Apply, commit, acknowledge and emit one group of the batch; False when asked to stop."""
        try:
            result = self.in_transaction(
                lambda session: apply_batch(
                    session, [event for event, _ in pairs], utcnow(), self.throttle_seconds, self.locks, self.alert_rule
                )
            )
        except StopRequested:
            return False  # nothing acknowledged: the broker redelivers these to the next worker
        except BrokerLost:
            raise  # lost while waiting on the database: kombu reconnects, nothing acked
        except Exception as exc:
            log.warning("[WORKER] batch of %d failed (%s); applying one by one", len(pairs), describe(exc))
            self.release_locks()
            # Stop at the first event left unapplied: a later event of its campaign must not commit
            # before it (it comes back by redelivery, and so do the ones after it).
            return all(self.process_alone(*pair) for pair in pairs)
        self.after_commit(pairs, result)
        if result.updates:
            metrics.receive_to_emit.observe(metrics.since(received))
        return True

    def process_alone(self, event, message):
        """Apply one event in its own transaction; dead-letter it only if it fails by its own fault.

        False when asked to stop first (the event is left unacknowledged)."""
        try:
            result = self.in_transaction(
                lambda session: apply_batch(
                    session, [event], utcnow(), self.throttle_seconds, self.locks, self.alert_rule
                )
            )
        except StopRequested:
            return False
        except BrokerLost:
            raise  # the broker's, never the event's: not a dead letter
        except Exception as exc:
            self.release_locks()
            log.exception("[WORKER] event %s cannot be applied", event.event_id)
            self.dead_letter(message, f"apply_failed: {exc.__class__.__name__}")
            return True
        self.after_commit([(event, message)], result)
        return True

    def after_commit(self, pairs, result):
        """Acknowledge a committed batch, emit its updates, give the tenant locks back, then
        dead-letter its events of unknown tenants.

        The emit and the release happen whatever fails before them: a broker connection
        lost at the ack leaves the locks held on our database session otherwise (other
        workers would wait on those tenants for good) and the committed updates unsent. The
        messages come back by redelivery and are then counted as duplicates. Dead letters
        come after the release: publishing one waits for the broker as long as it takes,
        and no tenant lock must be held meanwhile.
        """
        unknown = {event.tenant_id for event in result.unknown_tenant}
        try:
            self.acknowledge([message for event, message in pairs if event.tenant_id not in unknown])
        except Exception as exc:
            log.warning(
                "[WORKER] broker connection lost after committing %d events (%s); emitting, releasing the "
                "tenant locks, reconnecting (the broker redelivers them: duplicates, applied once)",
                len(result.applied),
                describe(exc),
            )
            metrics.worker_retries.labels("broker_lost_after_commit").inc()
            raise
        finally:
            try:
                self.emit_under_locks(result.updates)
            finally:
                self.release_locks()
            self.record(result)  # committed, acknowledged or not; after the release, whatever it raises
        for event, message in pairs:
            if event.tenant_id in unknown:
                self.dead_letter(message, f"unknown_tenant: {event.tenant_id}")

    def emit_under_locks(self, updates):
        """Emit updates only while our session, and so the tenant locks, still exists.

        A worker frozen or cut off after its commit may have lost its session (PostgreSQL's
        ``idle_session_timeout``, an operator): another worker has then taken the tenants
        over and emitted later ``seq`` numbers. Emitting ours now would send a tenant's live
        updates out of order; they are stored, so clients get them by replay instead. One
        round trip (outside a transaction), only when there is something to emit.
        """
        if not updates:
            return
        if self.locks is not None and self.locks.enabled and self.locks.held:
            try:
                self.locks.confirm_held()
            except Exception as exc:  # noqa: BLE001 - any failure: the session, and the locks, may be gone
                log.warning(
                    "[WORKER] database session lost before emitting %d updates (%s); not emitting them out of "
                    "order: they are stored, clients replay them",
                    len(updates),
                    describe(exc),
                )
                return
        self.emit(updates)

    def acknowledge(self, messages):
        """Acknowledge applied messages: on AMQP one cumulative ack up to the newest one.

        It is used only when no other unsettled delivery of this channel has a lower tag
        (normally the batch holds everything received so far); otherwise, and on the demo's
        in-memory transport, which has no cumulative ack, each message is acked alone.
        """
        if not messages:
            return
        tags = {message.delivery_tag for message in messages}
        newest = max(messages, key=lambda message: message.delivery_tag)
        others = self.unsettled - tags
        if self.connection.transport.driver_type == "amqp" and not any(t < newest.delivery_tag for t in others):
            newest.ack(multiple=True)
        else:
            for message in messages:
                message.ack()
        self.unsettled -= tags

    def record(self, result):
        """Count what a batch did and log the throttle decisions."""
        self.stats["applied"] += len(result.applied)
        self.stats["duplicates"] += result.duplicates
        self.stats["merged"] += result.merged
        for event in result.applied:
            metrics.events_applied.labels(event.type).inc()
        metrics.events_duplicate.inc(result.duplicates)
        metrics.updates_merged.inc(result.merged)
        metrics.failure_alerts_raised.inc(result.alerts_raised)
        self.throttle_summary.add(result.throttled)

    def dead_letter(self, message, reason):
        """Move a bad message to the dead-letter queue with its reason, then acknowledge it.

        If even that fails for another reason than the broker connection, the message is
        rejected, so that RabbitMQ moves it there itself (queue argument, without our header).
        """
        routing_key = message.delivery_info.get("routing_key", "")
        headers = dict(message.headers or {})
        headers.update(
            {
                REJECTION_HEADER: reason,
                "x-original-routing-key": routing_key,
                "x-original-exchange": message.delivery_info.get("exchange", ""),
                "x-rejected-at": utcnow().isoformat(),
            }
        )
        body = message.body if isinstance(message.body, bytes) else message.body.encode("utf-8", "surrogatepass")
        try:
            self.producer.publish(
                body,
                exchange="",
                routing_key=DEAD_LETTER_QUEUE,
                headers=headers,
                delivery_mode=2,
                content_type=message.content_type or "application/octet-stream",
                content_encoding="binary",
                retry=True,
                retry_policy={"max_retries": None, "interval_start": 0.5, "interval_max": 5,
                              "errback": self.on_dead_letter_retry},
            )
        except (StopRequested, *self.connection.connection_errors):
            raise  # unacknowledged, the message is delivered again
        except Exception:
            log.exception("[WORKER] could not dead-letter a message (%s); rejecting it instead", reason)
            message.reject(requeue=False)
        else:
            message.ack()
        self.unsettled.discard(message.delivery_tag)
        self.stats["dead_lettered"] += 1
        metrics.dead_lettered.labels(metrics.reason_code(reason)).inc()
        log.warning("[WORKER] dead-lettered message (routing key %r): %s", routing_key[:100], reason)

    def emit_due_updates(self, force=False):
        """Emit merged updates whose throttle window has ended, ``DUE_BATCH`` per transaction.

        Between two chunks, when the broker has bytes waiting, it returns True (more may be
        due) so that the loop reads them first: a status event is not queued behind hundreds of
        merged updates that fell due together (campaigns whose windows opened in one batch stay
        aligned). ``force`` (at shutdown) emits every pending one, for at most
        ``THROTTLE_SECONDS``: while other workers keep applying events, windows keep opening,
        and what is left is theirs to deliver (the state is in the database).
        """
        deadline = time.monotonic() + self.throttle_seconds
        while True:
            try:
                updates = self.in_transaction(lambda session: flush_due_updates(session, utcnow(), self.locks, force))
            except StopRequested:
                return False
            try:
                self.emit_under_locks(updates)
            finally:
                self.release_locks()
            if len(updates) < DUE_BATCH:
                return False
            if force:
                if time.monotonic() >= deadline:
                    return False
            elif self.more_ready():
                return True

    def prune_history(self):
        """Delete one chunk of history past its retention; True when more is left.

        A failure is tried again at the next prune, not retried here: pruning can wait.
        """
        try:
            counts = self.in_transaction(
                lambda session: prune(session, utcnow(), self.update_retention, self.event_retention), retry=False
            )
        except StopRequested:
            return False
        if any(counts.values()):
            log.info("[WORKER] pruned %(campaign_updates)d updates and %(applied_events)d events", counts)
        return max(counts.values()) >= PRUNE_CHUNK

    def emit(self, updates):
        """Send stored updates to their tenants' rooms (at most once; replay covers losses)."""
        for payload in updates:
            campaign = payload["campaign"]
            level = logging.INFO if payload["type"].startswith("campaign_") else logging.DEBUG
            log.log(
                level,
                '[WEBSOCKET] sending %s for campaign "%s" (seq %d)',
                payload["type"],
                campaign["name"],
                payload["seq"],
            )
            try:
                self.emitter.emit(UPDATE_EVENT, payload, to=tenant_room(campaign["tenant_id"]))
            except Exception:  # noqa: BLE001 - stored, so clients replay it; the loop must go on
                log.exception("[WORKER] could not emit seq %d", payload["seq"])
                continue
            metrics.updates_emitted.labels(payload["type"]).inc()
        self.stats["emitted"] += len(updates)
