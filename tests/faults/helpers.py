"""Tools of the fault-injection tests: a ledger of confirmed publishes, a paced publisher,
exact checks against PostgreSQL, a TCP proxy that cuts the database, a private RabbitMQ
node, and a Socket.IO client that keeps a tenant's updates in ``seq`` order.

Everything here drives real processes and services; nothing is mocked. Each test prints
what it measured as one line ``FAULT-RESULT {json}`` (``pytest -s`` shows them).
"""

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, deque
from pathlib import Path

import socketio
from engineio import packet as engineio_packet
from kombu import Connection
from socketio import packet as socketio_packet

from campaigns.publisher import EventPublisher
from tests import support
from tests.support import event, wait_until

RESULT_PREFIX = "FAULT-RESULT"
PROGRESS_TYPES = ("message_sent", "message_failed", "next_message_starting")


def report(fault, **numbers):
    """Print one ``FAULT-RESULT {json}`` line (seconds rounded to milliseconds)."""
    print(f"{RESULT_PREFIX} {json.dumps({'fault': fault, **_rounded(numbers)})}", flush=True)


def report_outcome(fault, result, **numbers):
    """``report`` of a fault with the counts of an ``outcome`` (published, applied, lost, duplicated) first."""
    counts = {key: result[key] for key in ("published", "applied", "lost", "duplicated")}
    report(fault, **counts, **numbers)


def _rounded(value):
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


# What was published ----------------------------------------------------------------------


class Ledger:
    """The events a test counts as published (confirmed by the broker), by ``(tenant, event_id)``."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events = {}

    def add(self, item):
        with self.lock:
            self.events[(item["tenant_id"], item["event_id"])] = item

    def __len__(self):
        with self.lock:
            return len(self.events)

    def snapshot(self):
        with self.lock:
            return dict(self.events)

    def expected(self):
        """``{(tenant, campaign): {"sent", "failed", "version"}}`` from what was published."""
        result = {}
        for item in self.snapshot().values():
            counts = result.setdefault((item["tenant_id"], item["campaign_id"]), {"sent": 0, "failed": 0, "version": 0})
            counts["version"] += 1
            if item["type"] == "message_sent":
                counts["sent"] += 1
            elif item["type"] == "message_failed":
                counts["failed"] += 1
        return result


def started(tenant_id, campaign_id, total, name=None):
    """A ``campaign_started`` event."""
    name = name or f"Campaign {campaign_id}"
    return event(tenant_id, campaign_id, "campaign_started", name=name, total_messages=total)


def progress_events(campaigns, seed, count=None, failed_share=0.1, start=True):
    """``campaign_started`` for each ``(tenant, campaign)``, then sent/failed messages at random.

    Endless unless ``count`` (progress events, after the starts) is given.
    """
    rng = random.Random(seed)
    if start:
        for tenant_id, campaign_id in campaigns:
            yield started(tenant_id, campaign_id, 10**6)
    number = 0
    while count is None or number < count:
        number += 1
        tenant_id, campaign_id = rng.choice(campaigns)
        if rng.random() < failed_share:
            yield event(tenant_id, campaign_id, "message_failed", message_id=f"m-{number}", error="fault test")
        else:
            yield event(tenant_id, campaign_id, "message_sent", message_id=f"m-{number}")


def mixed_events(campaigns, seed, status_share=0.03):
    """Like ``progress_events`` (endless), with ``next_message_starting`` and pause/resume flips."""
    rng = random.Random(seed)
    for tenant_id, campaign_id in campaigns:
        yield started(tenant_id, campaign_id, 10**6)
    paused = dict.fromkeys(campaigns, False)
    number = 0
    while True:
        number += 1
        key = rng.choice(campaigns)
        tenant_id, campaign_id = key
        draw = rng.random()
        if draw < status_share:
            paused[key] = not paused[key]
            yield event(tenant_id, campaign_id, "campaign_paused" if paused[key] else "campaign_resumed")
        elif draw < 0.15:
            yield event(tenant_id, campaign_id, "next_message_starting", message_id=f"m-{number}", position=number)
        elif draw < 0.25:
            yield event(tenant_id, campaign_id, "message_failed", message_id=f"m-{number}", error="fault test")
        else:
            yield event(tenant_id, campaign_id, "message_sent", message_id=f"m-{number}")


class StreamPublisher(threading.Thread):
    """Publishes events at about ``rate`` per second with publisher confirms.

    An event counts as published (goes into the ledger) only once the broker confirmed it;
    a publish that fails is retried with the same event (same ``event_id``) on a fresh
    connection, so a producer retry can only duplicate, never lose. ``stop()`` finishes the
    event in hand first.
    """

    def __init__(self, broker_url, events, rate, ledger, name="stream"):
        super().__init__(name=name, daemon=True)
        self.broker_url = broker_url
        self.events = iter(events)
        self.interval = 1.0 / rate
        self.ledger = ledger
        self.stopping = threading.Event()
        self.errors = []
        self.confirmed = 0
        self.confirmations = []  # (monotonic time of the confirm, (tenant_id, event_id))
        self.failure = None

    def run(self):
        publisher = None
        next_at = time.monotonic()
        try:
            for item in self.events:
                pause = next_at - time.monotonic()
                # Pacing (the rate), interruptible by stop(); not a wait for a condition.
                if self.stopping.wait(max(pause, 0)) or self.stopping.is_set():
                    break
                next_at = max(next_at + self.interval, time.monotonic() - 1.0)
                publisher = self._publish(publisher, item)
                self.ledger.add(item)
                self.confirmed += 1
                self.confirmations.append((time.monotonic(), (item["tenant_id"], item["event_id"])))
        except Exception as exc:  # noqa: BLE001 - reported by stop()
            self.failure = exc
        finally:
            if publisher is not None:
                with contextlib.suppress(Exception):
                    publisher.close()

    def _publish(self, publisher, item):
        """Publish one event until the broker confirms it (a minute at most); return the publisher."""
        held = [publisher]

        def confirmed():
            try:
                if held[0] is None:
                    held[0] = EventPublisher(self.broker_url, confirm=True)
                held[0].publish(item)
                return True
            except Exception as exc:  # noqa: BLE001 - any failure: retry the same event on a new connection
                self.errors.append(f"{exc.__class__.__name__}: {str(exc)[:120]}")
                if held[0] is not None:
                    with contextlib.suppress(Exception):
                        held[0].close()
                held[0] = None
                return False

        wait_until(confirmed, 60, 0.2, "the broker to confirm an event")
        return held[0]

    def confirmations_after(self, moment):
        """Keys of the events confirmed after ``moment``, in order."""
        return [key for at, key in list(self.confirmations) if at > moment]

    def first_confirmed_after(self, moment):
        """The key of the first event confirmed after ``moment``, or None."""
        return next(iter(self.confirmations_after(moment)), None)

    def stop(self, timeout=90):
        """Stop after the event in hand; fail if publishing broke."""
        self.stopping.set()
        self.join(timeout)
        assert not self.is_alive(), f"{self.name}: the publisher did not stop"
        if self.failure is not None:
            raise AssertionError(f"{self.name}: publishing failed: {self.failure!r}; errors {self.errors[-5:]}")


# Exact checks against PostgreSQL -----------------------------------------------------------


def is_applied(stack, key):
    """True when the event ``(tenant_id, event_id)`` is in ``applied_events``."""
    return bool(stack.sql("SELECT 1 FROM applied_events WHERE tenant_id = %s AND event_id = %s", key))


def applied_count(stack, tenants=None):
    """Rows of ``applied_events`` (of some tenants only, if given), read on the database directly."""
    if tenants is None:
        return stack.sql("SELECT count(*) FROM applied_events")[0][0]
    return stack.sql("SELECT count(*) FROM applied_events WHERE tenant_id = ANY(%s)", (list(tenants),))[0][0]


def last_seqs(stack):
    """``{tenant_id: last_seq}``."""
    return dict(stack.sql("SELECT id, last_seq FROM tenants"))


def stored_updates(stack, tenant_id):
    """A tenant's stored ``campaign_update`` payloads in ``seq`` order."""
    rows = stack.sql("SELECT payload FROM campaign_updates WHERE tenant_id = %s ORDER BY seq", (tenant_id,))
    return [row[0] for row in rows]


def wait_applied(stack, count, timeout, message="every event to be applied", tenants=None):
    """Wait until ``applied_events`` holds ``count`` rows; return when that happened (monotonic)."""
    wait_until(lambda: applied_count(stack, tenants) >= count, timeout, 0.05, message)
    return time.monotonic()


def complete_campaigns(stack, campaigns, ledger, timeout, tenants=None):
    """Publish ``campaign_completed`` for each ``(tenant, campaign)``, note it in the ledger,
    and wait until every event of the ledger is applied."""
    with stack.publisher() as publisher:
        for tenant, campaign in campaigns:
            done = event(tenant, campaign, "campaign_completed")
            publisher.publish(done)
            ledger.add(done)
    wait_applied(stack, len(ledger), timeout, tenants=tenants)


def completed_outcome(stack, campaigns, ledger, client, tenant):
    """Complete the campaigns, wait until every event is applied and ``client`` has every update
    of ``tenant``; then the ``outcome``."""
    complete_campaigns(stack, campaigns, ledger, 60)
    client.wait_caught_up(last_seqs(stack)[tenant], 30)
    return outcome(stack, ledger)


def outcome(stack, ledger, tenants=None):
    """Compare the database with the ledger: counts, losses, double applies, mismatches.

    With ``tenants``, only those tenants' rows are looked at (a database shared by a module).
    """
    published = ledger.snapshot()
    rows = stack.sql("SELECT tenant_id, event_id, campaign_id FROM applied_events")
    rows = [row for row in rows if tenants is None or row[0] in tenants]
    applied = {(tenant_id, event_id) for tenant_id, event_id, _ in rows}
    per_campaign = Counter((tenant_id, campaign_id) for tenant_id, _, campaign_id in rows)
    campaigns = {
        (tenant_id, campaign_id): {"sent": sent, "failed": failed, "version": version}
        for tenant_id, campaign_id, sent, failed, version in stack.sql(
            "SELECT tenant_id, id, sent, failed, version FROM campaigns"
        )
        if tenants is None or tenant_id in tenants
    }
    expected = ledger.expected()
    mismatches = {
        f"{key[0]}/{key[1]}": {"expected": want, "found": campaigns.get(key)}
        for key, want in expected.items()
        if campaigns.get(key) != want
    }
    duplicated = sum(max(state["version"] - per_campaign[key], 0) for key, state in campaigns.items())
    return {
        "published": len(published),
        "applied": len(applied & published.keys()),
        "lost": len(published.keys() - applied),
        "duplicated": duplicated,
        "unexpected": len(applied - published.keys()),
        "mismatches": mismatches,
    }


def assert_exact(result):
    """Nothing lost, nothing applied twice, nothing unexpected, every campaign's counters exact."""
    assert result["lost"] == 0, result
    assert result["duplicated"] == 0, result
    assert result["unexpected"] == 0, result
    assert result["mismatches"] == {}, result["mismatches"]
    assert result["applied"] == result["published"], result


# RabbitMQ inspection -----------------------------------------------------------------------


def queue_state(broker_url, name):
    """``(messages ready, consumers)`` of a queue (passive declare: exact and immediate)."""
    with Connection(broker_url) as connection:
        channel = connection.channel()
        try:
            answer = channel.queue_declare(queue=name, passive=True)
            return answer.message_count, answer.consumer_count
        finally:
            channel.close()


def queue_ready(broker_url, name):
    """Messages ready in a queue."""
    return queue_state(broker_url, name)[0]


# HTTP ---------------------------------------------------------------------------------


def http_get(url, timeout=5):
    """``(status, json body or None)`` of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body or b"null")
        except ValueError:
            return exc.code, None


def worker_probe(port, path="/readyz"):
    """``(status, JSON body)`` of a worker's HTTP port (WORKER_METRICS_PORT); ``(None, None)``
    when it does not answer or the answer is not JSON."""
    try:
        return http_get(f"http://127.0.0.1:{port}{path}", timeout=2)
    except (OSError, ValueError):
        return None, None


def worker_metrics(port):
    """The Prometheus text of a worker's metrics port ("" when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            return answer.read().decode()
    except OSError:
        return ""


# A TCP proxy in front of PostgreSQL ----------------------------------------------------------


class TcpProxy:
    """Forwards a local port to ``upstream``; ``cut()`` drops every connection and refuses new ones.

    ``cut()`` closes the listening socket (new connections are refused) and shuts both
    sides of every forwarded connection down (the client sees the server go away, the
    server sees its client go away and ends its backend); ``cut(reset=True)`` resets the
    client sides instead (a TCP RST: the client's next write fails at once, as after a
    network failure, where a FIN would let one more write through); ``restore()`` listens
    again on the same port. ``on_client_data(pair, data)`` sees the client's bytes before
    they are forwarded (``CommitTrigger`` uses it).
    """

    def __init__(self, upstream_host, upstream_port, on_client_data=None):
        self.upstream = (upstream_host, upstream_port)
        # Called with (connection pair, bytes) before the client's bytes are forwarded.
        self.on_client_data = on_client_data
        self.lock = threading.Lock()
        self.pairs = set()
        self.pumps = {}  # pair -> its two pump threads
        self.listener = None
        self.port = 0
        self.accepted = 0
        self.threads = []

    def start(self):
        self._listen()
        return self

    @property
    def url_host(self):
        return f"127.0.0.1:{self.port}"

    def _listen(self):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

        def bound():
            try:
                listener.bind(("127.0.0.1", self.port))
                return True
            except OSError:  # the old socket of this port is still closing
                return False

        try:
            wait_until(bound, 10, 0.05, f"port {self.port} to be free")
        except AssertionError:
            listener.close()
            raise
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self.listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), name="proxy-accept", daemon=True)
        thread.start()
        self.threads.append(thread)

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was shut down by cut() or close()
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            pair = (client, upstream)
            with self.lock:
                if self.listener is not listener:
                    _shut(client)
                    _shut(upstream)
                    continue
                self.pairs.add(pair)
                self.accepted += 1
                pumps = self.pumps[pair] = [
                    threading.Thread(target=self._pump, args=(source, target, pair), daemon=True)
                    for source, target in ((client, upstream), (upstream, client))
                ]
                for pump in pumps:  # started before cut() can see them
                    pump.start()

    def _pump(self, source, target, pair):
        inspect = self.on_client_data if source is pair[0] else None
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if inspect is not None:
                    inspect(pair, data)
                target.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.pairs.discard(pair)
                self.pumps.pop(pair, None)
            _shut(source)
            _shut(target)

    def cut(self, reset=False):
        """Refuse new connections and drop the current ones (with a TCP reset to the clients if ``reset``)."""
        with self.lock:
            listener, self.listener = self.listener, None
            pairs, self.pairs = list(self.pairs), set()
            pumps = [pump for pair in pairs for pump in self.pumps.get(pair, ())]
        if listener is not None:
            _shut(listener)
        for client, upstream in pairs:
            if reset:
                _reset(client)
            _shut(client)
            _shut(upstream)
        if reset:
            # The kernel sends the RST when the last use of the socket ends, and a pump may still
            # be inside recv() on it: once the pumps are gone, the client has its reset.
            for pump in pumps:
                if pump is not threading.current_thread():
                    pump.join(5)
        return len(pairs)

    def restore(self):
        """Listen again on the same port."""
        if self.listener is None:
            self._listen()

    def close(self):
        self.cut()
        for thread in self.threads:
            thread.join(5)


def _shut(sock):
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _reset(sock):
    """Close with SO_LINGER 0: the peer gets a RST, not a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Wakes the pump blocked in recv() on it (a close() alone would not, and the socket would
        # only go when that recv() ends); SHUT_RD sends nothing to the peer.
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


class CommitTrigger:
    """Runs ``action`` once, when armed, just before a worker's batch COMMIT reaches PostgreSQL.

    Fed the bytes a worker sends through a ``TcpProxy`` in front of PostgreSQL: a batch
    transaction is one that inserted into ``applied_events`` (campaigns/ingest.py); its
    ``COMMIT`` (a simple-query message, as psycopg2 sends it) is held until ``action`` has
    run, so whatever ``action`` breaks is broken when the worker's commit returns.
    """

    BATCH_MARK = b"INSERT INTO applied_events"
    COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"
    ROLLBACK = b"Q\x00\x00\x00\x0dROLLBACK\x00"

    def __init__(self, action):
        self.action = action
        self.lock = threading.Lock()
        self.armed = False
        self.fired_at = None
        self.in_batch = set()

    def arm(self):
        with self.lock:
            self.armed = True

    def inspect(self, pair, data):
        """The ``TcpProxy.on_client_data`` hook."""
        with self.lock:
            if self.BATCH_MARK in data:
                self.in_batch.add(pair)
            if data.startswith((self.COMMIT, self.ROLLBACK)):
                batch = pair in self.in_batch
                self.in_batch.discard(pair)
                if batch and self.armed and data.startswith(self.COMMIT):
                    self.armed = False
                    self.action()
                    self.fired_at = time.monotonic()


# A private RabbitMQ node ---------------------------------------------------------------------


def _rabbit_script(name):
    """The real RabbitMQ script (not Debian's wrapper, which switches to the rabbitmq user)."""
    direct = Path("/usr/lib/rabbitmq/bin") / name
    if direct.exists():
        return str(direct)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"{name} is not installed: the broker-restart test starts a private RabbitMQ node "
            "(install the rabbitmq-server package, as scripts/services.sh does)"
        )
    return found


class PrivateBroker:
    """A RabbitMQ node of its own (own name, ports, data, logs, cookie) that a test may stop.

    Started as a child process (``rabbitmq-server`` in its own session), controlled with
    ``rabbitmqctl -n <node>``, stopped with ``rabbitmqctl stop`` and, failing that, by
    killing its process group. The shared broker is never touched.
    """

    def __init__(self, base_dir):
        self.base = Path(base_dir)
        self.base.mkdir(parents=True, exist_ok=True)
        self.node = f"cltest-{uuid.uuid4().hex[:10]}@localhost"
        self.port = support.free_port()
        self.dist_port = support.free_port()
        while self.dist_port == self.port:
            self.dist_port = support.free_port()
        self.popen = None
        self.log_file = None
        self.log_path = self.base / "rabbitmq.log"

    def env(self):
        base = self.base
        return {
            **os.environ,
            # The CLI and the node find the same Erlang cookie in this HOME.
            "HOME": str(base),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self, timeout=180):
        """Start the node and wait until it accepts AMQP connections."""
        (self.base / "enabled_plugins").write_text("[].\n")
        # Not the machine's /etc/rabbitmq/rabbitmq.conf: that one listens on the shared port.
        (self.base / "rabbitmq.conf").write_text("loopback_users.guest = true\n")
        (self.base / "rabbitmq-env.conf").write_text("")
        cookie = self.base / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(uuid.uuid4().hex.upper())
            cookie.chmod(0o400)
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [_rabbit_script("rabbitmq-server")],
            cwd=self.base,
            env=self.env(),
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # The AMQP port opens at the end of the boot; polling it is cheap, while every rabbitmqctl
        # call starts an Erlang VM that would take CPU from the booting node.
        wait_until(self._listening, timeout, 0.2, f"private RabbitMQ node {self.node}\n{self.log()[-3000:]}")
        self.ctl("await_startup", "--timeout", "60")
        return self

    def _listening(self):
        if self.popen.poll() is not None:
            raise AssertionError(f"rabbitmq-server exited with {self.popen.returncode}:\n{self.log()[-3000:]}")
        return self.accepts()

    def accepts(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def ctl(self, *args, check=True, timeout=90):
        """``rabbitmqctl -n <node> ...`` for this node."""
        completed = subprocess.run(
            [_rabbit_script("rabbitmqctl"), "-q", "-n", self.node, *args],
            env=self.env(),
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and completed.returncode != 0:
            raise AssertionError(f"rabbitmqctl {' '.join(args)} failed: {completed.stdout}{completed.stderr}")
        return completed

    def add_vhost(self):
        name = f"cl_test_{uuid.uuid4().hex[:12]}"
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return name

    def url(self, vhost):
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{urllib.request.quote(vhost, safe='')}"

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self):
        """``rabbitmqctl stop``; kill the node's process group if it does not go."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(Exception):
                self.ctl("stop", check=False, timeout=60)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(30)
        with contextlib.suppress(ProcessLookupError):
            # The session started for this node: rabbitmq-server's shell and its beam.smp.
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        if self.log_file is not None:
            self.log_file.close()


# A Socket.IO client that keeps a tenant's updates in seq order ------------------------------------


class _ListHandler(logging.Handler):
    """Keeps a client's log lines (but not the per-packet ones) for failure messages."""

    def __init__(self, lines):
        super().__init__()
        self.lines = lines

    def emit(self, record):
        if str(record.msg).startswith(("Sending packet", "Received packet", "Received event", "Emitting event")):
            return
        self.lines.append(f"{time.monotonic():.3f} {record.threadName} {record.getMessage()[:300]}")


class SeqClient:
    """Applies a tenant's ``campaign_update``s strictly in ``seq`` order, as a real client would.

    An update with ``seq`` beyond the next expected one is held and the gap is asked for
    with the ``replay`` event; a ``seq`` already applied is ignored. After an unexpected
    disconnect it reconnects by itself with ``auth.last_seq`` = the highest contiguous
    ``seq`` applied, so the server replays what was missed. ``url`` may be a callable (the
    server to reconnect to).

    Two things of the Python client library are worked around here. Its Engine.IO layer
    hands every message to a thread of its own, so handlers may run out of wire order:
    updates are taken off the wire in the read loop instead (``arrivals`` is the order they
    came in). And its reconnect waits only 1 s for the namespace to connect, while the
    server answers the connect after sending the snapshot and the replay: the reconnection
    is ours, with a longer wait. An attempt that hangs (the library then waits forever for a
    read loop on a connection the server never answers) is abandoned with its library client,
    and the next attempt uses a fresh one, as a client with a connect timeout does.
    """

    ATTEMPT_TIMEOUT = 12.0

    def __init__(self, url, token, transports=("websocket",), name="client", last_seq=None):
        self.name = name
        self.token = token
        self.url = url
        self.transports = list(transports)
        self.log = deque(maxlen=60)
        self.logger = logging.getLogger(f"tests.faults.client.{name}.{uuid.uuid4().hex[:6]}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(_ListHandler(self.log))
        self.lock = threading.RLock()
        self.contiguous = last_seq
        self.base = last_seq
        self.held = {}
        self.applied = []
        self.arrivals = []  # (connection number, seq, replayed, monotonic time), in wire order
        self.snapshots = []
        self.resyncs = []
        self.connects = []
        self.disconnects = []
        self.reconnect_errors = []
        self.handler_errors = []
        self.duplicates = 0
        self.replay_requests = 0
        self.last_request = 0.0
        self.closing = threading.Event()  # set by close(): ends the reconnect backoff at once
        self.reconnector = None
        self.abandoned = 0
        self.sio = self._new_sio()

    def _new_sio(self):
        """A python-socketio client wired to this one (events of an abandoned one are ignored)."""
        sio = socketio.Client(reconnection=False, logger=self.logger, engineio_logger=self.logger)
        sio.on("connect", lambda: self._on_connect(sio))
        sio.on("disconnect", lambda *reason: self._on_disconnect(sio))
        receive = sio.eio._receive_packet

        def on_the_wire(pkt):
            if sio is self.sio:
                self._on_wire(pkt)
            return receive(pkt)

        sio.eio._receive_packet = on_the_wire
        return sio

    def _on_wire(self, pkt):
        """Dispatch our events in the order the read loop gets them."""
        if pkt.packet_type != engineio_packet.MESSAGE or not isinstance(pkt.data, str):
            return
        try:
            message = socketio_packet.Packet(encoded_packet=pkt.data)
            if message.packet_type != socketio_packet.EVENT or not isinstance(message.data, list):
                return
            name, payload = message.data[0], message.data[1] if len(message.data) > 1 else None
            if name == "campaign_update":
                self._on_update(payload)
            elif name == "campaign_snapshot":
                self._on_snapshot(payload)
            elif name == "resync":
                self.resyncs.append(payload)
        except Exception as exc:  # noqa: BLE001 - recorded, and a test asserts there are none
            self.handler_errors.append(repr(exc))

    # connection ---------------------------------------------------------------------

    def auth(self):
        with self.lock:
            auth = {"token": self.token}
            if self.contiguous is not None:
                auth["last_seq"] = self.contiguous
            return auth

    def _connect_once(self):
        url = self.url() if callable(self.url) else self.url
        sio, result = self.sio, {}

        def attempt():
            try:
                sio.connect(url, auth=self.auth, transports=self.transports, wait_timeout=10)
            except Exception as exc:  # noqa: BLE001 - raised below, in the caller's thread
                result["error"] = exc

        thread = threading.Thread(target=attempt, name=f"{self.name}-attempt", daemon=True)
        thread.start()
        thread.join(self.ATTEMPT_TIMEOUT)
        if thread.is_alive():
            with self.lock:
                self.abandoned += 1
                self.sio = self._new_sio()
            raise TimeoutError(f"connection attempt to {url} hung for {self.ATTEMPT_TIMEOUT} s; abandoned")
        if "error" in result:
            raise result["error"]

    def connect_in_background(self):
        """Keep trying to connect (as after a disconnect) without waiting here."""
        with self.lock:
            self.reconnector = threading.Thread(target=self._reconnect, name=f"{self.name}-connect", daemon=True)
            self.reconnector.start()
        return self

    def connect(self):
        self._connect_once()
        wait_until(lambda: self.snapshots, 10, message=f"{self.name}: campaign_snapshot")
        return self

    def close(self):
        self.closing.set()
        with contextlib.suppress(Exception):
            self.sio.disconnect()
        if self.reconnector is not None:
            self.reconnector.join(15)

    @property
    def session(self):
        """Number of the connection in use: each one starts with its snapshot, before its ``connect`` event."""
        return len(self.snapshots)

    def _on_connect(self, sio):
        with self.lock:
            if sio is self.sio:
                self.connects.append(time.monotonic())

    def _on_disconnect(self, sio):
        with self.lock:
            if sio is not self.sio:
                return
            self.disconnects.append(time.monotonic())
            if self.closing.is_set() or (self.reconnector is not None and self.reconnector.is_alive()):
                return
            self.reconnector = threading.Thread(target=self._reconnect, name=f"{self.name}-reconnect", daemon=True)
            self.reconnector.start()

    def _reconnect(self):
        delay = 0.2
        # Backoff between attempts, as every client does; close() ends it at once.
        while not self.closing.wait(delay):
            delay = min(delay * 2, 1.0)
            if self.sio.connected:
                return
            try:
                self._connect_once()
                return
            except Exception as exc:  # noqa: BLE001 - the server is not back yet: try again
                self.reconnect_errors.append(f"{exc.__class__.__name__}: {exc}")

    # updates ------------------------------------------------------------------------

    def _on_snapshot(self, data):
        with self.lock:
            self.snapshots.append({"at": time.monotonic(), **data})
            if self.contiguous is None:
                self.contiguous = self.base = data["seq"]

    def _on_update(self, data):
        with self.lock:
            seq = data["seq"]
            self.arrivals.append((self.session, seq, data["replayed"], time.monotonic()))
            if self.contiguous is None or seq <= self.contiguous or seq in self.held:
                self.duplicates += 1
                return
            self.held[seq] = data
            while self.contiguous + 1 in self.held:
                self.contiguous += 1
                payload = self.held.pop(self.contiguous)
                self.applied.append({**payload, "at": time.monotonic()})
            if self.held:
                self.ask_for_gap()

    def ask_for_gap(self, every=1.0):
        """Ask for the updates after the highest contiguous ``seq`` (at most once a second)."""
        with self.lock:
            if not self.held or time.monotonic() - self.last_request < every or not self.sio.connected:
                return
            self.last_request = time.monotonic()
            self.replay_requests += 1
            after = self.contiguous
        with contextlib.suppress(Exception):
            self.sio.emit("replay", {"after_seq": after})

    def caught_up(self, seq):
        """True once every update up to ``seq`` was applied (asks for a pending gap again)."""
        self.ask_for_gap()
        with self.lock:
            return self.contiguous is not None and self.contiguous >= seq

    def wait_caught_up(self, seq, timeout=20):
        wait_until(lambda: self.caught_up(seq), timeout, 0.05, f"{self.name} to apply every update up to seq {seq}")

    def describe(self):
        """One line about this client, for failure messages."""
        with self.lock:
            return (
                f"{self.name}: connected={self.sio.connected} connects={len(self.connects)} abandoned={self.abandoned} "
                f"disconnects={len(self.disconnects)} contiguous={self.contiguous} held={sorted(self.held)[:5]} "
                f"reconnect_errors={self.reconnect_errors[-3:]}\n    " + "\n    ".join(list(self.log)[-25:])
            )

    def live_seqs_by_session(self):
        """The ``seq`` of live (not replayed) arrivals, per connection."""
        with self.lock:
            sessions = {}
            for session, seq, replayed, _ in self.arrivals:
                if not replayed:
                    sessions.setdefault(session, []).append(seq)
            return sessions

    def latest(self, campaign_id):
        """The state of a campaign after the updates applied so far (highest version)."""
        with self.lock:
            states = [u["campaign"] for u in self.applied if u["campaign"]["id"] == campaign_id]
        return max(states, key=lambda c: c["version"]) if states else None


def assert_in_order_without_gaps(client, stored):
    """The client applied exactly the stored updates, in ``seq`` order, and live ones never went back."""
    applied = [(u["seq"], u["type"], u["campaign"]["id"], u["campaign"]["version"]) for u in client.applied]
    expected = [
        (u["seq"], u["type"], u["campaign"]["id"], u["campaign"]["version"]) for u in stored if u["seq"] > client.base
    ]
    assert applied == expected, f"{client.name}: applied {len(applied)} updates, stored {len(expected)}"
    for session, seqs in client.live_seqs_by_session().items():
        assert seqs == sorted(set(seqs)), f"{client.name}: live updates out of order in connection {session}: {seqs}"


# Set-ups the fault tests share ---------------------------------------------------------------


def proxied_database_url(stack, proxy):
    """The stack's database URL through a ``TcpProxy`` the test controls."""
    return f"postgresql://{support.PG_USER}@127.0.0.1:{proxy.port}/{stack.database}"


def start_progress_stream(stack, campaigns, seed, rate):
    """A paced publisher of progress events for ``campaigns``, started; ``(ledger, stream)``."""
    ledger = Ledger()
    stream = StreamPublisher(stack.broker_url, progress_events(campaigns, seed=seed), rate, ledger)
    stream.start()
    return ledger, stream


def tenant_client(stack, server, tenant, transport="websocket", name=None):
    """A connected ``SeqClient`` of ``tenant`` on ``server``."""
    return SeqClient(server.url, stack.token(tenant), [transport], name or transport).connect()
