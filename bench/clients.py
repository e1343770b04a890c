"""Socket.IO clients for the benchmarks, in child processes: minimal websocket clients (wsproto) all
read by one selector thread per process and timestamped when the bytes arrive; each records what it
received (``Client``) and replays a hole in its seqs still open after 1 s. Why this kind of client:
docs/benchmarks.md.
"""

import collections
import contextlib
import json
import math
import multiprocessing
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import CloseConnection, Message, Ping, RejectConnection, Request, TextMessage

from bench.harness import BenchFailure, seconds_until, stats

HOLE_GRACE_SECONDS, ASK_AGAIN_SECONDS = 1.0, 5.0


class Client:
    """One minimal Socket.IO client and what it received (seqs, holes, lag, PINGs, probes); ``up`` while open."""

    def __init__(self, tenant_id, token, shared, probe_campaign):
        self.tenant_id, self.token, self.shared, self.probe_campaign = tenant_id, token, shared, probe_campaign
        self.lock, self.send_lock, self.settled = threading.Lock(), threading.Lock(), threading.Event()
        self.snapshot_seq = self.max_seq = self.last_ping = self.disconnected = self.sock = None
        self.last_live, self.asked_at, self.buffer = 0, 0.0, ""
        self.seqs, self.live_seqs, self.holes, self.probes = set(), set(), {}, {}
        self.live = self.replayed = self.duplicates = self.out_of_order = self.foreign = 0
        self.gaps = self.gap_requests = 0
        self.connected = False  # settled: snapshot, refusal or close

    @property
    def up(self):
        """True while the connection is open."""
        return self.sock is not None

    def open(self, host, port):
        """Open the websocket (the Engine.IO and Socket.IO handshakes follow as packets arrive)."""
        self.settled.clear()
        self.disconnected, self.buffer, self.ws = None, "", WSConnection(ConnectionType.CLIENT)
        sock = socket.create_connection((host, port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(self.ws.send(Request(host=f"{host}:{port}", target="/socket.io/?EIO=4&transport=websocket")))
        sock.settimeout(None)
        self.sock = sock

    def send(self, event):
        """Send a wsproto event; a ``str`` as one websocket text frame."""
        with self.send_lock:
            self.sock.sendall(self.ws.send(Message(data=event) if isinstance(event, str) else event))

    def emit(self, name, data):
        """Emit a Socket.IO event."""
        self.send("42" + json.dumps([name, data]))

    def receive(self, data, arrived):
        """Feed bytes from the socket; return an error text when the connection ended."""
        self.ws.receive_data(data or None)
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                self.buffer += event.data
                if event.message_finished:
                    text, self.buffer = self.buffer, ""
                    if error := self.packet(text, arrived):
                        return error
            elif isinstance(event, Ping):
                self.send(event.response())
            elif isinstance(event, (CloseConnection, RejectConnection)):
                return f"closed by the server ({getattr(event, 'code', getattr(event, 'status_code', '?'))})"
        return None if data else "connection lost"

    def packet(self, text, arrived):
        """Handle one Engine.IO packet that arrived at ``arrived`` (monotonic)."""
        if text == "2":  # PING: gaps between them show a load generator falling behind
            if self.last_ping is not None:
                self.shared["ping_gaps"].append(arrived - self.last_ping)
            self.last_ping = arrived
            self.send("3")
        elif text.startswith("0"):
            self.send("40" + json.dumps({"token": self.token}))
        elif text.startswith(("44", "41")):
            return f"refused or disconnected by the server: {text[2:200]}"
        elif text.startswith("42"):
            name, data = json.loads(text[2:])[:2]
            with self.lock:
                if name == "campaign_snapshot" and self.snapshot_seq is None:
                    self.snapshot_seq = self.last_live = data["seq"]
                    self.max_seq = max(self.max_seq or 0, data["seq"])
                    self.connected = True
                    self.settled.set()
                elif name == "campaign_update":
                    self._update(data, arrived)
        return None

    def _update(self, data, arrived):
        seq, campaign = data["seq"], data["campaign"]
        if campaign.get("tenant_id", self.tenant_id) != self.tenant_id:
            self.foreign += 1
            return
        self.duplicates += seq in self.seqs
        self.seqs.add(seq)
        self.holes.pop(seq, None)
        if data.get("replayed"):
            self.replayed += 1
        else:
            self.live += 1
            self.live_seqs.add(seq)
            self.out_of_order += seq < self.last_live
            self.last_live = max(self.last_live, seq)
            stamp = datetime.fromisoformat(data["timestamp"]).timestamp()
            self.shared["lags"].append(time.time() - stamp)
        if campaign["id"] == self.probe_campaign:
            self.probes.setdefault((campaign["id"], data["type"], campaign["version"]), (arrived, data["timestamp"]))
        if self.max_seq is not None and seq > self.max_seq + 1:
            self.gaps += seq - self.max_seq - 1
            for missing in range(self.max_seq + 1, seq):
                self.holes.setdefault(missing, arrived)
        self.max_seq = seq if self.max_seq is None else max(self.max_seq, seq)

    def ask_for_old_holes(self, now):
        """``replay`` from the oldest hole once it outlived the grace period (not too often)."""
        with self.lock:
            old = [seq for seq, since in self.holes.items() if now - since >= HOLE_GRACE_SECONDS]
            if not old or now - self.asked_at < ASK_AGAIN_SECONDS or not self.up:
                return
            self.asked_at, self.gap_requests = now, self.gap_requests + 1
        with contextlib.suppress(Exception):  # a disconnected client: counted elsewhere
            self.emit("replay", {"after_seq": min(old) - 1})


class Clients:
    """Connects clients (``attempts`` each), reads them all on one selector thread, counts what ends them."""

    def __init__(self, url, attempts):
        parts = urlsplit(url)
        self.host, self.port, self.attempts = parts.hostname, parts.port, attempts
        self.disconnects, self.errors, self.retries, self.durations = [], [], [], []
        self.closing = False
        self.selector = selectors.DefaultSelector()  # registered from other threads while it selects: epoll allows
        threading.Thread(target=self.loop, name="selector-clients", daemon=True).start()

    def connect(self, client):
        """Connect one client (``attempts`` tries); its connect time or its error is recorded."""
        for attempt in range(self.attempts):
            began = time.monotonic()
            try:
                client.open(self.host, self.port)
                self.selector.register(client.sock, selectors.EVENT_READ, client)
                if not client.settled.wait(30) or not client.connected:
                    raise ConnectionError(f"no campaign_snapshot: {client.disconnected or 'within 30 s'}")
                return self.durations.append(time.monotonic() - began)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with contextlib.suppress(Exception):
                    self.drop(client)
                (self.errors if attempt == self.attempts - 1 else self.retries).append(repr(exc))
                time.sleep(1.0 + attempt)

    def drop(self, client):
        """Stop reading a connection and close it."""
        sock, client.sock = client.sock, None
        if sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(sock)
            sock.close()

    def loop(self):
        """Read every registered connection as data arrives."""
        while True:
            for key, _ in self.selector.select(timeout=0.1):
                client = key.data
                try:
                    error = client.receive(key.fileobj.recv(65536), time.monotonic())
                except (OSError, ValueError, AttributeError) as exc:
                    error = repr(exc)
                if error:  # once connected, a disconnection the bench did not ask for; before, a refusal
                    self.drop(client)
                    if client.connected and not self.closing:
                        self.disconnects.append((time.monotonic(), error))
                    client.disconnected = {"at": time.time(), "reason": error}
                    client.settled.set()


def child(pipe, url, share, options):
    """A child process holding ``share`` (``(tenant_id, token)`` pairs): sends a ready report, then
    answers ``"mark"``, ``("verify", stored seqs by tenant, timeout)`` and ``"close"``."""
    shared = {"lags": [], "ping_gaps": []}
    clients = [Client(tenant_id, token, shared, options.get("probe_campaign")) for tenant_id, token in share]
    group, started = Clients(url, options.get("attempts", 5)), time.monotonic()
    with ThreadPoolExecutor(max_workers=options.get("connect_threads", 8)) as pool:
        list(pool.map(group.connect, clients))
    pipe.send({"connected": sum(r.connected for r in clients), "errors": group.errors, "retries": group.retries,
               "durations": group.durations, "process_connect_seconds": [time.monotonic() - started]})
    while (command := pipe.poll(0.25) and pipe.recv()) != "close":
        if not command:  # a quarter of a second without one: clients ask for their old holes, as real ones do
            for client in clients if options.get("replay_holes") else ():
                client.ask_for_old_holes(time.monotonic())
        elif command == "mark":
            lags, pings = shared["lags"][:], shared["ping_gaps"][:]
            del shared["lags"][:len(lags)], shared["ping_gaps"][:len(pings)]
            up = [r for r in clients if r.connected and r.up]
            pipe.send({"updates": sum(r.live + r.replayed for r in clients),
                       "replayed": sum(r.replayed for r in clients),
                       "gaps": sum(r.gaps for r in clients), "gap_requests": sum(r.gap_requests for r in clients),
                       "connected": len(up), "connected_per_tenant": collections.Counter(r.tenant_id for r in up),
                       "disconnects": group.disconnects[:], "lags": lags, "ping_gaps": pings,
                       "probes": [(r.tenant_id, dict(r.probes), r.up) for r in clients if r.probe_campaign]})
        else:
            pipe.send(verify([r for r in clients if r.connected], *command[1:]))
    group.closing = True
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(group.drop, clients))
    pipe.send({"closed": True})


def verify(clients, stored, timeout):
    """Wait until every client saw its tenant's last stored seq, compare what each received with what
    is stored (after its snapshot), ask once more with ``replay`` for what is missing, count."""
    last = {tenant_id: (seqs[-1] if seqs else 0) for tenant_id, seqs in stored.items()}

    def missing(client):
        with client.lock:
            return [seq for seq in stored[client.tenant_id] if seq > client.snapshot_seq and seq not in client.seqs]

    seconds_until(lambda: all(r.max_seq >= last[r.tenant_id] for r in clients if r.up), timeout)
    before = [missing(r) for r in clients]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(missing(r) for r in clients if r.up):
        for client in clients:  # one replay a second at most: the per-connection event budget
            if (gaps := missing(client)) and client.up:
                with contextlib.suppress(Exception):
                    client.emit("replay", {"after_seq": gaps[0] - 1})
        time.sleep(1.1)
    after = [missing(r) for r in clients]
    lost_live = [sum(1 for q in stored[r.tenant_id] if q > r.snapshot_seq and q not in r.live_seqs) for r in clients]
    totals = {name: sum(getattr(r, name) for r in clients) for name in
              ("live", "replayed", "duplicates", "out_of_order", "foreign", "gap_requests")}
    return {
        "clients": len(clients), **totals,
        "connected_at_end": sum(1 for r in clients if r.up),
        "disconnected": sum(1 for r in clients if r.disconnected),
        "disconnect_examples": [r.disconnected for r in clients if r.disconnected][:3],
        "reached_final_state": sum(1 for r in clients if r.max_seq >= last[r.tenant_id]),
        "expected_updates": sum(sum(1 for q in stored[r.tenant_id] if q > r.snapshot_seq) for r in clients),
        "lost_live": sum(lost_live), "clients_with_live_losses": sum(1 for n in lost_live if n),
        "clients_missing_before_final_replay": sum(1 for m in before if m),
        "missing_before_final_replay": sum(len(m) for m in before),
        "clients_missing_after_final_replay": sum(1 for m in after if m),
        "missing_after_final_replay": sum(len(m) for m in after),
        "unknown_seqs": sum(len(r.seqs - set(stored[r.tenant_id])) for r in clients),
    }


class ClientProcesses:
    """Clients for ``credentials`` (``(tenant_id, token)``) in child processes of ``per_process`` each
    (or ``processes`` of them); ``options`` for ``child``. A context manager."""

    def __init__(self, url, credentials, per_process=250, processes=None, **options):
        count = processes or max(1, math.ceil(len(credentials) / per_process))
        context = multiprocessing.get_context("spawn")
        self.children = []
        for n in range(count):
            parent_end, child_end = context.Pipe()
            process = context.Process(target=child, name=f"bench-clients-{n}", daemon=True,
                                      args=(child_end, url, credentials[n::count], options))
            process.start()
            self.children.append((process, parent_end))
        self.pids = [process.pid for process, _ in self.children]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        """Disconnect every client and stop the processes."""
        with contextlib.suppress(Exception):
            self.ask("close", 120)
        for process, _ in self.children:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)

    def receive(self, timeout):
        """The next answer of every child, merged (numbers and ``Counter``s added, lists joined); ``BenchFailure``
        if one dies or stays silent."""
        merged = {}
        for process, pipe in self.children:
            deadline = time.monotonic() + timeout
            while not pipe.poll(0.5):
                if not process.is_alive() or time.monotonic() > deadline:
                    raise BenchFailure(f"{process.name} exited ({process.exitcode}) or did not answer in {timeout} s")
            for key, value in pipe.recv().items():
                merged[key] = merged[key] + value if key in merged else value
        return merged

    def connected(self, timeout):
        """Wait for every child's ready report; what connecting took, and what went wrong."""
        ready = self.receive(timeout)
        return {"connected": ready["connected"], "errors": len(ready["errors"]), "error_examples": ready["errors"][:5],
                "retries": len(ready["retries"]), "retry_examples": ready["retries"][:5],
                "connect_ms": stats([1000 * d for d in ready["durations"]]),
                "process_connect_seconds": [round(s, 2) for s in ready["process_connect_seconds"]]}

    def ask(self, command, timeout=60):
        """Send ``command`` to every child; their merged answers."""
        for _, pipe in self.children:
            pipe.send(command)
        return self.receive(timeout)
