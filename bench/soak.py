"""Soak: thousands of Socket.IO clients and 500 events/s for minutes: memory growth and missed updates.

What is measured
    One server (``python app.py``) and one worker (``python -m worker``), both LOG_LEVEL=WARNING,
    on a fresh database and vhost. N python-socketio clients (default 2,000, websocket transport,
    one JWT each, tenant i mod 10) run as threads of several child processes (``multiprocessing``
    spawn, ``--clients-per-process`` each, default 250). RLIMIT_NOFILE is raised in this process
    before anything starts (up to the hard limit, or to 65536 as root), so the server, the worker
    and the client processes inherit it; the server's own limit is read back from /proc and printed.

    Once every client has its snapshot, a thread publishes ``message_sent`` at a steady rate
    (default 500/s, unconfirmed) round-robin over 50 running campaigns of 10 tenants, plus one
    status event (``campaign_paused`` / ``campaign_resumed``, alternately per campaign) every
    ``--status-interval`` seconds (default 3), for ``--duration`` seconds (default 600).

    Every ``--sample-interval`` seconds (default 10, first sample when the traffic starts) the
    script reads VmRSS of the server and worker from /proc/<pid>/status, their CPU and the client
    processes', the server's ``campaign_live_connected_clients`` (from its /metrics), the events
    the worker applied (``applied_events``; "batch" is events per transaction) and its queue depth,
    the updates the clients received, the lag from an update's ``timestamp`` (the worker's clock
    when it stored it) to the client's handler, and the longest gap between two Engine.IO PINGs.

    Every client behaves like a real one: a hole in its tenant's ``seq`` that is still open after
    1 s makes it emit ``replay`` ``{"after_seq": <seq before the hole>}`` (delivery through the
    message queue is at most once). Two client-side shortcuts keep the load generator light (see
    ``run_handlers_inline``): handlers run in the client's read thread (python-engineio otherwise
    starts a thread per message) and websocket-client's pure-Python UTF-8 check is skipped. The
    stock python-engineio client gives up when it has sent nothing for max(PING_INTERVAL,
    PING_TIMEOUT) + 5 s (35 s by default; it only sends PONGs), i.e. when a PING is more than 5 s
    late, while the JavaScript client waits PING_INTERVAL + PING_TIMEOUT (50 s): the clients here
    wait like the JavaScript one (``tolerate_late_pings``) unless ``--strict-python-pings``. A
    client that gives up logs "packet queue is empty, aborting" on stderr and counts as
    disconnected ("transport error"). After the traffic the script waits for the worker to apply everything, publishes
    ``campaign_completed`` for every campaign (the final state) and waits until each client has
    seen its tenant's last ``seq``. Then each client compares the seqs it received with the stored
    ones (``SELECT seq FROM campaign_updates WHERE tenant_id = %s AND seq > <its snapshot seq>``);
    a client still missing some asks once more with ``replay`` (as a client would when it sees it
    is behind) and waits for them.

How to read it
    Memory: growth is the average of the last window minus the average of the first window (the
    first and the last minute, or each half of a run shorter than 2 minutes), in MB and %. A server
    that keeps per-connection or per-update state would grow with the run; steady traffic should
    be flat after warm-up ("clients" is this load generator, whose seq sets grow on purpose).
    Delivery: "not received live" are updates a client only got through ``replay`` (at-most-once
    delivery); "clients missing updates after the final replay" must be 0. The lag column is
    where a saturated machine shows first. The clients, server, worker, PostgreSQL and RabbitMQ
    share the machine's cores (nproc, load average). Results are also written to
    ``bench/results/soak.json``.

Usage
    .venv/bin/python bench/soak.py [--clients N] [--duration S] [--rate R] [--quick]
"""

import argparse
import contextlib
import http.client
import math
import multiprocessing
import os
import re
import resource
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engineio import packet as engineio_packet  # noqa: E402
from kombu import Connection  # noqa: E402

from bench import common  # noqa: E402
from bench.common import BenchFailure, support  # noqa: E402
from campaigns.publisher import make_event  # noqa: E402
from campaigns.timeutil import isoformat  # noqa: E402
from worker.queues import declare_topology  # noqa: E402

WORKER_QUEUE = "campaign.events.worker"
GAP_GRACE_SECONDS = 1.0
GAP_ASK_AGAIN_SECONDS = 5.0
CONNECTED_RE = re.compile(r'^campaign_live_connected_clients\{transport="(\w+)"\} ([0-9.e+]+)$', re.MULTILINE)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000, help="Socket.IO clients (default 2000)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic (default 600)")
    parser.add_argument("--rate", type=float, default=500.0, help="message_sent per second (default 500)")
    parser.add_argument("--tenants", type=int, default=10, help="tenants (default 10)")
    parser.add_argument("--campaigns", type=int, default=50, help="running campaigns (default 50)")
    parser.add_argument("--status-interval", type=float, default=3.0, help="seconds between status events (default 3)")
    parser.add_argument("--sample-interval", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--clients-per-process", type=int, default=250, help="clients per child process (default 250)")
    parser.add_argument(
        "--connect-threads", type=int, default=8, help="concurrent connects in each child process (default 8)"
    )
    parser.add_argument(
        "--final-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the drain and the final state (default 120)",
    )
    parser.add_argument(
        "--strict-python-pings",
        action="store_true",
        help="keep python-engineio's own rule (give up when a PING is 5 s late) instead of the JS client's",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 clients for 60 s")
    common.add_run_options(parser, "soak")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.duration = 200, 60.0
    return args


def at(offset=0.0):
    """An ``occurred_at`` ``offset`` seconds from now."""
    return isoformat(datetime.now(timezone.utc) + timedelta(seconds=offset))


class Traffic(common.PacedTraffic):
    """``message_sent`` at a steady rate over the campaigns, and a status event every few seconds."""

    def __init__(self, stack, campaigns, rate, status_interval):
        super().__init__(stack, rate, name="soak-traffic")
        self.campaigns, self.status_interval = campaigns, status_interval
        self.statuses = 0
        self.paused = set()

    def events(self, n, elapsed):
        tenant_id, campaign_id = self.campaigns[n % len(self.campaigns)]
        events = [make_event(tenant_id, campaign_id, "message_sent", {"message_id": f"m-{n}"})]
        if elapsed >= (self.statuses + 1) * self.status_interval:
            key = self.campaigns[self.statuses % len(self.campaigns)]
            kind = "campaign_resumed" if key in self.paused else "campaign_paused"
            self.paused.symmetric_difference_update({key})
            event = make_event(*key, kind, {"reason": "soak"} if kind == "campaign_paused" else {})
            event["occurred_at"] = at()
            events.append(event)
            self.statuses += 1
        return events

    @property
    def sent(self):
        return self.count


# the clients (child processes) --------------------------------------------------------


class ClientState:
    """What one client saw: seqs of its tenant's updates, the holes it asked to replay, disconnects.

    A hole in the seqs is only treated as a loss (and asked for with ``replay``) once it is older
    than ``GAP_GRACE_SECONDS``, as a real client would: it may still be filled (a client that just
    connected gets the catch-up of stored updates and live ones interleaved for a moment).
    """

    def __init__(self, tenant_id, probe):
        self.tenant_id = tenant_id
        self.probe = probe
        self.last_ping = None
        self.lock = threading.Lock()
        self.snapshot_seq = None
        self.max_seq = None
        self.last_live_seq = 0
        self.seqs = set()
        self.live_seqs = set()
        self.holes = {}  # seq -> monotonic time it was first missed
        self.asked_at = 0.0
        self.live = self.replayed = self.duplicates = self.out_of_order = 0
        self.gap_requests = self.foreign = 0
        self.snapshot = threading.Event()
        self.disconnected = None
        self.client = None

    def on_snapshot(self, data):
        with self.lock:
            if self.snapshot_seq is None:
                self.snapshot_seq = data["seq"]
                self.max_seq = data["seq"] if self.max_seq is None else max(self.max_seq, data["seq"])
                self.last_live_seq = data["seq"]
        self.snapshot.set()

    def on_update(self, data):
        seq, replayed = data["seq"], bool(data.get("replayed"))
        with self.lock:
            if data["campaign"].get("tenant_id") != self.tenant_id:
                self.foreign += 1
                return
            if seq in self.seqs:
                self.duplicates += 1
            self.seqs.add(seq)
            self.holes.pop(seq, None)
            if replayed:
                self.replayed += 1
            else:
                self.probe.lags.append(time.time() - datetime.fromisoformat(data["timestamp"]).timestamp())
                self.live += 1
                self.live_seqs.add(seq)
                if seq < self.last_live_seq:
                    self.out_of_order += 1
                self.last_live_seq = max(self.last_live_seq, seq)
            if self.max_seq is not None and seq > self.max_seq + 1:
                now = time.monotonic()
                for missing in range(self.max_seq + 1, seq):
                    self.holes.setdefault(missing, now)
            self.max_seq = seq if self.max_seq is None else max(self.max_seq, seq)

    def ask_for_old_holes(self, now):
        """Emit ``replay`` after the oldest hole once it outlived the grace period (not too often)."""
        with self.lock:
            old = [seq for seq, since in self.holes.items() if now - since >= GAP_GRACE_SECONDS]
            if not old or now - self.asked_at < GAP_ASK_AGAIN_SECONDS:
                return
            self.asked_at = now
            self.gap_requests += 1
            after = min(old) - 1
        if self.client is not None:
            with contextlib.suppress(Exception):  # a disconnected client: counted elsewhere
                self.client.emit("replay", {"after_seq": after})

    def on_disconnect(self, *args):
        self.disconnected = {"at": time.time(), "reason": str(args[0]) if args else ""}


class Probe:
    """A child's timing records since the last ``mark``: delivery lag of live updates, ping gaps."""

    def __init__(self):
        self.lags = []  # seconds from the update's timestamp (worker, wall clock) to its handler here
        self.ping_gaps = []  # seconds between two Engine.IO PINGs of one client

    def take(self):
        lags, self.lags = self.lags, []
        gaps, self.ping_gaps = self.ping_gaps, []
        return lags, gaps


def record_pings(client, state, probe):
    """Record when the server's PINGs reach a client (gaps show a load generator falling behind).

    The clients are ``support.OrderedClient``: python-engineio's client would start a thread for
    every received message, and with thousands of clients the load generator starves, stops
    answering the server's pings in time and gets disconnected. Run inline, handlers see the
    messages in wire order (so "out of order" measures the server) and cost only the parsing.
    The handlers here only record, so they never block the read loop.
    """
    receive = client.eio._receive_packet

    def receive_packet(pkt):
        if pkt.packet_type == engineio_packet.PING:
            now = time.monotonic()
            if state.last_ping is not None:
                probe.ping_gaps.append(now - state.last_ping)
            state.last_ping = now
        return receive(pkt)

    client.eio._receive_packet = receive_packet


def tolerate_late_pings(client):
    """Give up on a silent server after PING_INTERVAL + PING_TIMEOUT, as the JavaScript client does.

    python-engineio's client reads with a timeout of interval + timeout (50 s by default) but its
    write loop gives up after max(interval, timeout) + 5 s (35 s) with nothing to send, and it
    only sends PONGs: a PING more than 5 s late ends the connection. The JavaScript client (and
    so every browser) waits interval + timeout. Raising the client's ``ping_timeout`` right after
    the handshake (before the write loop starts) makes the write loop wait that long too.
    """
    eio = client.eio
    on_connect = eio.handlers["connect"]

    def connected():
        eio.ping_timeout = max(eio.ping_timeout, eio.ping_interval + eio.ping_timeout - 5)
        return on_connect()

    eio.handlers["connect"] = connected


def watch_holes(states, stop):
    """Child's thread: every client asks for holes older than the grace period, as a real one would."""
    while not stop.wait(0.25):
        now = time.monotonic()
        for state in states:
            if state.holes:
                state.ask_for_old_holes(now)


def client_process(pipe, url, share, connect_threads, strict_pings):
    """Child: connect ``share`` ((tenant, token) pairs); answer ``mark``/``verify``/``close``."""

    common.raise_open_files_limit()
    probe = Probe()
    states = [ClientState(tenant_id, probe) for tenant_id, _ in share]
    errors, retries, durations = [], [], []

    def connect(index):
        _, token = share[index]
        state = states[index]
        for attempt in range(3):
            # websocket-client validates every text frame's UTF-8 in pure Python (~0.3 ms for one
            # update) unless wsaccel is installed: most of a client's CPU. The server is trusted here.
            client = support.OrderedClient(reconnection=False, websocket_extra_options={"skip_utf8_validation": True})
            record_pings(client, state, probe)
            if not strict_pings:
                tolerate_late_pings(client)
            client.on("campaign_snapshot", state.on_snapshot)
            client.on("campaign_update", state.on_update)
            client.on("disconnect", state.on_disconnect)
            state.client = client
            began = time.monotonic()
            try:
                client.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=30)
                if not state.snapshot.wait(30):
                    raise TimeoutError("no campaign_snapshot within 30 s")
                durations.append(time.monotonic() - began)
                return
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with contextlib.suppress(Exception):
                    client.disconnect()
                state.client = None
                reason = f"{exc!r} after {time.monotonic() - began:.1f} s"
                (errors if attempt == 2 else retries).append(reason)
                time.sleep(0.5)  # back-off before the next attempt

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=connect_threads) as pool:
        list(pool.map(connect, range(len(states))))
    stop_watching = threading.Event()
    threading.Thread(target=watch_holes, args=(states, stop_watching), name="holes", daemon=True).start()
    pipe.send(
        {
            "connected": sum(1 for s in states if s.client is not None),
            "errors": errors[:5],
            "error_count": len(errors),
            "retries": retries[:5],
            "retry_count": len(retries),
            "connect_seconds": time.monotonic() - started,
            "durations": durations,
        }
    )
    while True:
        command = pipe.recv()
        if command == "mark":
            lags, gaps = probe.take()
            pipe.send(
                {
                    "lags": lags,
                    "ping_gaps": gaps,
                    "disconnected": sum(1 for s in states if s.disconnected),
                    "updates": sum(s.live + s.replayed for s in states),
                    "connected": sum(1 for s in states if s.client is not None and s.client.connected),
                    "gap_requests": sum(s.gap_requests for s in states),
                }
            )
        elif isinstance(command, tuple) and command[0] == "verify":
            pipe.send(verify(states, *command[1:]))
        elif command == "close":
            stop_watching.set()
            with ThreadPoolExecutor(max_workers=16) as pool:
                list(
                    pool.map(
                        lambda s: s.client.disconnect() if s.client is not None and s.client.connected else None, states
                    )
                )
            pipe.send({"closed": True})
            return


def verify(states, stored_by_tenant, timeout):
    """Wait for the final state, compare received and stored seqs, replay what is missing."""
    active = [s for s in states if s.client is not None]
    last = {tenant_id: (seqs[-1] if seqs else 0) for tenant_id, seqs in stored_by_tenant.items()}

    def reached_final():
        return all(s.max_seq is not None and s.max_seq >= last[s.tenant_id] for s in active if s.client.connected)

    with contextlib.suppress(AssertionError):  # the clients still behind are counted below
        support.wait_until(reached_final, timeout, 0.05, "every client to see its tenant's last seq")
    reached = sum(1 for s in active if s.max_seq is not None and s.max_seq >= last[s.tenant_id])

    def missing(state):
        with state.lock:
            return sorted(
                seq for seq in stored_by_tenant[state.tenant_id] if seq > state.snapshot_seq and seq not in state.seqs
            )

    before = {id(s): missing(s) for s in active}

    def final_replay(state):
        gaps = before[id(state)]
        if not gaps or not state.client.connected:
            return None
        answer = None
        for _ in range(15):
            try:
                answer = state.client.call("replay", {"after_seq": gaps[0] - 1}, timeout=30)
            except Exception as exc:  # noqa: BLE001
                return repr(exc)
            if not (isinstance(answer, dict) and answer.get("error") == "rate_limited"):
                break
            time.sleep(1.1)  # the per-connection budget refills at SOCKET_EVENT_RATE (1/s)
        with contextlib.suppress(AssertionError):
            support.wait_until(lambda: not missing(state), 30, 0.05, "the replayed updates")
        return answer

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(final_replay, active))
    after = {id(s): missing(s) for s in active}
    expected = sum(len([q for q in stored_by_tenant[s.tenant_id] if q > s.snapshot_seq]) for s in active)
    lost_live = clients_with_live_losses = 0
    for s in active:
        with s.lock:
            lost = sum(1 for q in stored_by_tenant[s.tenant_id] if q > s.snapshot_seq and q not in s.live_seqs)
        lost_live += lost
        clients_with_live_losses += 1 if lost else 0
    extra = 0
    for s in active:
        with s.lock:
            extra += len(s.seqs - set(stored_by_tenant[s.tenant_id]))
    examples = [
        {
            "tenant": s.tenant_id,
            "snapshot_seq": s.snapshot_seq,
            "missing_before": before[id(s)][:10],
            "missing_after": after[id(s)][:10],
            "replay_answer": str(answer)[:200],
            "disconnected": s.disconnected,
        }
        for s, answer in zip(active, answers)
        if before[id(s)]
    ][:5]
    return {
        "clients": len(active),
        "connected_at_end": sum(1 for s in active if s.client.connected),
        "disconnects": [s.disconnected for s in active if s.disconnected][:5],
        "disconnected_count": sum(1 for s in active if s.disconnected),
        "reached_final_state": reached,
        "expected_updates": expected,
        "live": sum(s.live for s in active),
        "replayed": sum(s.replayed for s in active),
        "duplicates": sum(s.duplicates for s in active),
        "out_of_order": sum(s.out_of_order for s in active),
        "foreign_tenant_updates": sum(s.foreign for s in active),
        "gap_requests": sum(s.gap_requests for s in active),
        "lost_live": lost_live,
        "clients_with_live_losses": clients_with_live_losses,
        "clients_missing_before_final_replay": sum(1 for s in active if before[id(s)]),
        "missing_before_final_replay": sum(len(before[id(s)]) for s in active),
        "clients_missing_after_final_replay": sum(1 for s in active if after[id(s)]),
        "connected_clients_missing_after_final_replay": sum(1 for s in active if after[id(s)] and not s.disconnected),
        "missing_after_final_replay": sum(len(after[id(s)]) for s in active),
        "unknown_seqs": extra,
        "examples": examples,
    }


class Clients:
    """The child processes holding the clients."""

    def __init__(self, url, credentials, per_process, connect_threads, strict_pings):
        self.count = len(credentials)
        n_procs = max(1, math.ceil(self.count / per_process))
        context = multiprocessing.get_context("spawn")
        self.children = []
        for p in range(n_procs):
            share = credentials[p::n_procs]
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=client_process,
                name=f"soak-clients-{p}",
                daemon=True,
                args=(child_end, url, share, connect_threads, strict_pings),
            )
            process.start()
            self.children.append((process, parent_end))

    def ask(self, command, timeout):
        for _, pipe in self.children:
            pipe.send(command)
        return [common.receive_from_child(process, pipe, timeout) for process, pipe in self.children]

    def ready(self, timeout):
        return [common.receive_from_child(process, pipe, timeout) for process, pipe in self.children]

    def rss_mb(self):
        return sum(common.rss_mb(process.pid) or 0 for process, _ in self.children)

    def cpu_seconds(self):
        return sum(common.process_cpu_seconds(process.pid) or 0 for process, _ in self.children)

    def close(self):
        with contextlib.suppress(Exception):
            self.ask("close", 120)
        for process, _ in self.children:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(10)


# the run ------------------------------------------------------------------------------


def connected_clients(port):
    """The server's ``campaign_live_connected_clients`` by transport, from its /metrics."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        body = connection.getresponse().read().decode()
    except OSError:
        return None
    finally:
        connection.close()
    return {transport: int(float(value)) for transport, value in CONNECTED_RE.findall(body)}


def log_problems(process):
    """WARNING/ERROR lines of a process's log (count and the first few)."""
    lines = [
        line for line in process.log().splitlines() if " WARNING " in line or " ERROR " in line or "Traceback" in line
    ]
    return {"count": len(lines), "first": lines[:5]}


def memory_growth(samples, key, window):
    """Average of the first and of the last ``window`` seconds of samples, growth in MB and %."""
    values = [(s["t"], s[key]) for s in samples if s[key] is not None]
    if not values:
        return None
    end = values[-1][0]
    first = [v for t, v in values if t < window]
    last = [v for t, v in values if t >= end - window]
    first_avg, last_avg = sum(first) / len(first), sum(last) / len(last)
    return {
        "first_avg_mb": first_avg,
        "last_avg_mb": last_avg,
        "growth_mb": last_avg - first_avg,
        "growth_percent": 100 * (last_avg - first_avg) / first_avg if first_avg else None,
        "min_mb": min(v for _, v in values),
        "max_mb": max(v for _, v in values),
        "first_samples": len(first),
        "last_samples": len(last),
    }


def measure(stack, args):
    with Connection(stack.broker_url) as connection:
        # Declared before anything is published: an exchange without a bound queue drops messages.
        declare_topology(connection, WORKER_QUEUE)
    server = stack.start_server()
    worker = stack.start_worker(wait=False)  # its "consuming" line is INFO: readiness is checked below
    limits = {
        "bench": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "server": common.open_files_limit(server.pid),
        "worker": common.open_files_limit(worker.pid),
    }
    tenant_ids = [stack.create_tenant(f"soak-t{i:02d}") for i in range(args.tenants)]
    campaigns = [(tenant_ids[i % len(tenant_ids)], f"soak-c{i:03d}") for i in range(args.campaigns)]
    with stack.publisher() as publisher:
        for tenant_id, campaign_id in campaigns:
            event = make_event(
                tenant_id,
                campaign_id,
                "campaign_started",
                {"name": f"Soak {campaign_id}", "total_messages": 100_000_000},
            )
            event["occurred_at"] = at(-1)
            publisher.publish(event)

    common.wait_for_campaigns(stack, worker, len(campaigns), "the worker to apply the setup events")

    # The server opens its message-queue publisher lazily on the first emit; one client first
    # (see bench/latency.py connect_clients), then the crowd.
    stack.client(tenant_ids[0]).close()
    credentials = [
        (
            tenant_ids[i % len(tenant_ids)],
            stack.token(tenant_ids[i % len(tenant_ids)], ttl=int(args.duration) + 7200, subject=f"soak-{i}"),
        )
        for i in range(args.clients)
    ]
    connect_started = time.monotonic()
    server_cpu_before_connect = common.process_cpu_seconds(server.pid)
    rss_before_connect = {"server": common.rss_mb(server.pid), "worker": common.rss_mb(worker.pid)}
    clients = Clients(server.url, credentials, args.clients_per_process, args.connect_threads, args.strict_python_pings)
    traffic = None
    broker = Connection(stack.broker_url)
    try:
        ready = clients.ready(120 + args.clients * 0.5)
        connect_seconds = time.monotonic() - connect_started
        connected = sum(r["connected"] for r in ready)
        connect = {
            "requested": args.clients,
            "connected": connected,
            "seconds": connect_seconds,
            "errors": sum(r["error_count"] for r in ready),
            "error_examples": [e for r in ready for e in r["errors"]][:5],
            "retries": sum(r["retry_count"] for r in ready),
            "retry_examples": [e for r in ready for e in r["retries"]][:5],
            "connect_ms": stats(sorted(1000 * d for r in ready for d in r["durations"])),
            "server_cpu_seconds": common.process_cpu_seconds(server.pid) - server_cpu_before_connect,
            "server_metric": connected_clients(server.port),
            "rss_before_connect_mb": rss_before_connect,
            "rss_after_connect_mb": {"server": common.rss_mb(server.pid), "worker": common.rss_mb(worker.pid)},
            "client_processes": len(clients.children),
        }
        print(
            f"connected {connected:,} of {args.clients:,} clients in {connect_seconds:.1f} s "
            f"({len(clients.children)} processes; errors {connect['errors']}, retries {connect['retries']}; "
            f"server reports {connect['server_metric']})",
            flush=True,
        )
        if connect["errors"]:
            print(f"  connect errors, e.g. {connect['error_examples'][:2]}", flush=True)
        if connected == 0:
            raise BenchFailure(f"no client could connect: {connect['error_examples']}")

        traffic = Traffic(stack, campaigns, args.rate, args.status_interval)
        samples = []
        pacing = threading.Event()  # never set: its wait() paces the samples
        previous = None
        traffic.start()
        traffic.ready.wait(30)
        if traffic.error:
            raise BenchFailure(f"traffic publisher: {traffic.error!r}")
        started = time.monotonic()
        k = 0
        while True:
            due = started + k * args.sample_interval
            if due > started + args.duration + 1e-6:
                break
            pacing.wait(max(due - time.monotonic(), 0))
            if traffic.error:
                raise BenchFailure(f"traffic publisher: {traffic.error!r}")
            for name, process in (("server", server), ("worker", worker)):
                if not process.alive():
                    raise BenchFailure(f"the {name} exited during the soak:\n{process.log()[-3000:]}")
            marks = clients.ask("mark", 60)
            sample = {
                "t": time.monotonic() - started,
                "server_rss_mb": common.rss_mb(server.pid),
                "worker_rss_mb": common.rss_mb(worker.pid),
                "clients_rss_mb": clients.rss_mb(),
                "server_cpu": common.process_cpu_seconds(server.pid),
                "worker_cpu": common.process_cpu_seconds(worker.pid),
                "clients_cpu": clients.cpu_seconds(),
                "published": traffic.published,
                "received": sum(m["updates"] for m in marks),
                "clients_connected": sum(m["connected"] for m in marks),
                "gap_requests": sum(m["gap_requests"] for m in marks),
                "lag_ms": stats(sorted(1000 * lag for m in marks for lag in m["lags"])),
                "ping_gap_s": stats(sorted(gap for m in marks for gap in m["ping_gaps"])),
                "server_connected_metric": connected_clients(server.port),
                "loadavg_1min": os.getloadavg()[0],
                "queue_depth": common.queue_depth(broker, WORKER_QUEUE),
            }
            sample["applied"], sample["batches"] = stack.sql(
                "SELECT count(*), count(DISTINCT applied_at) FROM applied_events"
            )[0]
            if previous is not None:
                span = sample["t"] - previous["t"]
                sample["server_cpu_percent"] = 100 * (sample["server_cpu"] - previous["server_cpu"]) / span
                sample["worker_cpu_percent"] = 100 * (sample["worker_cpu"] - previous["worker_cpu"]) / span
                sample["clients_cpu_percent"] = 100 * (sample["clients_cpu"] - previous["clients_cpu"]) / span
                sample["published_per_s"] = (sample["published"] - previous["published"]) / span
                sample["received_per_s"] = (sample["received"] - previous["received"]) / span
                sample["applied_per_s"] = (sample["applied"] - previous["applied"]) / span
                batches = sample["batches"] - previous["batches"]
                sample["mean_batch"] = (sample["applied"] - previous["applied"]) / batches if batches else None
            samples.append(sample)
            previous = sample
            print(
                f"  t={sample['t']:6.1f} s  server {sample['server_rss_mb']:.1f} MB  worker "
                f"{sample['worker_rss_mb']:.1f} MB  clients connected {sample['clients_connected']}  "
                f"published {sample['published']:,}  received {sample['received']:,}  lag p99 "
                f"{fmt(sample['lag_ms']['p99'], 0)} ms  ping gap max {fmt(sample['ping_gap_s']['max'])} s",
                flush=True,
            )
            k += 1
        traffic.stop()
        if traffic.error:
            raise BenchFailure(f"traffic publisher: {traffic.error!r}")
        traffic_seconds = time.monotonic() - started
        stopped_at = time.monotonic()
        backlog = common.queue_depth(broker, WORKER_QUEUE)

        # Drain: everything published is applied.
        published_total = len(campaigns) + traffic.published

        def applied_all():
            return stack.sql("SELECT count(*) FROM applied_events")[0][0] >= published_total

        try:
            support.wait_until(applied_all, args.final_timeout, 0.1, "the worker to apply everything")
            drained_after = time.monotonic() - stopped_at
        except AssertionError:
            drained_after = None

        # The final state: every campaign completed (status events go at once and end any merge).
        with stack.publisher() as publisher:
            for tenant_id, campaign_id in campaigns:
                event = make_event(tenant_id, campaign_id, "campaign_completed", {})
                event["occurred_at"] = at(1)
                publisher.publish(event)

        def final_stored():
            return (
                stack.sql(
                    "SELECT count(*) FILTER (WHERE status <> 'completed' OR emit_due_at IS NOT NULL) FROM campaigns"
                )[0][0]
                == 0
            )

        try:
            support.wait_until(final_stored, args.final_timeout, 0.1, "every campaign to be completed")
            final_state_reached = True
        except AssertionError:
            final_state_reached = False  # reported; the clients are compared with what is stored so far
            print(f"WARNING: the final state was not stored within {args.final_timeout:.0f} s", flush=True)
        stored_by_tenant = {tenant_id: [] for tenant_id in tenant_ids}
        for tenant_id, seq in stack.sql("SELECT tenant_id, seq FROM campaign_updates ORDER BY tenant_id, seq"):
            stored_by_tenant[tenant_id].append(seq)
        checks = clients.ask(("verify", stored_by_tenant, args.final_timeout), args.final_timeout * 3 + 120)
        final_rss = {"server": common.rss_mb(server.pid), "worker": common.rss_mb(worker.pid)}
        cpu_after = {"server": common.process_cpu_seconds(server.pid), "worker": common.process_cpu_seconds(worker.pid)}
    finally:
        if traffic is not None:
            traffic.stop()
        clients.close()
        broker.release()

    delivery = {key: sum(c[key] for c in checks) for key in checks[0] if isinstance(checks[0][key], int)}
    delivery["examples"] = [e for c in checks for e in c["examples"]][:5]
    delivery["disconnect_examples"] = [e for c in checks for e in c["disconnects"]][:5]
    window = min(60.0, args.duration / 2)
    first, last = samples[0], samples[-1]
    return {
        "clients_requested": args.clients,
        "open_files_limit": limits,
        "connect": connect,
        "traffic": {
            "seconds": traffic_seconds,
            "message_sent": traffic.sent,
            "status_events": traffic.statuses,
            "published_with_setup_and_final": published_total + len(campaigns),
            "achieved_rate": traffic.published / traffic_seconds,
            "worker_queue_depth_at_end": backlog,
            "drained_seconds_after_stop": drained_after,
            "updates_stored": sum(len(v) for v in stored_by_tenant.values()),
            "final_state_reached": final_state_reached,
        },
        "memory_window_seconds": window,
        "memory": {
            "server": memory_growth(samples, "server_rss_mb", window),
            "worker": memory_growth(samples, "worker_rss_mb", window),
            "clients": memory_growth(samples, "clients_rss_mb", window),
            "after_final_state": final_rss,
        },
        "cpu_percent_of_one_core": {
            "server": 100 * (last["server_cpu"] - first["server_cpu"]) / max(last["t"] - first["t"], 1e-9),
            "worker": 100 * (last["worker_cpu"] - first["worker_cpu"]) / max(last["t"] - first["t"], 1e-9),
            "server_cpu_seconds_total": cpu_after["server"],
            "worker_cpu_seconds_total": cpu_after["worker"],
        },
        "delivery": delivery,
        "log_problems": {"server": log_problems(server), "worker": log_problems(worker)},
        "samples": samples,
        "worker_settings": common.worker_settings(stack),
    }


def stats(values):
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    return {
        "count": len(values),
        "p50": common.percentile(values, 0.5),
        "p99": common.percentile(values, 0.99),
        "max": values[-1],
    }


def fmt(value, digits=1):
    return "-" if value is None else f"{value:,.{digits}f}"


def report(result, args, info):
    samples = result["samples"]
    rows = [
        [
            fmt(s["t"], 0),
            fmt(s["server_rss_mb"]),
            fmt(s["worker_rss_mb"]),
            fmt(s["clients_rss_mb"], 0),
            fmt(s.get("server_cpu_percent"), 0),
            fmt(s.get("worker_cpu_percent"), 0),
            fmt(s.get("clients_cpu_percent"), 0),
            s["clients_connected"],
            (s["server_connected_metric"] or {}).get("websocket", "-"),
            fmt(s.get("published_per_s"), 0),
            fmt(s.get("applied_per_s"), 0),
            fmt(s.get("mean_batch"), 0),
            s["queue_depth"],
            fmt(s.get("received_per_s"), 0),
            fmt(s["lag_ms"]["p50"], 0),
            fmt(s["lag_ms"]["p99"], 0),
            fmt(s["lag_ms"]["max"], 0),
            fmt(s["ping_gap_s"]["max"], 1),
            s["gap_requests"],
            fmt(s["loadavg_1min"], 1),
        ]
        for s in samples
    ]
    print()
    print(
        common.table(
            [
                "t (s)",
                "server RSS MB",
                "worker RSS MB",
                "clients RSS MB",
                "server CPU %",
                "worker CPU %",
                "clients CPU %",
                "clients up",
                "server sockets",
                "published/s",
                "applied/s",
                "batch",
                "queue",
                "updates rcvd/s",
                "lag p50 ms",
                "lag p99 ms",
                "lag max ms",
                "ping gap max s",
                "gap replays",
                "load",
            ],
            rows,
        )
    )
    print()
    window = result["memory_window_seconds"]
    rows = []
    for name in ("server", "worker", "clients"):
        m = result["memory"][name]
        if m:
            rows.append(
                [
                    name,
                    fmt(m["first_avg_mb"]),
                    fmt(m["last_avg_mb"]),
                    f"{m['growth_mb']:+.1f}",
                    f"{m['growth_percent']:+.1f}%",
                    fmt(m["min_mb"]),
                    fmt(m["max_mb"]),
                    f"{m['first_samples']}/{m['last_samples']}",
                ]
            )
    print(
        common.table(
            [
                "RSS (MB)",
                f"first {window:.0f} s avg",
                f"last {window:.0f} s avg",
                "growth MB",
                "growth %",
                "min",
                "max",
                "samples",
            ],
            rows,
        )
    )
    print()
    d, t, c = result["delivery"], result["traffic"], result["connect"]
    p99s = [s["lag_ms"]["p99"] for s in samples if s["lag_ms"]["p99"] is not None]
    lag_range = f"{min(p99s):,.0f} - {max(p99s):,.0f}" if p99s else "-"
    rows = [
        ["clients connected / requested", f"{c['connected']:,} / {c['requested']:,}"],
        ["connect errors / retries", f"{c['errors']} / {c['retries']}"],
        [
            "connect + snapshot p50 / p99 / max (ms)",
            f"{fmt(c['connect_ms']['p50'], 0)} / {fmt(c['connect_ms']['p99'], 0)} / {fmt(c['connect_ms']['max'], 0)}",
        ],
        ["clients disconnected during the run", f"{d['disconnected_count']:,}"],
        ["clients that saw their tenant's final seq", f"{d['reached_final_state']:,}"],
        ["updates expected (stored after snapshot x clients)", f"{d['expected_updates']:,}"],
        ["received live / replayed", f"{d['live']:,} / {d['replayed']:,}"],
        ["not received live (at-most-once losses; clients)", f"{d['lost_live']:,} ({d['clients_with_live_losses']:,})"],
        ["replay requests for holes older than 1 s", f"{d['gap_requests']:,}"],
        [
            "duplicates / out of order / other tenant's",
            f"{d['duplicates']} / {d['out_of_order']} / {d['foreign_tenant_updates']}",
        ],
        [
            "clients missing updates before the final replay",
            f"{d['clients_missing_before_final_replay']:,} ({d['missing_before_final_replay']:,} updates)",
        ],
        [
            "clients missing updates after the final replay",
            f"{d['clients_missing_after_final_replay']:,} ({d['missing_after_final_replay']:,} updates; "
            f"{d['connected_clients_missing_after_final_replay']:,} of them still connected)",
        ],
        ["worker emit -> client handler lag, p99 per sample (ms)", lag_range],
        ["final state stored (every campaign completed)", "yes" if t["final_state_reached"] else "NO"],
    ]
    print(common.table(["delivery", "value"], rows))
    print()
    print(
        f"traffic: {t['message_sent']:,} message_sent + {t['status_events']} status events in {t['seconds']:.0f} s "
        f"({t['achieved_rate']:.0f}/s, target {args.rate:.0f}/s); worker queue depth at the end "
        f"{t['worker_queue_depth_at_end']}, drained {fmt(t['drained_seconds_after_stop'], 1)} s after; "
        f"{t['updates_stored']:,} updates stored"
    )
    cpu = result["cpu_percent_of_one_core"]
    lim = result["open_files_limit"]
    before, after = c["rss_before_connect_mb"]["server"], c["rss_after_connect_mb"]["server"]
    per_connection_kb = fmt(1024 * (after - before) / max(c["connected"], 1), 0) if before and after else "-"
    print(
        f"CPU over the traffic (% of one core): server {cpu['server']:.0f}%, worker {cpu['worker']:.0f}%; "
        f"nproc {info['nproc']}, load average at start {info['loadavg_at_start'][0]:.1f}"
    )
    print(
        f"open files limit: bench {lim['bench'][0]} (hard {lim['bench'][1]}), server {lim['server']}, "
        f"worker {lim['worker']}; connect phase: server {c['server_cpu_seconds']:.1f} CPU s "
        f"({1000 * c['server_cpu_seconds'] / max(c['connected'], 1):.1f} ms per connection), RSS "
        f"{fmt(c['rss_before_connect_mb']['server'])} -> {fmt(c['rss_after_connect_mb']['server'])} MB "
        f"({per_connection_kb} KB per connection)"
    )
    for name, problems in result["log_problems"].items():
        if problems["count"]:
            print(f"{name} log: {problems['count']} warning/error lines, e.g. {problems['first'][:2]}")
    if d["examples"]:
        print(f"clients with misses, e.g.: {d['examples'][:2]}")
    if d["disconnect_examples"]:
        print(f"disconnects, e.g.: {d['disconnect_examples'][:2]}")


def main(argv=None):
    args = parse_args(argv)
    limit = common.raise_open_files_limit()  # before any process starts: they all inherit it
    info = common.machine()
    print(
        f"soak: {args.clients:,} clients (websocket, {args.clients_per_process} per process), "
        f"{args.rate:,.0f} message_sent/s over {args.campaigns} campaigns in {args.tenants} tenants + a status "
        f"event every {args.status_interval:g} s, for {args.duration:.0f} s; RLIMIT_NOFILE {limit[0]}; "
        f"nproc {info['nproc']}, load average {info['loadavg_at_start'][0]:.1f}; clients give up on a silent "
        f"server after {'python-engineio' if args.strict_python_pings else 'JS-client'} timing",
        flush=True,
    )
    settings = {"LOG_LEVEL": "WARNING", "MAX_CONNECTIONS_PER_TENANT": max(2000, args.clients)}
    with common.environment("soak", keep_logs=args.keep_logs, **settings) as stack:
        result = measure(stack, args)
        d = result["delivery"]
        ok = (
            d["clients_missing_after_final_replay"] == 0
            and result["traffic"]["final_state_reached"]
            and result["connect"]["connected"] == args.clients
            and d["disconnected_count"] == 0
        )
        if not ok and not args.keep_logs:
            kept = shutil.copytree(stack.log_dir, tempfile.mkdtemp(prefix="soak-logs-"), dirs_exist_ok=True)
            result["logs_kept_in"] = str(kept)
    report(result, args, info)
    if result.get("logs_kept_in"):
        print(f"server and worker logs kept in {result['logs_kept_in']}")
    path = common.write_results(
        args.output, {"benchmark": "soak", "args": vars(args), "machine": info, "ok": ok, **result}
    )
    if ok:
        print("result: OK: every client stayed connected and got every update of its tenant")
    else:
        print("result: NOT OK: see the connect and delivery rows above")
    print(f"results: {path.relative_to(common.REPO)}")
    return 0 if ok else 1


if __name__ == "__main__":
    common.run(main)
