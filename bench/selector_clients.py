"""Many minimal Socket.IO clients on one selector thread, for benchmarks that measure the server.

Why not python-socketio's ``Client`` here: it runs a reader thread per connection (and a writer
thread), so every frame the server sends wakes one thread of the client machine. On loopback
that wake-up is done by the kernel inside the server's ``send()``, and it is charged to the
server's CPU time: measured with the same 100 direct writes per emit, 2.0 us of server system
time per delivery when one selector thread reads all connections, 4.5-5.7 us with a thread per
connection (and more on a loaded machine). A browser or a phone on another machine costs the
server none of that, so a bench of the server's cost uses these clients by default.

What they speak: the websocket upgrade (wsproto, sans-IO), Engine.IO v4 open and pong, Socket.IO
CONNECT with ``auth = {"token": ...}``, ``campaign_snapshot`` and ``campaign_update`` events
(counted, with seq gaps), ``connect_error`` and close. Nothing else.
"""

import contextlib
import json
import selectors
import socket
import threading
import time
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Ping, RejectConnection, Request, TextMessage

from bench.common import SeqTally, sum_tallies

PATH = "/socket.io/?EIO=4&transport=websocket"


class SelectorClient:
    """One Socket.IO connection, driven by ``SelectorClients``' thread."""

    def __init__(self, index, tenant_id, token):
        self.index, self.tenant_id, self.token = index, tenant_id, token
        self.sock = None
        self.ws = None
        self.buffer = ""
        self.connected = False  # the snapshot arrived
        self.closed = False
        self.close_reason = "no snapshot within 30 s"
        self.started_at = None
        self.tally = SeqTally()

    def open(self, host, port):
        """Connect the TCP socket and send the websocket upgrade request."""
        self.started_at = time.monotonic()
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=f"{host}:{port}", target=PATH)))
        self.sock.settimeout(None)

    def send_text(self, text):
        """Send one websocket text frame."""
        self.sock.sendall(self.ws.send(Message(data=text)))

    def receive(self, data):
        """Feed bytes from the socket; return an error text when the connection ended badly."""
        self.ws.receive_data(data or None)
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                continue
            if isinstance(event, TextMessage):
                self.buffer += event.data
                if event.message_finished:
                    text, self.buffer = self.buffer, ""
                    error = self.packet(text)
                    if error:
                        return error
            elif isinstance(event, Ping):
                self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, (CloseConnection, RejectConnection)):
                self.closed = True
                return f"closed by the server ({getattr(event, 'code', getattr(event, 'status_code', '?'))})"
        if not data:
            self.closed = True
            return "connection lost"
        return None

    def packet(self, text):
        """Handle one Engine.IO packet."""
        if text == "2":  # ping
            self.send_text("3")
        elif text.startswith("0"):  # Engine.IO open
            self.send_text("40" + json.dumps({"token": self.token}))
        elif text.startswith("44"):
            return f"connect_error {text[2:200]}"
        elif text.startswith("41"):
            self.closed = True
            return "disconnected by the server"
        elif text.startswith("42"):
            name, data = json.loads(text[2:])[:2]
            if name == "campaign_update":
                self.tally.update(data)
            elif name == "campaign_snapshot":
                self.tally.snapshot(data)
                self.connected = True
        return None

    def close(self):
        """Close the socket (no close handshake: the server sees the connection end)."""
        self.closed = True
        if self.sock is not None:
            self.sock.close()


class SelectorClients:
    """Connects clients ``concurrency`` at a time and reads them all on one thread."""

    def __init__(self, url, credentials, concurrency=8, attempts=5):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.clients = [SelectorClient(i, tenant_id, token) for i, (tenant_id, token) in enumerate(credentials)]
        self.concurrency, self.attempts = concurrency, attempts
        # Registered from the connecting thread while the reading thread selects: epoll allows it.
        self.selector = selectors.DefaultSelector()
        self.closing = False
        self.changed = threading.Event()
        self.disconnects = []  # (monotonic time, reason) of every connection ended without being asked
        self.errors, self.retries, self.durations = [], [], []
        self.thread = threading.Thread(target=self.loop, name="selector-clients", daemon=True)

    def connect_all(self, timeout=600.0):
        """Connect every client (retrying failures); return when all are connected or gave up."""
        self.thread.start()
        tries = {client.index: 0 for client in self.clients}
        waiting = list(self.clients)
        in_flight = []
        deadline = time.monotonic() + timeout
        while (waiting or in_flight) and time.monotonic() < deadline:
            while waiting and len(in_flight) < self.concurrency:
                client = waiting.pop(0)
                tries[client.index] += 1
                try:
                    client.open(self.host, self.port)
                except OSError as exc:
                    self.failed(client, f"{exc!r}", tries, waiting)
                    continue
                self.selector.register(client.sock, selectors.EVENT_READ, client)
                in_flight.append(client)
            # The reading thread sets ``changed`` when a client got its snapshot or ended.
            self.changed.wait(0.5)
            self.changed.clear()
            for client in list(in_flight):
                if client.connected:
                    in_flight.remove(client)
                    self.durations.append(time.monotonic() - client.started_at)
                elif client.closed or time.monotonic() - client.started_at > 30:
                    in_flight.remove(client)
                    self.drop(client)
                    self.failed(client, client.close_reason, tries, waiting)

    def failed(self, client, reason, tries, waiting):
        if tries[client.index] < self.attempts:
            self.retries.append(reason)
            fresh = SelectorClient(client.index, client.tenant_id, client.token)
            self.clients[client.index] = fresh
            waiting.append(fresh)
        else:
            self.errors.append(reason)

    def drop(self, client):
        if client.sock is not None and client.sock.fileno() >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(client.sock)
        client.close()

    def loop(self):
        """Read every registered connection as data arrives."""
        while not self.closing:
            for key, _ in self.selector.select(timeout=0.1):
                client = key.data
                was_connected = client.connected
                try:
                    data = client.sock.recv(65536)
                    error = client.receive(data)
                except (OSError, ValueError) as exc:
                    error = f"{exc!r}"
                if client.connected != was_connected:
                    self.changed.set()
                if error:
                    self.changed.set()
                    client.close_reason = error
                    if client.connected and not self.closing:
                        self.disconnects.append((time.monotonic(), error))
                    self.drop(client)

    def mark(self):
        """Counts so far, in the shape the bench's child-process protocol reports."""
        live = [c for c in self.clients if c.connected and not c.closed]
        per_tenant = {}
        for client in live:
            per_tenant[client.tenant_id] = per_tenant.get(client.tenant_id, 0) + 1
        return {
            **sum_tallies([c.tally for c in self.clients]),
            "connected": len(live),
            "connected_per_tenant": per_tenant,
            "disconnects": list(self.disconnects),
            "log_counts": {},
        }

    def close(self):
        """Stop reading and close every connection."""
        self.closing = True
        self.thread.join(5)
        for client in self.clients:
            client.close()
