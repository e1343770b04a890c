"""Status-event latency: publish to RabbitMQ -> worker -> PostgreSQL -> Socket.IO -> 100 clients,
under 1,000 events/s of background traffic; p50/p95/p99 per (sample, client) pair and its two legs.
Target: p99 < 50 ms. How to read the figures: docs/benchmarks.md.
"""

import sys
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402
from bench.clients import ClientProcesses  # noqa: E402
from bench.harness import BenchFailure, fmt, stats  # noqa: E402
from campaigns.publisher import make_event  # noqa: E402

PROBE = "latency-probe"
LATE_UPDATE_SECONDS = 10.0  # after the worker drained: longer than this counts as lost
TARGET_P99_MS = 50.0


def match(samples, received):
    """``(sample, (arrival, timestamp))`` pairs found so far, and the samples of the missing pairs."""
    found = [(s, probes.get(s["key"])) for s in samples for tenant, probes, _ in received if tenant == s["tenant"]]
    return [(sample, hit) for sample, hit in found if hit], [sample for sample, hit in found if not hit]


def sample_window(services, tenant_ids, args, background):
    """Publish the status samples for ``args.duration`` seconds, paced; return them."""
    samples, started = [], time.monotonic()
    with services.publisher(confirm=True) as publisher:
        for k in range(int(args.duration / args.interval)):
            harness.sleep_checking(started + k * args.interval - time.monotonic(), background)  # the schedule
            tenant_id, count = tenant_ids[k % len(tenant_ids)], k // len(tenant_ids)  # the tenants take turns
            kind = "campaign_resumed" if count % 2 else "campaign_paused"
            event = make_event(tenant_id, PROBE, kind, {} if count % 2 else {"reason": "latency probe"})
            published = time.monotonic()
            publisher.publish(event)
            samples.append({"tenant": tenant_id, "event_id": event["event_id"], "key": (PROBE, kind, 2 + count),
                            "published": published, "confirm_ms": (time.monotonic() - published) * 1000})
    return samples


def measure(services, args):
    server, worker, tenant_ids, campaigns = harness.start_campaigns(services, "lat", args.tenants, args.campaigns,
                                                                    every_tenant=[PROBE])
    credentials = [(t, services.token(t)) for t in tenant_ids for _ in range(args.clients_per_tenant)]
    with ClientProcesses(server.url, credentials, processes=args.client_processes, probe_campaign=PROBE,
                         connect_threads=10) as clients:
        meter = harness.Meter(server=server.pid, worker=worker.pid, clients=clients.pids)
        if (connect := clients.connected(120))["errors"]:
            raise BenchFailure(f"clients could not connect: {connect['error_examples']}")
        with harness.Traffic(services, args.rate, lambda n, _: [make_event(
                *campaigns[n % len(campaigns)], "message_sent", {"message_id": f"m-{n}"})]) as background:
            harness.sleep_checking(args.warmup, background, worker)
            before, published_before = meter.read(), background.count
            samples = sample_window(services, tenant_ids, args, background)
            window = harness.Meter.delta(before, meter.read())
            in_window, threads = background.count - published_before, threading.active_count()
            backlog = harness.queue_depth(services.broker_url)
        published = len(campaigns) + len(tenant_ids) + background.count + len(samples)
        drained = harness.seconds_until(lambda: harness.applied(services)[0] >= published, args.drain_timeout, worker)
        harness.seconds_until(lambda: not match(samples, clients.ask("mark")["probes"])[1], LATE_UPDATE_SECONDS)
        received = clients.ask("mark")["probes"]
        applied, batches = harness.applied(services)
        applied_ids = {r[0] for r in services.sql("SELECT event_id FROM applied_events WHERE campaign_id = %s",
                                                  (PROBE,))}
    pairs, missing = match(samples, received)
    lost = sum(1 for s in missing if s["event_id"] in applied_ids)
    offset = time.time() - time.monotonic()  # wall -> monotonic, to split the legs at the worker's timestamp
    by_sample = {}  # id: (sample, the worker's batch start (monotonic), arrivals)
    for sample, (arrived, stamp) in pairs:
        start = datetime.fromisoformat(stamp).timestamp() - offset  # Python 3.11 reads the "Z"
        by_sample.setdefault(id(sample), (sample, start, []))[2].append(arrived)
    return {
        "samples": len(samples), "clients": len(credentials), "client_processes": len(clients.pids),
        "expected_pairs": len(samples) * args.clients_per_tenant, "received_pairs": len(pairs),
        "missing_pairs": len(missing), "missing_pairs_lost": lost,
        "missing_pairs_not_applied_in_time": len(missing) - lost,
        "disconnected_clients": sum(1 for _, _, up in received if not up),
        "latency_ms": stats([(hit[0] - s["published"]) * 1000 for s, hit in pairs]),
        "publish_to_worker_ms": stats([(start - s["published"]) * 1000 for s, start, _ in by_sample.values()]),
        "worker_to_client_ms": stats([(a - start) * 1000 for _, start, t in by_sample.values() for a in t]),
        "fanout_spread_ms": stats([(max(t) - min(t)) * 1000 for _, _, t in by_sample.values() if len(t) > 1]),
        "probe_confirm_ms": stats([s["confirm_ms"] for s in samples]),
        "background": {"target_rate": args.rate, "achieved_rate": in_window / window["seconds"],
                       "worker_queue_depth_at_window_end": backlog, "drained_seconds_after_stop": drained,
                       "applied_events": applied, "published_events": published,
                       "worker_mean_batch": applied / batches if batches else None},
        "window": window, "bench_threads": threads,
    }


def main(args):
    with harness.environment("latency", args.keep_logs, LOG_LEVEL="WARNING") as services:
        result = measure(services, args)
    rows = [[label, result[key]["count"], *(fmt(result[key][f]) for f in ("p50", "p95", "p99", "max", "mean"))]
            for label, key in (("publish -> client (all sample x client pairs)", "latency_ms"),
                               ("  publish -> worker batch start (per sample)", "publish_to_worker_ms"),
                               ("  worker batch start -> client", "worker_to_client_ms"),
                               ("spread: last - first client of a sample", "fanout_spread_ms"),
                               ("probe publish confirm", "probe_confirm_ms"))]
    p99 = result["latency_ms"]["p99"]
    met = p99 is not None and p99 < TARGET_P99_MS and not result["missing_pairs"]
    harness.report(args, {"target": {"p99_ms": TARGET_P99_MS, "met": met}, **result},
                   [(["latency (ms)", "n", "p50", "p95", "p99", "max", "mean"], rows), harness.figures(
                       result, "samples", "expected_pairs", "received_pairs", "missing_pairs", "missing_pairs_lost",
                       "missing_pairs_not_applied_in_time", "disconnected_clients", "background",
                       "window.percent_of_one_core", "window.machine_busy_percent", "bench_threads",
                       "client_processes")],
                   [f"target: p99 < {TARGET_P99_MS:.0f} ms: {'MET' if met else 'NOT MET'} (p99 {fmt(p99)} ms)"])
    return 0 if not result["missing_pairs"] else 1


PARSER = harness.options(
    __doc__, "latency", {"duration": 3.0, "warmup": 0.5, "client_processes": 2}, duration=(30.0, "seconds of samples"),
    rate=(1000.0, "background events per second"), tenants=(10, "tenants"), campaigns=(50, "running campaigns"),
    warmup=(2.0, "seconds of background traffic first"), clients_per_tenant=(10, "clients per tenant"),
    interval=(0.2, "seconds between status samples"), client_processes=(4, "client processes"),
    drain_timeout=(300.0, "seconds for the worker's backlog"))

if __name__ == "__main__":
    harness.run(main, PARSER)
