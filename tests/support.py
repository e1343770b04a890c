"""What the tests add to ``stack.py`` (real services and processes, shared with bench/):
Socket.IO clients that record what they receive, a queue reader, event shorthands.
"""

import base64
import contextlib
import json
import os
import resource
import subprocess
import threading
import time
import uuid  # noqa: F401 - tests use support.uuid
from types import SimpleNamespace

import sqlalchemy.event
from kombu import Connection

import stack
from campaigns.publisher import make_event
from stack import (  # noqa: F401 - the tests reach these through ``support``
    AMQP_HOST,
    AMQP_PORT,
    JWT_SECRET,
    PG_HOST,
    PG_PORT,
    PG_USER,
    PYTHON,
    REPO,
    SECRET_KEY,
    OrderedClient,
    OrderedEngineIOClient,
    Process,
    _rabbitmqctl,
    amqp_url,
    create_broker_user,
    create_database,
    create_template_database,
    create_vhost,
    delete_broker_user,
    delete_vhost,
    drop_database,
    free_port,
    list_exchanges,
    list_queues,
    metric,
    migrate,
    pg_admin,
    pg_url,
    require_services,
    server_healthy,
    set_permissions,
    wait_until,
)
from worker.consumer import EventConsumer


class Stack(stack.Stack):
    """``stack.Stack`` with a recording test client."""

    def client(self, tenant_id=None, token=None, transports=("websocket",), server=None, auth_extra=None, connect=True):
        """A connected ``LiveClient`` for a tenant."""
        client = LiveClient()
        if connect:
            auth = {"token": token or self.token(tenant_id), **(auth_extra or {})}
            client.connect((server or self.servers[0]).url, auth, list(transports))
        return client


def bare_worker(**attributes):
    """An ``EventConsumer`` built without ``__init__`` (no database, no broker): the given attributes
    over these defaults: not asked to stop, no backlog, no tenant locks, and a broker connection
    whose ``connection_errors`` are ``ConnectionError``."""
    worker = EventConsumer.__new__(EventConsumer)
    defaults = {
        "should_stop": False,
        "backlog": False,
        "locks": None,
        "connection": SimpleNamespace(connection_errors=(ConnectionError,)),
    }
    for name, value in {**defaults, **attributes}.items():
        setattr(worker, name, value)
    return worker


@contextlib.contextmanager
def low_soft_file_limit():
    """This process's soft open-file limit lowered to 1,024 (half the hard one if that is lower)
    for what it starts meanwhile (children inherit it), restored afterwards; yields ``(soft, hard)``."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = before[1] if before[1] != resource.RLIM_INFINITY else 10**6
    soft = min(1024, hard // 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield soft, hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


@contextlib.contextmanager
def statements_on(engine):
    """Collect the SQL text of every statement ``engine`` runs inside the block."""
    seen = []

    def collect(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    sqlalchemy.event.listen(engine, "before_cursor_execute", collect)
    try:
        yield seen
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", collect)


def websocket_upgrade_request(path="/socket.io/?EIO=4&transport=websocket", extensions=None):
    """The bytes of a browser-like WebSocket upgrade request (a fresh key), offering ``extensions`` if given."""
    key = base64.b64encode(os.urandom(16)).decode()
    offer = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{offer}\r\n"
    ).encode()


def child_findings(module, *args, timeout=120):
    """Run ``python -m module args...`` (a script that monkey-patches its own interpreter) and
    return the JSON findings it prints last; fail with its stderr if it fails."""
    run = subprocess.run(
        [PYTHON, "-W", "ignore::DeprecationWarning", "-m", module, *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def consume(broker_url, queue, wanted, timeout, accept=None):
    """Await ``wanted`` messages of a kombu ``queue`` with a consumer; return ``[(headers, body)]``.

    ``accept(headers, body)`` says which messages count (the others are acknowledged and
    dropped). Messages past ``wanted`` are not acknowledged: they go back to the queue.
    Returns what arrived by the deadline (possibly fewer than ``wanted``).
    """
    found = []

    def collect(message):
        if len(found) >= wanted:
            return
        body = message.body.encode() if isinstance(message.body, str) else bytes(message.body)
        headers = dict(message.headers or {})
        if accept is None or accept(headers, body):
            found.append((headers, body))
        message.ack()

    connection = Connection(broker_url)
    with connection, connection.Consumer(queue, on_message=collect, prefetch_count=100):
        deadline = time.monotonic() + timeout
        while len(found) < wanted and time.monotonic() < deadline:
            try:
                connection.drain_events(timeout=max(deadline - time.monotonic(), 0.01))
            except TimeoutError:
                break
    return found


class LiveClient:
    """A python-socketio client that records what it receives, in arrival order, for assertions."""

    def __init__(self, reconnection=False):
        self.sio = OrderedClient(reconnection=reconnection)
        self.snapshots, self.updates, self.resyncs, self.errors = [], [], [], []
        self.lock = threading.Lock()
        self.sio.on("campaign_snapshot", lambda data: self._record(self.snapshots, data))
        self.sio.on("campaign_update", lambda data: self._record(self.updates, data))
        self.sio.on("resync", lambda data: self._record(self.resyncs, data))
        self.sio.on("connect_error", lambda data: self._record(self.errors, data))

    def _record(self, bucket, data):
        with self.lock:
            bucket.append({"at": time.monotonic(), **(data if isinstance(data, dict) else {"data": data})})

    def connect(self, url, auth, transports):
        """Connect and wait for the snapshot."""
        self.sio.connect(url, auth=auth, transports=transports, wait_timeout=10)
        wait_until(lambda: self.snapshots, 10, message="campaign_snapshot")

    def wait_for(self, predicate, timeout=10.0, message="an update"):
        """Wait until ``predicate(updates)`` holds; return its value."""
        return wait_until(lambda: predicate(list(self.updates)), timeout, message=message)

    def wait_campaign(self, campaign_id, check, timeout=10.0):
        """Wait for an update of a campaign whose ``campaign`` dict satisfies ``check``."""

        def found(updates):
            return next((u for u in updates if u["campaign"]["id"] == campaign_id and check(u["campaign"])), None)

        return self.wait_for(found, timeout, f"an update of {campaign_id}")

    def seqs(self):
        """The ``seq`` of every update received, in arrival order."""
        return [update["seq"] for update in self.updates]

    def close(self):
        """Disconnect."""
        if self.sio.connected:
            self.sio.disconnect()


class RecordingEmitter:
    """A worker's emitter (``EventConsumer(..., emitter, ...)``) that keeps each payload it is given."""

    def __init__(self):
        self.payloads = []

    def emit(self, event, payload, to=None):
        self.payloads.append(payload)


def event(tenant_id, campaign_id, kind, **data):
    """A contract event dict (shorthand for the tests)."""
    return make_event(tenant_id, campaign_id, kind, data)


def dump(value):
    """JSON text of a value (for raw publishing)."""
    return json.dumps(value)
