"""Server CPU to keep dashboards fresh: REST polling with ETags vs Socket.IO push.

What is measured
    One server (``python app.py``) and one worker (``python -m worker``), both LOG_LEVEL=WARNING,
    with API_RATE_LIMIT and MAX_CONNECTIONS_PER_TENANT raised so that neither limit interferes,
    on a fresh database and vhost. 10 tenants, 20 running campaigns (2 per tenant). A background
    thread publishes ~200 events/s for the whole run (``campaign_started`` for the 20 campaigns
    first, then ``message_sent`` with every 20th a ``message_failed``, round-robin over the
    campaigns), so both phases see exactly the same campaign traffic.

    0. idle:   traffic only, no dashboard, before any Socket.IO connection; repeated after phase B
               ("listener on": the server then consumes the Socket.IO message queue with no client).
    A. polling: N dashboards (dashboard i belongs to tenant i mod 10, each with its own JWT) each
               ``GET /api/campaigns`` every 10 s with ``If-None-Match`` set to its last ETag. The
               polls are spread evenly over the 10 s (dashboard i is due at i/N of the interval)
               and made by a small pool of threads, each with one keep-alive ``http.client`` connection.
               The first full cycle (every dashboard's first poll, opening the connections) is the
               set-up; the measurement window starts after it. Reported: polls/s achieved vs the
               expected N/10, 200 vs 304 answers, how late the polls started (the load generator
               must keep up).
    B. socket: N python-socketio clients (``socketio.Client``, websocket transport, one JWT each),
               run in child processes (``--clients-per-process`` each, default 125, since 1,000
               clients as threads of one interpreter is heavy) connect and get their snapshot;
               set-up is from the start of the children until every client is connected. After a
               1 s settle, the window counts the ``campaign_update`` events received. The expected
               count is, per tenant, the growth of ``tenants.last_seq`` times its clients; "seq gaps"
               are updates a client never got, and disconnections the bench did not ask for are counted
               with their reason. The clients get the JavaScript client's heartbeat tolerance (see
               ``TolerantEngineIO``; ``--stock-heartbeat`` keeps python-engineio's stricter one).

    For each window the SERVER's CPU seconds (utime + stime of ``/proc/<pid>/stat``, all threads)
    are read at its start and end; the worker's likewise (the traffic is the same, so it should be
    about equal in both phases). "CPU per dashboard-minute" = server CPU s / (N x window minutes).

How to read it
    The ratio is polling / socket server CPU per dashboard-minute; the issue's target is that the
    socket path costs at least 10x less. When the polls fall behind (achieved < 95 % of N/10 per
    second: the server, or the machine, cannot keep up) the measured polling CPU is a lower bound and
    a projection is printed too: server CPU per poll served x the expected poll rate. python-socketio
    starts consuming the Socket.IO message queue at the first Engine.IO connection, so the polling
    window does not include that cost and the socket window does (the "listener on" idle row shows
    it). Note what each mode gives for that CPU: polling every 10 s shows data up to 10 s old; the
    socket path delivers within THROTTLE_SECONDS + 0.5 s. Each tenant's ``seq`` grows about once a
    second (2 campaigns, one merged update per THROTTLE_SECONDS), and the ETag covers it, so nearly
    every poll is a 200. The server, worker, PostgreSQL, RabbitMQ and the load generator share the
    machine's cores (see nproc); the load generator's own CPU is printed. Results are also written
    to ``bench/results/polling_vs_socket.json``.

Usage
    .venv/bin/python bench/polling_vs_socket.py [--dashboards N] [--duration S] [--quick]
"""

import argparse
import http.client
import json
import math
import multiprocessing
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kombu import Connection  # noqa: E402

from bench import common  # noqa: E402
from bench.common import BenchFailure, support  # noqa: E402
from campaigns.publisher import make_event  # noqa: E402
from worker.queues import declare_topology  # noqa: E402

WORKER_QUEUE = "campaign.events.worker"
CONNECT_ATTEMPTS = 5
MIN_CONNECTED = 0.9  # the socket phase measures with the clients that connected, if at least this share
TARGET_RATIO = 10.0
TENANTS = 10
CAMPAIGNS = 20
SETTINGS = {
    "LOG_LEVEL": "WARNING",
    "API_RATE_LIMIT": "100000 per minute",
    "MAX_CONNECTIONS_PER_TENANT": "100000",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dashboards", type=int, default=1000, help="dashboards in each phase (default 1000)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of each measurement window (default 60)")
    parser.add_argument("--interval", type=float, default=10.0,
                        help="seconds between polls of a dashboard (default 10)")
    parser.add_argument("--rate", type=float, default=200.0, help="campaign events published per second (default 200)")
    parser.add_argument("--idle", type=float, default=15.0,
                        help="seconds of the traffic-only window before the phases (default 15, 0 to skip)")
    parser.add_argument("--poll-threads", type=int, default=32, help="threads (sessions) making the polls (default 32)")
    parser.add_argument("--clients-per-process", type=int, default=125,
                        help="Socket.IO clients per child process (default 125)")
    parser.add_argument("--connect-threads", type=int, default=4,
                        help="clients each child process connects at a time (default 4)")
    parser.add_argument("--stock-heartbeat", action="store_true",
                        help="keep python-engineio's 35 s write-loop timeout instead of the JavaScript client's 50 s")
    parser.add_argument("--client", choices=sorted(CLIENT_PROCESSES), default="selector",
                        help="Socket.IO clients of phase B (default selector: see bench/selector_clients.py)")
    parser.add_argument("--stock-writes", action="store_true",
                        help="DIRECT_WEBSOCKET_WRITES=0: every packet through python-engineio's writer")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 dashboards, 15 s windows, 5 s idle")
    common.add_run_options(parser, "polling_vs_socket")
    args = parser.parse_args(argv)
    if args.quick:
        args.dashboards, args.duration, args.idle = 200, 15.0, 5.0
    if args.dashboards < TENANTS:
        parser.error(f"need at least {TENANTS} dashboards")
    return args


# campaign traffic ---------------------------------------------------------------------


class Traffic(common.PacedTraffic):
    """Progress events round-robin over the campaigns: ``message_sent``, every 20th ``message_failed``."""

    def __init__(self, stack, campaigns, rate):
        super().__init__(stack, rate, name="campaign-traffic", wait=0.005)
        self.campaigns = campaigns

    def events(self, n, elapsed):
        tenant_id, campaign_id = self.campaigns[n % len(self.campaigns)]
        if n % 20 == 19:
            kind, data = "message_failed", {"message_id": f"m-{n}", "error": "bench failure"}
        else:
            kind, data = "message_sent", {"message_id": f"m-{n}"}
        return [make_event(tenant_id, campaign_id, kind, data)]


# measuring ----------------------------------------------------------------------------


class Meter:
    """CPU seconds of the server and the worker, last-seq of every tenant, and time, at one moment."""

    def __init__(self, stack, server, worker, traffic):
        self.stack, self.server, self.worker, self.traffic = stack, server, worker, traffic

    def read(self):
        for process in (self.server, self.worker):
            if not process.alive():
                raise BenchFailure(f"{process.name} (pid {process.pid}) exited with {process.popen.returncode}:\n"
                                   f"{process.log()[-3000:]}")
        return {
            "at": time.monotonic(),
            "server": common.process_cpu_seconds(self.server.pid),
            "server_split": common.process_cpu_times(self.server.pid),
            "worker": common.process_cpu_seconds(self.worker.pid),
            "postgres": common.command_cpu_seconds("postgres"),
            "bench": time.process_time(),
            "machine": common.machine_cpu_times(),
            "loadavg": float(Path("/proc/loadavg").read_text().split()[0]),
            "published": self.traffic.count,
            "last_seq": dict(self.stack.sql("SELECT id, last_seq FROM tenants")),
            "packets": self.packets_sent(),
        }

    def packets_sent(self):
        """The server's Engine.IO packets sent so far, by path (sockets/fanout.py)."""
        with urllib.request.urlopen(f"{self.server.url}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        return {path: support.metric(text, "campaign_live_socketio_packets_sent_total", path=path)
                for path in ("direct", "queued")}

    @staticmethod
    def delta(before, after):
        seconds = after["at"] - before["at"]
        busy = after["machine"][0] - before["machine"][0]
        total = max(after["machine"][1] - before["machine"][1], 1)
        return {
            "seconds": seconds,
            "server_cpu": after["server"] - before["server"],
            "packets_sent": {path: after["packets"][path] - before["packets"][path] for path in after["packets"]},
            "server_user_cpu": after["server_split"][0] - before["server_split"][0],
            "server_system_cpu": after["server_split"][1] - before["server_split"][1],
            "worker_cpu": after["worker"] - before["worker"],
            "postgres_cpu": after["postgres"] - before["postgres"],
            "bench_cpu": after["bench"] - before["bench"],
            "machine_busy_percent": 100 * busy / total,
            "loadavg_1min_at_end": after["loadavg"],
            "events_published": after["published"] - before["published"],
            "updates_stored": {t: after["last_seq"][t] - before["last_seq"].get(t, 0) for t in after["last_seq"]},
        }


def sleep_until(moment):
    pause = moment - time.monotonic()
    if pause > 0:
        time.sleep(pause)


# phase A: polling ---------------------------------------------------------------------


def poll_thread(port, dashboards, indices, start, interval, count, end, results, stop_event):
    """Poll the dashboards ``indices`` (ascending) at their due times until ``end``; record every poll.

    One keep-alive ``http.client`` connection per thread (lighter than ``requests``: the load generator
    shares the machine with the server), reopened after an error or a ``Connection: close``.
    """
    connection = None
    etags = {}
    try:
        cycle = 0
        while not stop_event.is_set():
            for i in indices:
                due = start + cycle * interval + i * interval / count
                if due >= end or stop_event.is_set():
                    return
                sleep_until(due)
                _, token = dashboards[i]
                headers = {"Authorization": f"Bearer {token}"}
                if i in etags:
                    headers["If-None-Match"] = etags[i]
                began = time.monotonic()
                try:
                    if connection is None:
                        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    connection.request("GET", "/api/campaigns", headers=headers)
                    response = connection.getresponse()
                    body = response.read()
                    status = response.status
                    if status == 200:
                        etags[i] = response.getheader("ETag")
                        json.loads(body)  # a dashboard reads what it got
                    elif status == 304:
                        etags[i] = response.getheader("ETag", etags.get(i))
                    if response.will_close:
                        connection.close()
                        connection = None
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    status = f"error:{exc.__class__.__name__}"
                    if connection is not None:
                        connection.close()
                        connection = None
                done = time.monotonic()
                results.append((due, began, done, status))
            cycle += 1
    finally:
        if connection is not None:
            connection.close()


def run_polling(port, meter, dashboards, args):
    count, interval = len(dashboards), args.interval
    results = []
    stop_event = threading.Event()
    setup_before = meter.read()
    start = time.monotonic() + 0.5
    window_start = start + interval  # after the first full cycle: connections open, every dashboard has an ETag
    end = window_start + args.duration
    threads = []
    n_threads = min(args.poll_threads, count)
    for t in range(n_threads):
        indices = list(range(t, count, n_threads))
        thread = threading.Thread(
            target=poll_thread, name=f"poll-{t}", daemon=True,
            args=(port, dashboards, indices, start, interval, count, end, results, stop_event),
        )
        threads.append(thread)
        thread.start()
    try:
        sleep_until(window_start)
        before = meter.read()
        setup = Meter.delta(setup_before, before)
        while time.monotonic() < end:
            meter.traffic.check()
            time.sleep(min(1.0, max(end - time.monotonic(), 0)))
        after = meter.read()
    finally:
        stop_event.set()
        for thread in threads:
            thread.join(35)
    window = Meter.delta(before, after)
    in_window = [r for r in results if before["at"] <= r[2] < after["at"]]
    statuses = {}
    for r in in_window:
        statuses[str(r[3])] = statuses.get(str(r[3]), 0) + 1
    due_in_window = sum(1 for r in results if before["at"] <= r[0] < after["at"])
    lateness = sorted((r[1] - r[0]) * 1000 for r in in_window)
    latency = sorted((r[2] - r[1]) * 1000 for r in in_window)
    setup_polls = sum(1 for r in results if r[2] < before["at"])
    return {
        "mode": "polling",
        "dashboards": count,
        "window": window,
        "setup": {**setup, "polls": setup_polls,
                  "what": f"first {interval:g} s cycle: every dashboard's first poll, keep-alive connections opened"},
        "poll_threads": n_threads,
        "delivered": len(in_window),
        "expected_polls_per_second": count / interval,
        "achieved_polls_per_second": len(in_window) / window["seconds"],
        "polls_due_in_window": due_in_window,
        "statuses": statuses,
        "ok_200": statuses.get("200", 0),
        "not_modified_304": statuses.get("304", 0),
        "other": sum(v for k, v in statuses.items() if k not in ("200", "304")),
        "start_lateness_ms": stats(lateness),
        "response_ms": stats(latency),
    }


# phase B: Socket.IO -------------------------------------------------------------------


def client_process(pipe, url, credentials, connect_threads, stock_heartbeat):
    """Child process: connect Socket.IO clients, then answer ``mark`` with counts until ``close``."""
    import logging

    import socketio

    class TolerantEngineIO(support.OrderedEngineIOClient):
        """python-engineio's write loop gives up after max(ping_interval, ping_timeout) + 5 s (35 s) without
        anything to send, i.e. when a server ping comes > 5 s late; the JavaScript client waits
        ping_interval + ping_timeout (50 s). On a loaded machine the stricter rule drops clients the server
        still serves, so the bench's clients get the JavaScript client's tolerance (the read timeout, set
        before this loop starts, is already ping_interval + ping_timeout)."""

        def _write_loop(self):
            self.ping_timeout = self.ping_interval + self.ping_timeout - 5
            return super()._write_loop()

    class BenchClient(socketio.Client):
        def _engineio_client_class(self):
            return support.OrderedEngineIOClient if stock_heartbeat else TolerantEngineIO

    log_counts = {}

    class CountingHandler(logging.Handler):
        """The engine.io client's warnings and errors, counted instead of printed once per client."""

        def emit(self, record):
            key = f"{record.name}: {record.getMessage()[:80]}"
            log_counts[key] = log_counts.get(key, 0) + 1

    root = logging.getLogger()
    root.addHandler(CountingHandler(logging.WARNING))
    root.setLevel(logging.WARNING)

    count = len(credentials)
    disconnects = []  # (monotonic time, reason) of every disconnection the bench did not ask for
    closing = threading.Event()
    tallies = [common.SeqTally() for _ in range(count)]
    snapshots = [threading.Event() for _ in range(count)]
    clients = [None] * count
    errors = []
    retry_reasons = []
    durations = []

    def make(index):
        client = BenchClient(reconnection=False)
        client.bench_closing = False

        def on_snapshot(data):
            tallies[index].snapshot(data)
            snapshots[index].set()

        def on_disconnect(reason=None):
            if not closing.is_set() and not client.bench_closing:
                disconnects.append((time.monotonic(), str(reason)))

        client.on("campaign_update", tallies[index].update)
        client.on("campaign_snapshot", on_snapshot)
        client.on("disconnect", on_disconnect)
        return client

    def connect(index):
        _, token = credentials[index]
        for attempt in range(CONNECT_ATTEMPTS):
            client = make(index)
            began = time.monotonic()
            try:
                client.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=30)
                if not snapshots[index].wait(30):
                    raise TimeoutError("no campaign_snapshot within 30 s")
                clients[index] = client
                durations.append(time.monotonic() - began)
                return
            except Exception as exc:  # noqa: BLE001 - counted and reported
                if client.connected:
                    client.bench_closing = True
                    client.disconnect()
                reason = f"{exc!r} after {time.monotonic() - began:.1f} s"
                if attempt == CONNECT_ATTEMPTS - 1:
                    errors.append(reason)
                else:
                    retry_reasons.append(reason)
                    time.sleep(1.0 + attempt)

    def cpu():
        return common.process_cpu_seconds("self")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=connect_threads) as pool:
        list(pool.map(connect, range(count)))
    pipe.send({"connected": sum(1 for c in clients if c is not None), "errors": errors[:3],
               "error_count": len(errors), "retries": retry_reasons, "connect_seconds": time.monotonic() - started,
               "durations": durations,
               "cpu": cpu()})
    while True:
        command = pipe.recv()
        if command == "mark":
            pipe.send({**common.sum_tallies(tallies), "cpu": cpu(),
                       "connected": sum(1 for c in clients if c is not None and c.connected),
                       "connected_per_tenant": _per_tenant(
                           credentials, [1 if c is not None and c.connected else 0 for c in clients]),
                       "disconnects": list(disconnects),
                       "log_counts": dict(log_counts)})
        elif command == "close":
            closing.set()
            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(lambda c: c.disconnect() if c is not None and c.connected else None, clients))
            pipe.send({"closed": True})
            return


def selector_client_process(pipe, url, credentials, connect_threads, stock_heartbeat):
    """Child process with ``bench/selector_clients.py`` clients; the same protocol as ``client_process``."""
    from bench.selector_clients import SelectorClients

    group = SelectorClients(url, credentials, concurrency=connect_threads, attempts=CONNECT_ATTEMPTS)
    started = time.monotonic()
    group.connect_all()
    pipe.send({"connected": group.mark()["connected"], "errors": group.errors[:3], "error_count": len(group.errors),
               "retries": group.retries, "connect_seconds": time.monotonic() - started,
               "durations": group.durations, "cpu": common.process_cpu_seconds("self")})
    while True:
        command = pipe.recv()
        if command == "mark":
            pipe.send({**group.mark(), "cpu": common.process_cpu_seconds("self")})
        elif command == "close":
            group.close()
            pipe.send({"closed": True})
            return


CLIENT_PROCESSES = {"selector": selector_client_process, "python-socketio": client_process}
CLIENT_DESCRIPTIONS = {
    "selector": "bench/selector_clients.py: one selector thread per process reads all its websockets",
    "python-socketio": "python-socketio Client, a reader thread per connection",
}


def _per_tenant(credentials, updates):
    totals = {}
    for (tenant_id, _), n in zip(credentials, updates):
        totals[tenant_id] = totals.get(tenant_id, 0) + n
    return totals


def run_socket(url, meter, dashboards, args):
    count = len(dashboards)
    n_procs = max(1, math.ceil(count / args.clients_per_process))
    context = multiprocessing.get_context("spawn")
    children = []
    setup_before = meter.read()
    try:
        for p in range(n_procs):
            share = dashboards[p::n_procs]
            parent_end, child_end = context.Pipe()
            process = context.Process(target=CLIENT_PROCESSES[args.client], name=f"socket-clients-{p}", daemon=True,
                                      args=(child_end, url, share, args.connect_threads, args.stock_heartbeat))
            process.start()
            children.append((process, parent_end, share))
        ready = []
        for process, pipe, _ in children:
            ready.append(common.receive_from_child(process, pipe, 600))
        setup_after = meter.read()
        connected = sum(r["connected"] for r in ready)
        connect_errors = [e for r in ready for e in r["errors"]]
        if connected < MIN_CONNECTED * count:
            raise BenchFailure(f"{count - connected} of {count} Socket.IO clients could not connect after "
                               f"{CONNECT_ATTEMPTS} attempts: {connect_errors[:3]}")
        time.sleep(1.0)  # settle: the last snapshots and stored-update catch-ups are done
        marks_before = [_mark(process, pipe) for process, pipe, _ in children]
        before = meter.read()
        end = before["at"] + args.duration
        while time.monotonic() < end:
            meter.traffic.check()
            time.sleep(min(1.0, max(end - time.monotonic(), 0)))
        after = meter.read()
        marks_after = [_mark(process, pipe) for process, pipe, _ in children]
        for process, pipe, _ in children:
            pipe.send("close")
            common.receive_from_child(process, pipe, 120)
    finally:
        for process, _, _ in children:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(10)
    window = Meter.delta(before, after)
    retries = [reason for r in ready for reason in r["retries"]]
    clients_per_tenant = {}  # connected at the window's start
    for mark in marks_before:
        for tenant_id, n in mark["connected_per_tenant"].items():
            clients_per_tenant[tenant_id] = clients_per_tenant.get(tenant_id, 0) + n
    expected = sum(window["updates_stored"].get(t, 0) * n for t, n in clients_per_tenant.items())
    delivered = sum(a["updates"] - b["updates"] for a, b in zip(marks_after, marks_before))
    children_cpu = sum(a["cpu"] - b["cpu"] for a, b in zip(marks_after, marks_before))
    disconnects = {"before_window": {}, "in_window": {}}
    for mark in marks_after:
        for at, reason in mark["disconnects"]:
            bucket = disconnects["in_window" if at >= before["at"] else "before_window"]
            bucket[reason] = bucket.get(reason, 0) + 1
    client_logs = {}
    for mark in marks_after:
        for message, n in mark["log_counts"].items():
            client_logs[message] = client_logs.get(message, 0) + n
    return {
        "mode": "socket",
        "dashboards": count,
        "window": window,
        "setup": {**Meter.delta(setup_before, setup_after),
                  "what": f"{n_procs} child processes started, {count} clients connected and got their snapshot",
                  "retries": len(retries), "retry_reasons": retries[:5],
                  "connect_ms": stats(sorted(1000 * d for r in ready for d in r["durations"])),
                  "process_connect_seconds": [round(r["connect_seconds"], 2) for r in ready]},
        "connected_at_start": sum(m["connected"] for m in marks_before),
        "connect_failures": len(connect_errors), "connect_failure_reasons": connect_errors[:5],
        "client_processes": n_procs,
        "clients_per_process": args.clients_per_process,
        "delivered": delivered,
        "expected_updates": expected,
        "replayed_in_window": sum(a["replayed"] - b["replayed"] for a, b in zip(marks_after, marks_before)),
        "seq_gaps_in_window": sum(a["gaps"] - b["gaps"] for a, b in zip(marks_after, marks_before)),
        "connected_at_end": sum(m["connected"] for m in marks_after),
        "client_processes_cpu": children_cpu,
        "unrequested_disconnects": disconnects,
        "client_log_messages": client_logs,
        "updates_per_second": delivered / window["seconds"],
    }


def _mark(process, pipe):
    pipe.send("mark")
    return common.receive_from_child(process, pipe, 60)


# the run ------------------------------------------------------------------------------


def stats(values):
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    return {"count": len(values), "p50": common.percentile(values, 0.5), "p99": common.percentile(values, 0.99),
            "max": values[-1]}


def measure(stack, args):
    with Connection(stack.broker_url) as connection:
        # Declared before anything is published: an exchange without a bound queue drops messages.
        declare_topology(connection, WORKER_QUEUE)
    server = stack.start_server()
    worker = stack.start_worker(wait=False)  # its "consuming" line is INFO: readiness is checked below
    tenant_ids = [stack.create_tenant(f"pvs-t{i:02d}") for i in range(TENANTS)]
    campaigns = [(tenant_ids[i % TENANTS], f"dash-c{i:02d}") for i in range(CAMPAIGNS)]
    with stack.publisher() as publisher:
        for tenant_id, campaign_id in campaigns:
            publisher.publish(make_event(tenant_id, campaign_id, "campaign_started",
                                         {"name": f"Campaign {campaign_id}", "total_messages": 10_000_000}))

    common.wait_for_campaigns(stack, worker, len(campaigns), "the worker to apply the campaign_started events")

    dashboards = [(tenant_ids[i % TENANTS], stack.token(tenant_ids[i % TENANTS], subject=f"dashboard-{i}"))
                  for i in range(args.dashboards)]
    traffic = Traffic(stack, campaigns, args.rate)
    traffic.start()
    traffic.ready.wait(30)
    traffic.check()
    meter = Meter(stack, server, worker, traffic)
    phases = {}
    try:
        time.sleep(2.0)  # warm-up: the worker and the throttle reach their steady state
        if args.idle > 0:
            before = meter.read()
            time.sleep(args.idle)
            phases["idle"] = {"mode": "idle, no Socket.IO yet", "dashboards": 0,
                              "window": Meter.delta(before, meter.read()), "delivered": 0}
        print(f"phase A: polling, {args.dashboards} dashboards ...", flush=True)
        phases["polling"] = run_polling(server.port, meter, dashboards, args)
        traffic.check()
        print(f"phase B: Socket.IO, {args.dashboards} clients ...", flush=True)
        phases["socket"] = run_socket(server.url, meter, dashboards, args)
        traffic.check()
        if args.idle > 0:
            # python-socketio starts consuming the message queue at the first Engine.IO connection: from
            # now on the server receives every update although nobody is connected.
            time.sleep(2.0)
            before = meter.read()
            time.sleep(args.idle)
            phases["idle_after"] = {"mode": "idle, queue listener on", "dashboards": 0,
                                    "window": Meter.delta(before, meter.read()), "delivered": 0}
    finally:
        traffic.stop()
    with Connection(stack.broker_url) as connection:
        backlog = common.queue_depth(connection, WORKER_QUEUE)
    return {"phases": phases, "events_published": traffic.count, "worker_queue_depth_at_end": backlog,
            "tenants": TENANTS, "campaigns": CAMPAIGNS}


def served_dashboards(phase):
    """Dashboards served in the window: for Socket.IO the mean of the clients connected at its start and end."""
    if phase["mode"] == "socket":
        return (phase["connected_at_start"] + phase["connected_at_end"]) / 2
    return phase["dashboards"]


def per_dashboard_minute(phase):
    window = phase["window"]
    return window["server_cpu"] / (served_dashboards(phase) * window["seconds"] / 60)


def fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def report(result, args, info):
    phases = result["phases"]
    rows = []
    for key in ("idle", "polling", "socket", "idle_after"):
        phase = phases.get(key)
        if phase is None:
            continue
        window = phase["window"]
        if key.startswith("idle"):
            per, delivered = "-", "-"
        else:
            phase["server_cpu_per_dashboard_minute"] = per_dashboard_minute(phase)
            per = f"{phase['server_cpu_per_dashboard_minute'] * 1000:.3f} ms"
            unit = "polls" if key == "polling" else "updates"
            delivered = f"{phase['delivered']:,} {unit}"
        dashboards = phase["dashboards"]
        if key == "socket" and served_dashboards(phase) != dashboards:
            dashboards = f"{dashboards} ({served_dashboards(phase):g} connected)"
        rows.append([phase["mode"], dashboards, f"{window['seconds']:.1f}", f"{window['server_cpu']:.2f}",
                     per, delivered, f"{window['worker_cpu']:.2f}", f"{window['events_published']:,}"])
    print()
    print(common.table(["mode", "dashboards", "seconds", "server CPU s", "CPU per dashboard-minute",
                        "requests or updates delivered", "worker CPU s", "events published"], rows))
    print()
    polling, socket_ = phases["polling"], phases["socket"]
    ratio = None
    if socket_["server_cpu_per_dashboard_minute"] > 0:
        ratio = polling["server_cpu_per_dashboard_minute"] / socket_["server_cpu_per_dashboard_minute"]
    lat, resp = polling["start_lateness_ms"], polling["response_ms"]
    other = {k: v for k, v in polling["statuses"].items() if k not in ("200", "304")}
    print(f"polling: {polling['achieved_polls_per_second']:.1f} polls/s achieved in the window vs "
          f"{polling['expected_polls_per_second']:.1f} expected ({polling['delivered']:,} done, "
          f"{polling['polls_due_in_window']:,} due); 200: {polling['ok_200']:,}, 304: {polling['not_modified_304']:,}, "
          f"other: {polling['other']:,} {other}")
    print(f"  poll start lateness p50/p99/max {fmt(lat['p50'])}/{fmt(lat['p99'])}/{fmt(lat['max'])} ms, "
          f"response p50/p99/max {fmt(resp['p50'])}/{fmt(resp['p99'])}/{fmt(resp['max'])} ms; "
          f"{polling['poll_threads']} threads with keep-alive connections; load generator (this process, with the "
          f"traffic publisher) "
          f"{100 * polling['window']['bench_cpu'] / polling['window']['seconds']:.0f}% of one core")
    served, pushed = polling["delivered"], socket_["delivered"]
    polling["server_cpu_ms_per_poll"] = 1000 * polling["window"]["server_cpu"] / served if served else None
    socket_["server_cpu_ms_per_update"] = 1000 * socket_["window"]["server_cpu"] / pushed if pushed else None
    print(f"  server CPU per poll served {fmt(polling['server_cpu_ms_per_poll'], 2)} ms; per update delivered over "
          f"Socket.IO {fmt(socket_['server_cpu_ms_per_update'], 3)} ms")
    keeping_up = polling["achieved_polls_per_second"] >= 0.95 * polling["expected_polls_per_second"]
    polling["kept_up"] = keeping_up
    if not keeping_up:
        print("  WARNING: the polls fell behind (server saturated or load generator too slow): the polling CPU "
              "is a lower bound, so is the ratio")
        if polling["server_cpu_ms_per_poll"] is not None and socket_["server_cpu_per_dashboard_minute"] > 0:
            projected = polling["server_cpu_ms_per_poll"] / 1000 * polling["expected_polls_per_second"] * 60 \
                / polling["dashboards"]
            polling["projected_server_cpu_per_dashboard_minute"] = projected
            polling["projected_ratio"] = projected / socket_["server_cpu_per_dashboard_minute"]
            print(f"  projection at the expected poll rate: {projected * 1000:.3f} ms server CPU per dashboard-minute "
                  f"({polling['server_cpu_ms_per_poll'] * polling['expected_polls_per_second'] / 10:.0f}% of one core),"
                  f" ratio {projected / socket_['server_cpu_per_dashboard_minute']:.1f}x")
    print(f"  set-up ({polling['setup']['what']}): server {polling['setup']['server_cpu']:.2f} CPU s over "
          f"{polling['setup']['seconds']:.1f} s, {polling['setup']['polls']:,} polls")
    print(f"socket: {socket_['delivered']:,} campaign_update received in the window of "
          f"~{socket_['expected_updates']:,} "
          f"expected (stored updates x clients of the tenant; {socket_['updates_per_second']:.0f}/s, "
          f"replayed {socket_['replayed_in_window']}, seq gaps {socket_['seq_gaps_in_window']:,}); "
          f"connected: {socket_['connected_at_start']:,} of {socket_['dashboards']:,} at the window's start, "
          f"{socket_['connected_at_end']:,} at its end")
    packets = socket_["window"]["packets_sent"]
    print(f"  Engine.IO packets sent in the window: {packets['direct']:,.0f} written straight to the websocket, "
          f"{packets['queued']:,.0f} through python-engineio's writer (sockets/fanout.py; "
          f"DIRECT_WEBSOCKET_WRITES={0 if args.stock_writes else 1})")
    if socket_["connect_failures"]:
        print(f"  WARNING: {socket_['connect_failures']} clients could not connect after {CONNECT_ATTEMPTS} attempts "
              f"{socket_['connect_failure_reasons'][:3]}; CPU per dashboard-minute uses the connected ones")
    lost = socket_["unrequested_disconnects"]
    if lost["before_window"] or lost["in_window"]:
        print(f"  WARNING: clients disconnected without being asked: before the window {lost['before_window']}, "
              f"in the window {lost['in_window']}")
    if socket_["client_log_messages"]:
        print(f"  client library messages: {socket_['client_log_messages']}")
    heartbeat = ""
    if args.client == "python-socketio":
        heartbeat = ", heartbeat tolerance " + ("python-engineio stock 35 s" if args.stock_heartbeat
                                                 else "as the JavaScript client, 50 s")
    print(f"  clients in {socket_['client_processes']} child processes of <= {socket_['clients_per_process']} "
          f"({CLIENT_DESCRIPTIONS[args.client]}; websocket{heartbeat}); "
          f"their CPU in the window "
          f"{100 * socket_['client_processes_cpu'] / socket_['window']['seconds']:.0f}% of one core in total")
    setup = socket_["setup"]
    print(f"  set-up ({setup['what']}): server {setup['server_cpu']:.2f} CPU s over {setup['seconds']:.1f} s "
          f"({1000 * setup['server_cpu'] / max(socket_['connected_at_start'], 1):.2f} ms per connection)")
    cms = setup["connect_ms"]
    print(f"  connect + snapshot per client p50/p99/max "
          f"{fmt(cms['p50'], 0)}/{fmt(cms['p99'], 0)}/{fmt(cms['max'], 0)} ms,"
          f" per process {setup['process_connect_seconds']} s; retries {setup['retries']} {setup['retry_reasons']}")
    for key, what in (("idle", "before any Socket.IO connection (so before phase A too)"),
                      ("idle_after", "after phase B, clients gone: the server still consumes the message queue")):
        if key in phases:
            w = phases[key]["window"]
            print(f"idle {what}: server {100 * w['server_cpu'] / w['seconds']:.1f}% of one core, "
                  f"worker {100 * w['worker_cpu'] / w['seconds']:.1f}%")
    for key in ("polling", "socket"):
        w = phases[key]["window"]
        print(f"{key} window: server {100 * w['server_cpu'] / w['seconds']:.1f}% of one core, worker "
              f"{100 * w['worker_cpu'] / w['seconds']:.1f}% ({w['events_published'] / w['seconds']:.0f} events/s "
              f"published), machine {w['machine_busy_percent']:.0f}% busy of nproc {info['nproc']}, load average "
              f"{w['loadavg_1min_at_end']:.1f} at its end")
    pw, sw = phases["polling"]["window"], phases["socket"]["window"]
    print(f"server CPU split user/kernel: polling {pw['server_user_cpu']:.2f}/{pw['server_system_cpu']:.2f} s, "
          f"socket {sw['server_user_cpu']:.2f}/{sw['server_system_cpu']:.2f} s (the kernel part of a delivery is "
          f"mostly the send of one websocket frame; on loopback it includes the client side's TCP receive)")
    with_db = (pw["server_cpu"] + pw["postgres_cpu"]) / max(sw["server_cpu"] + sw["postgres_cpu"], 1e-9)
    result["ratio_with_postgres"] = with_db
    print(f"context, not the target: PostgreSQL (all its processes, the worker's writes included) used "
          f"{pw['postgres_cpu']:.2f} CPU s in the polling window and {sw['postgres_cpu']:.2f} in the socket window; "
          f"server + PostgreSQL ratio {with_db:.1f}x")
    print(f"worker queue depth at the end: {result['worker_queue_depth_at_end']}")
    met = ratio is not None and ratio >= TARGET_RATIO
    if met:
        verdict = "MET"
    elif not keeping_up:
        # The measured ratio is only a lower bound: it neither shows nor refutes the target.
        projected = polling.get("projected_ratio")
        verdict = (f"NOT SHOWN: the polls fell behind, the measured ratio is a lower bound; projected "
                   f"{fmt(projected, 1)}x ({'would meet' if projected and projected >= TARGET_RATIO else 'below'} "
                   f"the target)")
    else:
        verdict = "NOT MET"
    print(f"ratio polling/socket (server CPU per dashboard-minute): {fmt(ratio, 1)}x")
    print(f"target: socket path costs at least {TARGET_RATIO:.0f}x less server CPU than polling: {verdict}")
    return ratio, met, verdict


def main(argv=None):
    args = parse_args(argv)
    info = common.machine()
    print(f"polling vs socket: {args.dashboards} dashboards over {TENANTS} tenants, {args.duration:.0f} s windows, "
          f"polls every {args.interval:.0f} s, {args.rate:.0f} events/s over {CAMPAIGNS} campaigns; "
          f"nproc {info['nproc']}", flush=True)
    settings = dict(SETTINGS, DIRECT_WEBSOCKET_WRITES="0" if args.stock_writes else "1")
    with common.environment("polling-vs-socket", keep_logs=args.keep_logs, **settings) as stack:
        result = measure(stack, args)
    ratio, met, verdict = report(result, args, info)
    path = common.write_results(args.output, {
        "benchmark": "polling_vs_socket", "args": vars(args), "machine": info, "settings": settings,
        "ratio_polling_over_socket": ratio,
        "target": {"ratio_at_least": TARGET_RATIO, "met": met, "verdict": verdict}, **result,
    })
    print(f"results: {path.relative_to(common.REPO)}")
    return 0


if __name__ == "__main__":
    common.run(main)
