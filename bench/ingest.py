"""Ingest throughput: how fast one ``python -m worker`` applies a backlog of campaign events, against
a bare kombu consumer that only acks a copy of the same backlog; then every campaign's counters are
checked (each event applied exactly once). Target: the worker >= min(10,000 events/s, bare / 2).
How to read the figures: docs/benchmarks.md.

    .venv/bin/python bench/ingest.py [--events N] [--batch-size B] [--linger-ms MS] [--quick]
"""

import contextlib
import random
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kombu import Connection, Consumer, Queue  # noqa: E402

from bench import harness  # noqa: E402
from bench.harness import WORKER_QUEUE, BenchFailure, fmt  # noqa: E402
from campaigns.publisher import make_event  # noqa: E402
from worker.queues import DEAD_LETTER_QUEUE, declare_topology, events_exchange  # noqa: E402

BARE_QUEUE = "bench.bare"
TARGET = 10_000


def build_events(n, tenant_ids, campaign_count, seed):
    """The N events and what each campaign must end up with."""
    rng = random.Random(seed)
    campaigns = [(tenant_ids[i % len(tenant_ids)], f"bench-c{i:03d}") for i in range(campaign_count)]
    expected = {key: {"sent": 0, "failed": 0, "version": 1} for key in campaigns}
    progress = []
    for i in range(n - len(campaigns)):
        key = campaigns[rng.randrange(len(campaigns))]
        roll = rng.random()
        if roll < 0.95:
            kind, data = "message_sent", {"message_id": f"m-{i}"}
            expected[key]["sent"] += 1
        elif roll < 0.98:
            kind, data = "message_failed", {"message_id": f"m-{i}", "error": "recipient is not on WhatsApp"}
            expected[key]["failed"] += 1
        else:
            kind, data = "next_message_starting", {"message_id": f"m-{i}", "position": i}
        expected[key]["version"] += 1
        progress.append(make_event(*key, kind, data))
    starts = [make_event(*key, "campaign_started", {"name": key[1], "total_messages": want["sent"] + want["failed"]})
              for key, want in expected.items()]
    return starts + progress, expected


def publish_backlog(services, events, timeout):
    """Declare the queues, publish every event unconfirmed, wait until both queues hold N."""
    with Connection(services.broker_url) as connection:
        declare_topology(connection, WORKER_QUEUE)
        Queue(BARE_QUEUE, exchange=events_exchange, routing_key="#", durable=True)(connection.default_channel).declare()
    started = time.perf_counter()
    with services.publisher(confirm=False) as publisher:
        for event in events:
            publisher.publish(event)
    seconds = time.perf_counter() - started
    depths = {}

    def routed():
        depths.update({q: harness.queue_depth(services.broker_url, q) for q in (WORKER_QUEUE, BARE_QUEUE)})
        if any(depth > len(events) for depth in depths.values()):
            raise BenchFailure(f"more messages than published in the queues: {depths}")
        return all(depth == len(events) for depth in depths.values())

    try:
        harness.stack.wait_until(routed, timeout, 0.05, f"both queues to hold {len(events)} messages")
    except AssertionError as exc:
        raise BenchFailure(f"{exc}; depths: {depths}") from None
    return {"publish_seconds": seconds, "publish_rate": len(events) / seconds}


def run_bare(services, n, prefetch, timeout):
    """Ack-only kombu consumer on ``bench.bare``: seconds from the first message to the N-th ack."""
    state = {"count": 0, "first": None, "last": None}
    cpu_before = time.process_time()

    def on_message(message):
        state["first"] = state["first"] or time.perf_counter()
        message.ack()
        state["count"] += 1
        if state["count"] == n:
            state["last"] = time.perf_counter()

    queue = Queue(BARE_QUEUE, exchange=events_exchange, routing_key="#", durable=True)
    deadline = time.monotonic() + timeout
    with Connection(services.broker_url) as connection, \
            Consumer(connection.channel(), queues=[queue], on_message=on_message, prefetch_count=prefetch):
        while state["count"] < n:
            if time.monotonic() > deadline:
                raise BenchFailure(f"bare consumer: {state['count']} of {n} after {timeout} s")
            with contextlib.suppress(socket.timeout):
                connection.drain_events(timeout=1.0)
    left = harness.queue_depth(services.broker_url, BARE_QUEUE)  # a fresh connection: unacked ones are back
    if left:
        raise BenchFailure(f"bare consumer: {left} messages still in {BARE_QUEUE} after acking {n}")
    seconds = state["last"] - state["first"]
    return {"events": n, "seconds": seconds, "rate": n / seconds, "cpu_seconds": time.process_time() - cpu_before}


def run_worker(services, n, timeout):
    """Start one worker; time until ``applied_events`` holds N rows."""
    if services.sql("SELECT count(*) FROM applied_events")[0][0]:
        raise BenchFailure("applied_events is not empty before the worker starts")
    pids = []
    started_wall, meter = time.time(), harness.Meter(worker=lambda: pids)
    before = meter.read()
    worker = services.start_worker(wait=False)
    pids.append(worker.pid)
    harness.wait_for(worker, lambda: services.sql("SELECT count(*) FROM applied_events")[0][0] >= n, timeout,
                     f"{n} applied events")
    window = harness.Meter.delta(before, meter.read())
    count, first, last, in_last, batches = services.sql(
        "SELECT count(*), min(applied_at), max(applied_at), count(*) FILTER (WHERE applied_at = "
        "(SELECT max(applied_at) FROM applied_events)), count(DISTINCT applied_at) FROM applied_events")[0]
    steady = (last - first).total_seconds()
    return {"events": count, "seconds": window["seconds"], "rate": count / window["seconds"],
            "startup_seconds": first.timestamp() - started_wall, "steady_seconds": steady,
            "steady_events": count - in_last, "steady_rate": (count - in_last) / steady if steady > 0 else None,
            "batches": batches, "mean_batch": count / batches,
            "worker_cpu_percent": window["percent_of_one_core"]["worker"],
            "machine_busy_percent": window["machine_busy_percent"]}


def check_exactness(services, expected):
    """Every campaign's sent/failed/version as published; nothing dead-lettered."""
    found = {(t, c): {"sent": s, "failed": f, "version": v}
             for t, c, s, f, v in services.sql("SELECT tenant_id, id, sent, failed, version FROM campaigns")}
    problems = [f"{key}: {found.get(key)}, want {want}" for key, want in expected.items() if found.get(key) != want]
    problems += [f"unexpected campaign {key}" for key in set(found) - set(expected)]
    dead = harness.queue_depth(services.broker_url, DEAD_LETTER_QUEUE)
    if dead:
        problems.append(f"{dead} messages dead-lettered")
    return {"passed": not problems, "problems": problems[:20], "dead_lettered": dead,
            "sent": sum(r["sent"] for r in found.values()), "failed": sum(r["failed"] for r in found.values()),
            "published_sent": sum(w["sent"] for w in expected.values()),
            "published_failed": sum(w["failed"] for w in expected.values())}


def main():
    parser = harness.options(__doc__, "ingest", "2,000 events")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--campaigns", type=int, default=50, help="over all tenants")
    parser.add_argument("--batch-size", type=int, help="WORKER_BATCH_SIZE (default: the product's)")
    parser.add_argument("--linger-ms", type=int, help="WORKER_BATCH_LINGER_MS (default: the product's)")
    parser.add_argument("--prefetch", type=int, default=1000, help="of the bare consumer")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one phase may take")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    args.events = 2_000 if args.quick else args.events
    settings = {"LOG_LEVEL": "WARNING", "WORKER_BATCH_SIZE": args.batch_size, "WORKER_BATCH_LINGER_MS": args.linger_ms}
    info = harness.machine()
    with harness.environment("ingest", args.keep_logs, **{k: v for k, v in settings.items() if v is not None}) as s:
        tenant_ids = [s.create_tenant(f"bench-t{i:02d}") for i in range(args.tenants)]
        events, expected = build_events(args.events, tenant_ids, args.campaigns, args.seed)
        publish = publish_backlog(s, events, args.timeout)
        bare = run_bare(s, args.events, args.prefetch, args.timeout)
        worker = run_worker(s, args.events, args.timeout)
        exact = check_exactness(s, expected)
        config = harness.worker_settings(s)
    target = min(TARGET, bare["rate"] / 2)
    met = {"end_to_end": worker["rate"] >= target, "steady": (worker["steady_rate"] or 0) >= target}
    rows = [["bare kombu consumer (ack only)", bare["events"], fmt(bare["seconds"], 2), fmt(bare["rate"], 0), "1.00x"]]
    for label, events, seconds, rate in (("worker, end to end (from process start)", "events", "seconds", "rate"),
                                         ("worker, steady (first to last batch)", "steady_events", "steady_seconds",
                                          "steady_rate")):
        rows.append([label, worker[events], fmt(worker[seconds], 2), fmt(worker[rate], 0),
                     f"{(worker[rate] or 0) / bare['rate']:.2f}x"])
    harness.report(args, {"machine": info, "publish": publish, "bare": bare, "worker": worker,
                          "worker_settings": config, "target": {"events_per_second": target, **met},
                          "exactness": exact}, [(["consumer", "events", "seconds", "events/s", "vs bare"], rows),
                                                harness.figures({"worker": worker, "bare": bare, "config": config},
                                                                "worker.startup_seconds", "worker.batches",
                                                                "worker.mean_batch", "worker.worker_cpu_percent",
                                                                "worker.machine_busy_percent", "bare.cpu_seconds",
                                                                "config"),
                                                harness.figures({"publish": publish, "exactness": exact}, "publish",
                                                                "exactness")], [
        f"target: worker >= min(10,000, bare/2) = {target:,.0f} events/s: end to end "
        f"{'MET' if met['end_to_end'] else 'NOT MET'}, steady {'MET' if met['steady'] else 'NOT MET'}",
        f"exactness: {'PASS' if exact['passed'] else 'FAIL'}"])
    return 0 if exact["passed"] else 1


if __name__ == "__main__":
    harness.run(main)
