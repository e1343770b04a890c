"""Soak: thousands of Socket.IO clients and 500 events/s for minutes: memory growth and missed updates.
A table row every 10 s (RSS, CPU, rates, lag, PING gaps), then every client's seqs are checked
against ``campaign_updates``. How to read the figures: docs/benchmarks.md.
"""

import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402
from bench.clients import ClientProcesses  # noqa: E402
from bench.harness import BenchFailure, at, fmt, rss_mb, stats  # noqa: E402
from campaigns.publisher import make_event  # noqa: E402

SOCKETS = {"name": "campaign_live_connected_clients", "transport": "websocket"}  # the server's websockets (/metrics)


def growth(samples, key, window):
    """Averages of the first and the last ``window`` seconds of samples; growth in MB and %."""
    values = [(s["t"], s[key]) for s in samples if s[key] is not None]
    first = [v for t, v in values if t < window] or [values[0][1]]
    last = [v for t, v in values if t >= values[-1][0] - window]
    a, b = sum(first) / len(first), sum(last) / len(last)
    return {"first_avg_mb": a, "last_avg_mb": b, "growth_mb": b - a, "growth_percent": 100 * (b - a) / a,
            "min_mb": min(v for _, v in values), "max_mb": max(v for _, v in values)}


def log_problems(process):
    """WARNING/ERROR lines of a process's log (count and the first few)."""
    lines = [x for x in process.log().splitlines() if " WARNING " in x or " ERROR " in x or "Traceback" in x]
    return {"count": len(lines), "first": lines[:3]}


def take_sample(services, server, worker, clients, traffic, meter, started, previous):
    """One row of the soak's table."""
    marks, (applied, batches) = clients.ask("mark"), harness.applied(services)
    counters = {"published": traffic.published, "received": marks["updates"], "applied": applied, "batches": batches}
    reading = meter.read(**counters)
    sample = {"t": reading["at"] - started, "server_rss_mb": rss_mb(server.pid), "worker_rss_mb": rss_mb(worker.pid),
              "clients_rss_mb": rss_mb(clients.pids), "reading": reading, **counters,
              "clients_connected": marks["connected"], "gap_requests": marks["gap_requests"],
              "server_sockets": harness.metric(server, **SOCKETS), "lag_ms": stats([1000 * x for x in marks["lags"]]),
              "ping_gap_s": stats(marks["ping_gaps"]), "queue_depth": harness.queue_depth(services.broker_url),
              "loadavg": reading["loadavg"]}
    if previous:
        grew = harness.Meter.delta(previous["reading"], reading)
        sample.update({f"{key}_per_s": grew[key] / grew["seconds"] for key in ("published", "received", "applied")},
                      cpu_percent=grew["percent_of_one_core"],
                      mean_batch=grew["applied"] / grew["batches"] if grew["batches"] else None)
    return sample


def measure(services, args):
    server, worker, tenant_ids, campaigns = harness.start_campaigns(services, "soak", args.tenants, args.campaigns)
    ttl = int(args.duration) + 7200
    credentials = [(t := tenant_ids[i % len(tenant_ids)], services.token(t, ttl=ttl, subject=f"soak-{i}"))
                   for i in range(args.clients)]
    limits = {p.name: psutil.Process(p.pid).rlimit(psutil.RLIMIT_NOFILE)[0] for p in (server, worker)}  # soft
    meter = harness.Meter(server=server.pid)
    rss, before = {p.name: rss_mb(p.pid) for p in (server, worker)}, meter.read()
    with ClientProcesses(server.url, credentials, per_process=args.clients_per_process,
                         connect_threads=args.connect_threads, attempts=3, replay_holes=True) as clients:
        connect = {"requested": args.clients, **clients.connected(120 + args.clients * 0.5),
                   **harness.Meter.delta(before, meter.read()), "server_metric": harness.metric(server, **SOCKETS),
                   "rss_before_mb": rss, "rss_after_mb": {p.name: rss_mb(p.pid) for p in (server, worker)}}
        connect["server_kb_per_connection"] = 1024 * (connect["rss_after_mb"]["server"] - rss["server"]) / max(
            connect["connected"], 1)
        print(f"connected {connect['connected']:,} of {args.clients:,} in {connect['seconds']:.1f} s", flush=True)
        if not connect["connected"]:
            raise BenchFailure(f"no client could connect: {connect['error_examples']}")
        paused, statuses = set(), []

        def events(n, elapsed):
            found = [make_event(*campaigns[n % len(campaigns)], "message_sent", {"message_id": f"m-{n}"})]
            if elapsed >= (len(statuses) + 1) * args.status_interval:  # pause or resume the next campaign
                statuses.append(key := campaigns[len(statuses) % len(campaigns)])
                paused.symmetric_difference_update({key})
                found.append(make_event(*key, "campaign_paused" if key in paused else "campaign_resumed",
                                        {"reason": "soak"} if key in paused else {}, occurred_at=at()))
            return found

        meter, samples = harness.Meter(server=server.pid, worker=worker.pid, clients=clients.pids), []
        with harness.Traffic(services, args.rate, events) as traffic:
            started = time.monotonic()
            for k in range(int(args.duration / args.sample_interval) + 1):
                harness.sleep_checking(started + k * args.sample_interval - time.monotonic(), traffic, server, worker)
                samples.append(s := take_sample(services, server, worker, clients, traffic, meter, started,
                                                samples[-1] if samples else None))
                print(f"  t={s['t']:6.1f} s  server {fmt(s['server_rss_mb'])} MB  worker {fmt(s['worker_rss_mb'])} MB"
                      f"  clients up {s['clients_connected']}  received {s['received']:,}  lag p99 "
                      f"{fmt(s['lag_ms']['p99'], 0)} ms", flush=True)
            traffic_seconds = time.monotonic() - started
        backlog = harness.queue_depth(services.broker_url)
        published = len(campaigns) + traffic.published
        drained = harness.seconds_until(lambda: harness.applied(services)[0] >= published, args.final_timeout, worker)
        with services.publisher() as publisher:  # the final state: status events end any merge at once
            for key in campaigns:
                publisher.publish(make_event(*key, "campaign_completed", {}, occurred_at=at(1)))
        final = harness.seconds_until(lambda: not services.sql(  # else the clients are compared with what is stored
            "SELECT count(*) FROM campaigns WHERE status <> 'completed' OR emit_due_at IS NOT NULL")[0][0],
            args.final_timeout) is not None
        stored = {t: [] for t in tenant_ids}
        for tenant_id, seq in services.sql("SELECT tenant_id, seq FROM campaign_updates ORDER BY seq"):
            stored[tenant_id].append(seq)
        delivery = clients.ask(("verify", stored, args.final_timeout), args.final_timeout * 3 + 120)
    window = min(60.0, args.duration / 2)
    return {"open_files_limit": limits, "connect": connect, "delivery": delivery,
            "traffic": {"seconds": traffic_seconds, "message_sent": traffic.count, "status_events": len(statuses),
                        "achieved_rate": traffic.count / traffic_seconds, "worker_queue_depth_at_end": backlog,
                        "drained_seconds_after_stop": drained, "final_state_reached": final,
                        "updates_stored": sum(len(v) for v in stored.values())},
            "memory_window_seconds": window,
            "memory": {name: growth(samples, f"{name}_rss_mb", window) for name in ("server", "worker", "clients")},
            "cpu_percent_of_one_core": harness.Meter.delta(samples[0]["reading"], samples[-1]["reading"])[
                "percent_of_one_core"],
            "log_problems": {"server": log_problems(server), "worker": log_problems(worker)},
            "samples": samples}


def main(args):
    settings = {"LOG_LEVEL": "WARNING", "MAX_CONNECTIONS_PER_TENANT": max(2000, args.clients)}
    with harness.environment("soak", args.keep_logs, **settings) as services:
        result = measure(services, args)
    d, c = result["delivery"], result["connect"]
    ok = (not d["clients_missing_after_final_replay"] and result["traffic"]["final_state_reached"]
          and c["connected"] == args.clients and not d["disconnected"])
    rows = [[fmt(s["t"], 0), fmt(s["server_rss_mb"]), fmt(s["worker_rss_mb"]), fmt(s["clients_rss_mb"], 0),
             *(fmt(s.get("cpu_percent", {}).get(n), 0) for n in ("server", "worker", "clients")),
             s["clients_connected"], fmt(s["server_sockets"], 0), fmt(s.get("published_per_s"), 0),
             fmt(s.get("applied_per_s"), 0), fmt(s.get("mean_batch"), 0), s["queue_depth"],
             fmt(s.get("received_per_s"), 0), *(fmt(s["lag_ms"][f], 0) for f in ("p50", "p99", "max")),
             fmt(s["ping_gap_s"]["max"]), s["gap_requests"], fmt(s["loadavg"])] for s in result["samples"]]
    for sample in result["samples"]:
        del sample["reading"]
    harness.report(args, {"ok": ok, **result}, [
        (["t (s)", "server MB", "worker MB", "clients MB", "server CPU %", "worker CPU %", "clients CPU %",
          "clients up", "server sockets", "published/s", "applied/s", "batch", "queue", "received/s",
          "lag p50 ms", "lag p99 ms", "lag max ms", "ping gap max s", "gap replays", "load"], rows),
        (["RSS (MB)", "first window avg", "last window avg", "growth", "growth %", "min", "max"],
         [[name, *(fmt(m[k]) for k in ("first_avg_mb", "last_avg_mb", "growth_mb", "growth_percent", "min_mb",
                                       "max_mb"))] for name, m in result["memory"].items()]),
        harness.figures(result, "delivery", "traffic", "cpu_percent_of_one_core", "connect", "open_files_limit",
                        "log_problems")],
        ["result: OK: every client stayed connected and got every update of its tenant" if ok else
         "result: NOT OK: see the connect and delivery figures"])
    return 0 if ok else 1


PARSER = harness.options(
    __doc__, "soak", {"clients": 100, "duration": 4.0, "sample_interval": 1.0, "status_interval": 0.5},
    clients=(2000, "clients"), duration=(600.0, "seconds of traffic"), rate=(500.0, "events published per second"),
    tenants=(10, "tenants"), campaigns=(50, "running campaigns"), status_interval=(3.0, "seconds between statuses"),
    sample_interval=(10.0, "seconds between samples"), clients_per_process=(250, "clients per process"),
    connect_threads=(8, "connects at a time per process"), final_timeout=(120.0, "seconds to drain and finish"))

if __name__ == "__main__":
    harness.run(main, PARSER)
