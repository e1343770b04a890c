"""Status-event latency: publish to RabbitMQ -> worker -> PostgreSQL -> Socket.IO -> 100 clients.

What is measured
    One server (``python app.py``) and one worker (``python -m worker``), both LOG_LEVEL=WARNING,
    on a fresh database and vhost. 100 python-socketio clients (websocket transport, one
    connection each) are connected, 10 for each of 10 tenants, spread over 4 child processes
    (``--client-processes``): real clients sit on other machines, and 100 clients in one
    interpreter queue a fan-out's deliveries behind each other on its GIL (with one process
    the "spread" row below grew to a p99 of 48 ms). A background thread publishes
    ``message_sent`` at a steady 1,000 events/s (unconfirmed) spread over 50 running campaigns
    (5 per tenant); that is the progress traffic the worker has to apply at the same time.

    Every 200 ms the script publishes one status event: ``campaign_paused`` and
    ``campaign_resumed`` alternately on a dedicated probe campaign of one tenant, taking the
    tenants in turn. Only this script touches a probe campaign, so the ``campaign_update``
    it causes is known exactly by (campaign id, type, ``version``). Latency is the time
    from just before ``publish()`` (``time.monotonic`` in this process) to the moment the
    python-socketio handler of each of that tenant's 10 clients runs (same clock). Status
    events are never throttled, so this is the pipeline's own delay.

How to read it
    The table gives p50/p95/p99/max/mean in ms over all (sample, client) pairs, plus two
    legs per sample split by the update's ``timestamp`` (the wall time the worker began the
    batch, millisecond precision): publish -> worker batch start (broker + queueing behind
    progress traffic) and worker batch start -> client (apply, commit, emit through the
    Socket.IO message queue, server, websocket, client). "spread" is, per sample, the gap
    between the first and the last of the tenant's 10 clients to receive it (fan-out cost in
    the server and in this process). The issue's target is p99 < 50 ms. Pairs that never
    arrive are reported as missing (lost after being applied, or never applied before
    ``--drain-timeout``), are not in the percentiles, and make the script exit 1.
    "background" shows the progress rate actually published during the window and whether
    the worker kept up (queue depth at the end of the window, time to drain). The publishers
    run as threads in this process: its CPU use is printed (near 100 % of a core the script
    itself adds latency), and so is the client processes' use. Receive times are
    ``time.monotonic`` in the client processes: CLOCK_MONOTONIC, shared by every process. The server,
    worker, PostgreSQL and RabbitMQ share the machine's cores (see nproc and machine busy);
    a WARNING names other test or benchmark processes seen running at the same time.
    Results are also written to ``bench/results/latency.json``.

Usage
    .venv/bin/python bench/latency.py [--duration S] [--rate R] [--quick]
"""

import argparse
import contextlib
import json
import multiprocessing
import os
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import websocket  # noqa: E402
from kombu import Connection  # noqa: E402

from bench import common  # noqa: E402
from bench.common import BenchFailure, support  # noqa: E402
from campaigns.publisher import make_event  # noqa: E402
from worker.queues import declare_topology  # noqa: E402

PROBE_CAMPAIGN = "latency-probe"
LATE_UPDATE_SECONDS = 10.0  # after the worker drained: longer than this counts as lost
TARGET_P99_MS = 50.0
WORKER_QUEUE = "campaign.events.worker"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of measurement (default 30)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of background traffic before the first sample (default 2)")
    parser.add_argument("--tenants", type=int, default=10, help="tenants (default 10)")
    parser.add_argument("--clients-per-tenant", type=int, default=10, help="clients of each tenant (default 10)")
    parser.add_argument("--campaigns", type=int, default=50, help="campaigns with background traffic (default 50)")
    parser.add_argument("--rate", type=float, default=1000.0, help="background message_sent per second (default 1000)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between status samples (default 0.2)")
    parser.add_argument("--client-processes", type=int, default=4,
                        help="child processes the clients are spread over (default 4)")
    parser.add_argument("--client", default="frames", choices=["frames", "python-socketio"],
                        help="frames: minimal websocket clients that timestamp frames on arrival (default); "
                             "python-socketio: the library's client, handler time included")
    parser.add_argument("--transport", default="websocket", choices=["websocket", "polling"],
                        help="transport of the python-socketio clients (default websocket)")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="seconds to wait after the window for the worker to apply its backlog (default 300)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 s of measurement, 1 s warm-up")
    common.add_run_options(parser, "latency")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 8.0, 1.0
    return args


class BackgroundTraffic(common.PacedTraffic):
    """``message_sent`` round-robin over the background campaigns."""

    def __init__(self, stack, campaigns, rate):
        super().__init__(stack, rate, name="background-traffic")
        self.campaigns = campaigns

    def events(self, n, elapsed):
        tenant_id, campaign_id = self.campaigns[n % len(self.campaigns)]
        return [make_event(tenant_id, campaign_id, "message_sent", {"message_id": f"m-{n}"})]


class FrameClient(threading.Thread):
    """A minimal Socket.IO v4 client over websocket that only timestamps frames as they arrive.

    It speaks just what the latency probe needs (Engine.IO open, Socket.IO CONNECT with the
    ``auth`` token, pong) and decodes the frames after the run, so the time it reports is when
    the bytes reached the client, not when a client library got round to running a handler.
    """

    def __init__(self, url, token):
        super().__init__(name="frame-client", daemon=True)
        self.frames, self.connected = [], False
        ws_url = url.replace("http://", "ws://", 1).rstrip("/") + "/socket.io/?EIO=4&transport=websocket"
        self.ws = websocket.create_connection(ws_url, timeout=10)
        opening = self.ws.recv()
        if not opening.startswith("0"):
            raise BenchFailure(f"unexpected Engine.IO open packet {opening[:100]!r}")
        self.ws.send("40" + json.dumps({"token": token}))
        self.ws.settimeout(None)
        self.start()
        support.wait_until(lambda: any(text.startswith('42["campaign_snapshot"') for _, text in self.frames),
                           10, message="campaign_snapshot")
        self.connected = True

    def run(self):
        try:
            while True:
                text = self.ws.recv()
                arrived = time.monotonic()
                if text == "2":  # Engine.IO ping
                    self.ws.send("3")
                elif text:
                    self.frames.append((arrived, text))
        except (websocket.WebSocketException, OSError):
            self.connected = False

    def updates(self):
        """The ``campaign_update`` payloads received, each with its arrival time as ``at``."""
        found = []
        for arrived, text in list(self.frames):
            if text.startswith('42["campaign_update"'):
                found.append({"at": arrived, **json.loads(text[2:])[1]})
        return found

    def close(self):
        with contextlib.suppress(Exception):
            self.ws.close()


class LibraryClient:
    """A python-socketio client (``--client python-socketio``): decodes and runs a handler per update."""

    def __init__(self, url, token, transport):
        self.live = support.LiveClient()
        self.live.connect(url, {"token": token}, [transport])

    @property
    def connected(self):
        return self.live.sio.connected

    def updates(self):
        with self.live.lock:
            return list(self.live.updates)

    def close(self):
        self.live.close()


def run_client_group(url, assignments, kind, transport, pipe):
    """A child process holding some of the clients: ``assignments`` is ``[(tenant_id, token)]``.

    Protocol on ``pipe``: it sends ``("ready", error)`` once every client has its snapshot (the
    first one connects alone, then 10 at a time), then answers each ``"collect"`` with
    ``[(tenant_id, index, connected)]`` per client (see ``received_index``), and on ``"close"``
    disconnects and exits.
    """
    clients, error = [], None

    def connect(pair):
        tenant_id, token = pair
        client = FrameClient(url, token) if kind == "frames" else LibraryClient(url, token, transport)
        return tenant_id, client

    try:
        clients.append(connect(assignments[0]))
        with ThreadPoolExecutor(max_workers=10) as pool:
            clients.extend(pool.map(connect, assignments[1:]))
    except Exception as exc:  # noqa: BLE001 - reported by the parent
        error = repr(exc)
    pipe.send(("ready", error))
    try:
        while pipe.recv() == "collect":
            pipe.send([(tenant_id, received_index(client), client.connected) for tenant_id, client in clients])
    finally:
        with ThreadPoolExecutor(max_workers=10) as pool:
            list(pool.map(lambda pair: pair[1].close(), clients))


class ClientGroups:
    """The clients, spread over child processes so that one interpreter's GIL does not queue
    the deliveries of a fan-out behind each other (real clients are on other machines).
    """

    def __init__(self, stack, tenant_ids, per_tenant, kind, transport, processes):
        wanted = [(tenant_id, stack.token(tenant_id)) for tenant_id in tenant_ids for _ in range(per_tenant)]
        context = multiprocessing.get_context("spawn")
        self.groups = []
        for i in range(max(1, min(processes, len(wanted)))):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=run_client_group,
                args=(stack.servers[0].url, wanted[i::processes], kind, transport, child_end),
                name=f"latency-clients-{i}",
                daemon=True,
            )
            process.start()
            self.groups.append((process, parent_end))
        self.count = len(wanted)
        errors = []
        for process, pipe in self.groups:
            try:
                _, error = common.receive_from_child(process, pipe, 120)
            except BenchFailure as exc:
                error = str(exc)
            if error:
                errors.append(f"{process.name}: {error}")
        if errors:
            self.close()
            raise BenchFailure(f"clients could not connect: {errors[0]}")

    @property
    def pids(self):
        return [process.pid for process, _ in self.groups]

    def collect(self):
        """``[(tenant_id, index, connected)]`` for every client, from every process."""
        found = []
        for _, pipe in self.groups:
            pipe.send("collect")
        for _, pipe in self.groups:
            found.extend(pipe.recv())
        return found

    def close(self):
        """Disconnect every client and stop the processes (by pid, after a grace period)."""
        for _, pipe in self.groups:
            with contextlib.suppress(OSError):
                pipe.send("close")
        for process, _ in self.groups:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join(5)


def received_index(client):
    """(campaign id, type, version) -> (monotonic receive time, update timestamp) of a client's updates."""
    index = {}
    for update in client.updates():
        campaign = update["campaign"]
        if campaign["id"] == PROBE_CAMPAIGN:
            index.setdefault((campaign["id"], update["type"], campaign["version"]), (update["at"], update["timestamp"]))
    return index


def match(samples, received):
    """Pairs (sample, client number, receive) found so far, and how many are still missing.

    ``received`` is ``ClientGroups.collect()``; CLOCK_MONOTONIC is shared by all processes.
    """
    by_tenant = {}
    for number, (tenant_id, index, _) in enumerate(received):
        by_tenant.setdefault(tenant_id, []).append((number, index))
    pairs, missing = [], 0
    for sample in samples:
        for number, index in by_tenant.get(sample["tenant"], []):
            hit = index.get(sample["key"])
            if hit is None:
                missing += 1
            else:
                pairs.append((sample, number, hit))
    return pairs, missing


def stats(values):
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    return {
        "count": len(ordered),
        "p50": common.percentile(ordered, 0.50),
        "p95": common.percentile(ordered, 0.95),
        "p99": common.percentile(ordered, 0.99),
        "max": ordered[-1],
        "mean": sum(ordered) / len(ordered),
    }


def wall_of(timestamp):
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def measure(stack, args):
    with Connection(stack.broker_url) as connection:
        # Declared before anything is published: an exchange without a bound queue drops messages.
        declare_topology(connection, WORKER_QUEUE)
    server = stack.start_server()
    worker = stack.start_worker(wait=False)  # its "consuming" line is INFO: readiness is checked below
    tenant_ids = [stack.create_tenant(f"lat-t{i:02d}") for i in range(args.tenants)]
    campaigns = [(tenant_ids[i % len(tenant_ids)], f"bg-{i:03d}") for i in range(args.campaigns)]
    with stack.publisher() as publisher:
        for tenant_id, campaign_id in campaigns:
            publisher.publish(make_event(tenant_id, campaign_id, "campaign_started",
                                         {"name": f"Background {campaign_id}", "total_messages": 10_000_000}))
        for tenant_id in tenant_ids:
            publisher.publish(make_event(tenant_id, PROBE_CAMPAIGN, "campaign_started",
                                         {"name": "Latency probe", "total_messages": 0}))
    setup_events = len(campaigns) + len(tenant_ids)

    common.wait_for_campaigns(stack, worker, setup_events, "the worker to apply the setup events")

    clients = ClientGroups(stack, tenant_ids, args.clients_per_tenant, args.client, args.transport,
                           args.client_processes)
    background = BackgroundTraffic(stack, campaigns, args.rate)
    probe_publisher = None
    try:
        background.start_and_wait()
        background.stop_event.wait(args.warmup)  # warm-up: traffic only, no samples

        probe_publisher = stack.publisher(confirm=True)
        counters = dict.fromkeys(tenant_ids, 0)
        samples = []
        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        cpu_before = {"server": common.process_cpu_seconds(server.pid),
                      "worker": common.process_cpu_seconds(worker.pid),
                      "clients": sum(common.process_cpu_seconds(pid) or 0 for pid in clients.pids)}
        machine_before = common.machine_cpu_times()
        background_before = background.count
        window_start = time.monotonic()
        k = 0
        while True:
            due = window_start + k * args.interval
            if due >= window_start + args.duration:
                break
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing of the sample schedule, not waiting for an event
            background.check()
            tenant_id = tenant_ids[k % len(tenant_ids)]
            count = counters[tenant_id]
            kind = "campaign_paused" if count % 2 == 0 else "campaign_resumed"
            data = {"reason": "latency probe"} if kind == "campaign_paused" else {}
            event = make_event(tenant_id, PROBE_CAMPAIGN, kind, data)
            published_wall = time.time()
            published_at = time.monotonic()
            probe_publisher.publish(event)
            confirmed_at = time.monotonic()
            samples.append({
                "tenant": tenant_id, "event_id": event["event_id"], "key": (PROBE_CAMPAIGN, kind, 2 + count),
                "published_at": published_at, "published_wall": published_wall,
                "confirm_ms": (confirmed_at - published_at) * 1000,
            })
            counters[tenant_id] = count + 1
            k += 1
        window_end = time.monotonic()
        window = window_end - window_start
        usage_after = resource.getrusage(resource.RUSAGE_SELF)
        cpu_after = {"server": common.process_cpu_seconds(server.pid),
                     "worker": common.process_cpu_seconds(worker.pid),
                     "clients": sum(common.process_cpu_seconds(pid) or 0 for pid in clients.pids)}
        machine_after = common.machine_cpu_times()
        background_in_window = background.count - background_before
        threads = threading.active_count()
        with Connection(stack.broker_url) as connection:
            backlog = common.queue_depth(connection, WORKER_QUEUE)
        background.stop()
        background.check()
        stopped_at = time.monotonic()

        # First the worker must catch up with everything published (its backlog delays the
        # probes), then every (sample, client) pair should have arrived.
        expected_pairs = len(samples) * args.clients_per_tenant
        published_total = setup_events + background.count + len(samples)

        def applied_all():
            if not worker.alive():
                raise BenchFailure(f"worker exited:\n{worker.log()[-3000:]}")
            return stack.sql("SELECT count(*) FROM applied_events")[0][0] >= published_total

        try:
            support.wait_until(applied_all, args.drain_timeout, 0.05, "the worker to apply everything")
            drained_after = time.monotonic() - stopped_at
        except AssertionError:
            drained_after = None
        with contextlib.suppress(AssertionError):  # what is still missing then is reported
            support.wait_until(lambda: match(samples, clients.collect())[1] == 0, LATE_UPDATE_SECONDS, 0.1,
                               "every client to receive every status sample")
        received = clients.collect()
        pairs, missing = match(samples, received)
        applied_ids = {row[0] for row in stack.sql(
            "SELECT event_id FROM applied_events WHERE campaign_id = %s", (PROBE_CAMPAIGN,))}
        received_keys = {(id(sample), number) for sample, number, _ in pairs}
        lost = unapplied = 0
        for sample in samples:
            for number, (tenant_id, _, _) in enumerate(received):
                if tenant_id == sample["tenant"] and (id(sample), number) not in received_keys:
                    if sample["event_id"] in applied_ids:
                        lost += 1
                    else:
                        unapplied += 1
        applied, batches = stack.sql("SELECT count(*), count(DISTINCT applied_at) FROM applied_events")[0]
        settings = common.worker_settings(stack)
        disconnected = sum(1 for _, _, connected in received if not connected)
    finally:
        if probe_publisher is not None:
            probe_publisher.close()
        background.stop()
        clients.close()

    offset = time.time() - time.monotonic()  # monotonic -> wall, for the split of the legs
    total_ms = [(hit[0] - sample["published_at"]) * 1000 for sample, _, hit in pairs]
    to_worker, per_sample_seen = [], set()
    from_worker = []
    for sample, _, (received_at, timestamp) in pairs:
        stamp = wall_of(timestamp)
        if id(sample) not in per_sample_seen:
            per_sample_seen.add(id(sample))
            to_worker.append((stamp - sample["published_wall"]) * 1000)
        from_worker.append((received_at + offset - stamp) * 1000)
    by_sample = {}
    for sample, _, (received_at, _) in pairs:
        by_sample.setdefault(id(sample), []).append(received_at)
    spread_ms = [(max(times) - min(times)) * 1000 for times in by_sample.values() if len(times) > 1]
    cpu_seconds = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    return {
        "samples": len(samples),
        "clients": clients.count,
        "client_processes": len(clients.groups),
        "expected_pairs": expected_pairs,
        "received_pairs": len(pairs),
        "missing_pairs": missing,
        "missing_pairs_lost": lost,
        "missing_pairs_not_applied_in_time": unapplied,
        "disconnected_clients": disconnected,
        "window_seconds": window,
        "latency_ms": stats(total_ms),
        "publish_to_worker_ms": stats(to_worker),
        "worker_to_client_ms": stats(from_worker),
        "probe_confirm_ms": stats([s["confirm_ms"] for s in samples]),
        "fanout_spread_ms": stats(spread_ms),
        "background": {
            "target_rate": args.rate,
            "published_in_window": background_in_window,
            "achieved_rate": background_in_window / window,
            "published_total": background.count,
            "worker_queue_depth_at_window_end": backlog,
            "drained_seconds_after_stop": drained_after,
            "applied_events": applied,
            "published_events_total": published_total,
            "worker_mean_batch": applied / batches if batches else None,
        },
        "worker_settings": settings,
        "cpu": {
            "bench_process_percent_of_one_core": 100 * cpu_seconds / window,
            "client_processes_percent_of_one_core": common.percent_of_core(
                cpu_before["clients"], cpu_after["clients"], window
            ),
            "bench_threads": threads,
            "server_percent_of_one_core": common.percent_of_core(cpu_before["server"], cpu_after["server"], window),
            "worker_percent_of_one_core": common.percent_of_core(cpu_before["worker"], cpu_after["worker"], window),
            "machine_busy_percent": 100 * (machine_after[0] - machine_before[0])
            / max(machine_after[1] - machine_before[1], 1),
        },
    }


def fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv=None):
    args = parse_args(argv)
    info = common.machine()
    print(f"latency benchmark: {args.tenants * args.clients_per_tenant} clients ({args.clients_per_tenant} per "
          f"tenant, {args.transport}), {args.rate:,.0f} events/s background over {args.campaigns} campaigns, "
          f"a status sample every {args.interval * 1000:.0f} ms for {args.duration:.0f} s; nproc {info['nproc']}",
          flush=True)
    with common.ForeignActivity() as foreign, \
            common.environment("latency", keep_logs=args.keep_logs, LOG_LEVEL="WARNING") as stack:
        result = measure(stack, args)
    info["loadavg_at_end"] = os.getloadavg()

    rows = []
    for label, key in (("publish -> client (all sample x client pairs)", "latency_ms"),
                       ("  publish -> worker batch start (per sample)", "publish_to_worker_ms"),
                       ("  worker batch start -> client", "worker_to_client_ms"),
                       ("spread: last - first client of a sample", "fanout_spread_ms")):
        s = result[key]
        rows.append([label, s["count"], fmt(s["p50"]), fmt(s["p95"]), fmt(s["p99"]), fmt(s["max"]), fmt(s["mean"])])
    print()
    print(common.table(["latency (ms)", "n", "p50", "p95", "p99", "max", "mean"], rows))
    print()
    bg, cpu = result["background"], result["cpu"]
    print(f"samples: {result['samples']} status events over {result['window_seconds']:.1f} s to "
          f"{result['clients']} clients; pairs received {result['received_pairs']} of {result['expected_pairs']} "
          f"(missing {result['missing_pairs']}: {result['missing_pairs_lost']} lost after being applied, "
          f"{result['missing_pairs_not_applied_in_time']} never applied within --drain-timeout; "
          f"disconnected clients {result['disconnected_clients']})")
    if result["missing_pairs"]:
        print("warning: the percentiles cover the received pairs only; the missing ones are not in them, "
              "so the real figures are worse")
    print(f"background: {bg['achieved_rate']:,.0f} message_sent/s published in the window (target "
          f"{bg['target_rate']:,.0f}); worker queue depth at window end {bg['worker_queue_depth_at_window_end']}; "
          f"applied {bg['applied_events']:,} of {bg['published_events_total']:,} published, drained "
          f"{fmt(bg['drained_seconds_after_stop'], 2)} s after the traffic stopped")
    ws = result["worker_settings"]
    print(f"worker: 1 process, WORKER_BATCH_SIZE={ws['WORKER_BATCH_SIZE']}, "
          f"WORKER_BATCH_LINGER_MS={ws['WORKER_BATCH_LINGER_MS']}, THROTTLE_SECONDS={ws['THROTTLE_SECONDS']:g}, "
          f"LOG_LEVEL={ws['LOG_LEVEL']}; mean {fmt(bg['worker_mean_batch'])} events per batch")
    print(f"CPU (% of one core, over the window): this bench process {cpu['bench_process_percent_of_one_core']:.0f}% "
          f"({cpu['bench_threads']} threads: publishers), {result['client_processes']} client processes "
          f"{fmt(cpu['client_processes_percent_of_one_core'], 0)}% together, "
          f"server {fmt(cpu['server_percent_of_one_core'], 0)}%, "
          f"worker {fmt(cpu['worker_percent_of_one_core'], 0)}%; whole machine {cpu['machine_busy_percent']:.0f}% busy "
          f"of nproc {info['nproc']} (load average at start {info['loadavg_at_start'][0]:.2f}, "
          f"at end {info['loadavg_at_end'][0]:.2f})")
    bench_cpu = cpu["bench_process_percent_of_one_core"]
    note = foreign.note()
    if bench_cpu >= 80 or note:
        print("note: the bench process is close to one full core (the GIL) or the machine was shared: "
              "its own scheduling adds to the latency")
    else:
        print("note: the bench process is well below one core, so its threads are not the bottleneck "
              "(it and the client processes still compete for the machine's cores with the server, worker, "
              "PostgreSQL and RabbitMQ)")
    if note:
        print(note)
    p99 = result["latency_ms"]["p99"]
    met = p99 is not None and p99 < TARGET_P99_MS and result["missing_pairs"] == 0
    print(f"target: p99 < {TARGET_P99_MS:.0f} ms: {'MET' if met else 'NOT MET'} (p99 {fmt(p99)} ms)")

    path = common.write_results(args.output, {
        "benchmark": "latency", "args": vars(args), "machine": info,
        "target": {"p99_ms": TARGET_P99_MS, "met": met}, **result,
        "other_processes_seen": foreign.seen,
    })
    print(f"results: {path.relative_to(common.REPO)}")
    return 0 if result["missing_pairs"] == 0 else 1


if __name__ == "__main__":
    common.run(main)
