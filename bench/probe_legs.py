"""Where campaign-live's latency goes in a scenario of the peer's runner, measured in the same run.

The runner's probes are ``campaign_started`` events whose campaign is named
``lat-<publish time, ms since the epoch>-<i>`` (../shared/peer/publish.py). Two observers watch
them on campaign-live's side while the load clients run:

- the message queue: an exclusive queue bound to the Socket.IO channel's exchange sees each update
  as the worker publishes it (publish -> RabbitMQ -> worker -> PostgreSQL -> message queue);
- one websocket client of the server's: the server's leg added (its message-queue listener, the
  tenant's fan-out, its event loop under the load clients' traffic).

What the load clients see beyond that (their latency, the runner's figure) is their own leg: the
server's answers to them and how soon they come back for more. docs/benchmarks.md reads the legs.
"""

import contextlib
import json
import re
import threading
import time

import kombu
from socketio import exceptions as socketio_exceptions

from bench.harness import BenchFailure, stats
from stack import OrderedClient, wait_until

PROBE_NAME = re.compile(r"^lat-(\d+)-")
CONNECT_SECONDS = 30.0


def probe_delay_ms(payload, now):
    """Milliseconds from a live probe's publish to ``now`` (``time.time()``); None for anything else."""
    if not isinstance(payload, dict) or payload.get("type") != "campaign_started" or payload.get("replayed"):
        return None
    match = PROBE_NAME.match(str((payload.get("campaign") or {}).get("name") or ""))
    return now * 1000 - int(match.group(1)) if match else None


def emitted_payloads(body):
    """The payloads of a python-socketio message-queue message (a JSON text: ``{"method": "emit",
    "data": [payload], ...}``); empty for anything else."""
    try:
        message = json.loads(body)
    except ValueError:  # not python-socketio's
        return []
    if not isinstance(message, dict) or message.get("method") != "emit" or not isinstance(message.get("data"), list):
        return []
    return message["data"]


class ProbeLegs:
    """Both observers for the life of a ``with`` block; ``summary()`` gives their delays."""

    def __init__(self, server_url, message_queue_url, channel, token):
        self.server_url, self.message_queue_url, self.channel, self.token = (
            server_url, message_queue_url, channel, token)
        self.queue_ms, self.client_ms = [], []
        self.bound, self.stopping = threading.Event(), threading.Event()
        self.failure = None
        self.client = OrderedClient(reconnection=False)
        self.client.on("campaign_update", self._on_update)
        self.thread = threading.Thread(target=self._watch_queue, name="probe-legs", daemon=True)

    def __enter__(self):
        self.thread.start()
        with contextlib.suppress(AssertionError):  # the time is up: said below
            wait_until(lambda: self.bound.is_set() or not self.thread.is_alive(), CONNECT_SECONDS, 0.2)
        if not self.bound.is_set():
            self.stopping.set()
            raise BenchFailure(f"the message-queue observer could not bind in {CONNECT_SECONDS:.0f} s: {self.failure}")
        # A server still busy with the last scenario's clients may refuse or time out: try again until
        # the deadline; the legs are a diagnosis, so the scenario then runs without the observer.
        with contextlib.suppress(AssertionError):
            wait_until(self._connect, CONNECT_SECONDS, 1.0)
        return self

    def _connect(self):
        """One connect attempt of the websocket observer; True once connected (the failure kept)."""
        try:
            self.client.connect(self.server_url, auth={"token": self.token}, transports=["websocket"],
                                wait_timeout=CONNECT_SECONDS)
        except socketio_exceptions.ConnectionError as exc:
            self.failure = exc
            return False
        self.failure = None
        return True

    def __exit__(self, *exc_info):
        self.stopping.set()
        if self.client.connected:
            self.client.disconnect()
        self.thread.join(5)

    def _on_update(self, payload):
        delay = probe_delay_ms(payload, time.time())
        if delay is not None:
            self.client_ms.append(delay)

    def _watch_queue(self):
        exchange = kombu.Exchange(self.channel, type="fanout", durable=False)
        queue = kombu.Queue(exchange=exchange, exclusive=True, auto_delete=True)  # a name of the broker's
        try:
            with kombu.Connection(self.message_queue_url) as connection, connection.Consumer(
                    queue, callbacks=[self._on_message], accept=["text/plain", "json"]):
                self.bound.set()
                while not self.stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        connection.drain_events(timeout=0.5)
        except Exception as exc:  # noqa: BLE001 - reported by __enter__ or summary()
            self.failure = exc

    def _on_message(self, body, message):
        now = time.time()
        message.ack()
        for payload in emitted_payloads(message.body):
            delay = probe_delay_ms(payload, now)
            if delay is not None:
                self.queue_ms.append(delay)

    def summary(self):
        """Delays (ms) from publish to the message queue and to the websocket observer."""
        return {"message_queue_ms": stats(self.queue_ms), "websocket_observer_ms": stats(self.client_ms),
                "observer_failure": None if self.failure is None else repr(self.failure)}
