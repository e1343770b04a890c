"""Ingest throughput: how fast one ``python -m worker`` applies a backlog of campaign events, against
a bare kombu consumer that only acks a copy of the same backlog; then every campaign's counters are
checked (each event applied exactly once). Target: the worker >= min(10,000 events/s, bare / 2).
How to read the figures: docs/benchmarks.md.
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
from campaigns.queues import DEAD_LETTER_QUEUE, declare_topology, events_exchange  # noqa: E402

BARE_QUEUE = "bench.bare"
BARE = Queue(BARE_QUEUE, exchange=events_exchange, routing_key="#", durable=True)  # a copy of every event
TARGET = 10_000


def build_events(n, tenant_ids, campaign_count):
    """The N events and what each campaign must end up with."""
    rng = random.Random(1)
    campaigns = [(tenant_ids[i % len(tenant_ids)], f"bench-c{i:03d}") for i in range(campaign_count)]
    expected = {key: {"sent": 0, "failed": 0, "version": 1} for key in campaigns}
    progress = []
    for i in range(n - len(campaigns)):
        key = campaigns[rng.randrange(len(campaigns))]
        roll, want = rng.random(), expected[key]
        kind, extra = (("message_sent", {}) if roll < 0.95 else ("next_message_starting", {"position": i})
                       if roll >= 0.98 else ("message_failed", {"error": "recipient is not on WhatsApp"}))
        want["sent"], want["failed"] = want["sent"] + (roll < 0.95), want["failed"] + (0.95 <= roll < 0.98)
        want["version"] += 1
        progress.append(make_event(*key, kind, {"message_id": f"m-{i}", **extra}))
    starts = [make_event(*key, "campaign_started", {"name": key[1], "total_messages": want["sent"] + want["failed"]})
              for key, want in expected.items()]
    return starts + progress, expected


def publish_backlog(services, events, timeout):
    """Declare the queues, publish every event unconfirmed, wait until both queues hold N."""
    with Connection(services.broker_url) as connection:
        declare_topology(connection, WORKER_QUEUE)
        BARE(connection.default_channel).declare()
    started = time.perf_counter()
    with services.publisher(confirm=False) as publisher:
        for event in events:
            publisher.publish(event)
    seconds = time.perf_counter() - started
    depths = {}

    def routed():  # or more than published: a failure at once
        depths.update({q: harness.queue_depth(services.broker_url, q) for q in (WORKER_QUEUE, BARE_QUEUE)})
        return all(depth == len(events) for depth in depths.values()) or max(depths.values()) > len(events)

    if harness.seconds_until(routed, timeout) is None or set(depths.values()) != {len(events)}:
        raise BenchFailure(f"both queues should hold the {len(events)} messages published: {depths}")
    return {"publish_seconds": seconds, "publish_rate": len(events) / seconds}


def run_bare(services, n, timeout):
    """Ack-only kombu consumer on ``bench.bare``: seconds from the first ack to the N-th."""
    acked, cpu_before, deadline = [], time.process_time(), time.monotonic() + timeout

    def on_message(message):
        message.ack()
        acked.append(time.perf_counter())

    with Connection(services.broker_url) as connection, \
            Consumer(connection.channel(), queues=[BARE], on_message=on_message, prefetch_count=1000):
        while len(acked) < n:
            if time.monotonic() > deadline:
                raise BenchFailure(f"bare consumer: {len(acked)} of {n} after {timeout} s")
            with contextlib.suppress(socket.timeout):
                connection.drain_events(timeout=1.0)
    left = harness.queue_depth(services.broker_url, BARE_QUEUE)  # a fresh connection: unacked ones are back
    if left:
        raise BenchFailure(f"bare consumer: {left} messages still in {BARE_QUEUE} after acking {n}")
    seconds = acked[n - 1] - acked[0]
    return {"events": n, "seconds": seconds, "rate": n / seconds, "cpu_seconds": time.process_time() - cpu_before}


def run_worker(services, n, timeout):
    """Start one worker; time until ``applied_events`` holds N rows."""
    if harness.applied(services)[0]:
        raise BenchFailure("applied_events is not empty before the worker starts")
    meter = harness.Meter(worker=lambda: [process.pid for process in services.workers])
    started_wall, before = time.time(), meter.read()
    worker = services.start_worker(wait=False)
    harness.wait_for(worker, lambda: harness.applied(services)[0] >= n, timeout, f"{n} applied events")
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
    problems += [f"{dead} messages dead-lettered"] if dead else []
    return {"passed": not problems, "problems": problems[:20], "dead_lettered": dead,
            "sent": sum(r["sent"] for r in found.values()), "failed": sum(r["failed"] for r in found.values()),
            "published_sent": sum(w["sent"] for w in expected.values()),
            "published_failed": sum(w["failed"] for w in expected.values())}


def main(args):
    settings = {"LOG_LEVEL": "WARNING", "WORKER_BATCH_SIZE": args.batch_size, "WORKER_BATCH_LINGER_MS": args.linger_ms}
    with harness.environment("ingest", args.keep_logs, **{k: v for k, v in settings.items() if v}) as s:
        tenant_ids = [s.create_tenant(f"bench-t{i:02d}") for i in range(args.tenants)]
        events, expected = build_events(args.events, tenant_ids, args.campaigns)
        publish = publish_backlog(s, events, args.timeout)
        bare = run_bare(s, args.events, args.timeout)
        worker = run_worker(s, args.events, args.timeout)
        exact = check_exactness(s, expected)
    target = min(TARGET, bare["rate"] / 2)
    met = {"end_to_end": worker["rate"] >= target, "steady": (worker["steady_rate"] or 0) >= target}
    rows = [[label, run[f"{kind}events"], fmt(run[f"{kind}seconds"], 2), fmt(run[f"{kind}rate"], 0),
             f"{(run[f'{kind}rate'] or 0) / bare['rate']:.2f}x"] for label, run, kind in (
        ("bare kombu consumer (ack only)", bare, ""), ("worker, end to end (from process start)", worker, ""),
        ("worker, steady (first to last batch)", worker, "steady_"))]
    data = {"publish": publish, "bare": bare, "worker": worker, "exactness": exact,
            "target": {"events_per_second": target, **met}}
    harness.report(args, data, [(["consumer", "events", "seconds", "events/s", "vs bare"], rows),
                                harness.figures(data, "worker", "bare", "publish", "exactness")], [
        f"target: worker >= min(10,000, bare/2) = {target:,.0f} events/s: end to end "
        f"{'MET' if met['end_to_end'] else 'NOT MET'}, steady {'MET' if met['steady'] else 'NOT MET'}",
        f"exactness: {'PASS' if exact['passed'] else 'FAIL'}"])
    return 0 if exact["passed"] else 1


PARSER = harness.options(
    __doc__, "ingest", {"events": 2_000}, events=(100_000, "events in the backlog"), tenants=(10, "tenants"),
    campaigns=(50, "campaigns over all tenants"), batch_size=(0, "WORKER_BATCH_SIZE (0: the product's)"),
    linger_ms=(0, "WORKER_BATCH_LINGER_MS (0: the product's)"), timeout=(900.0, "seconds one phase may take"))

if __name__ == "__main__":
    harness.run(main, PARSER)
