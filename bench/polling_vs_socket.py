"""Server CPU to keep dashboards fresh: REST polling with ETags vs Socket.IO push, same traffic.
Phases: idle, polling, Socket.IO, idle with the queue listener on. Target: polling / socket >= 10x
(server CPU per dashboard-minute). How to read the figures: docs/benchmarks.md.
"""

import collections
import http.client
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402
from bench.clients import ClientProcesses  # noqa: E402
from bench.harness import BenchFailure, fmt, stats  # noqa: E402
from campaigns.publisher import make_event  # noqa: E402

TENANTS, CAMPAIGNS, TARGET_RATIO, MIN_CONNECTED, POLL_THREADS = 10, 20, 10.0, 0.9, 32


window = harness.Meter.delta


def poll_thread(port, dashboards, indices, start, interval, end, results, stop):
    """Poll ``indices`` at their due times until ``end`` on one keep-alive connection; record each poll."""
    connection, etags, cycle = None, {}, 0
    while not stop.is_set():
        for i in indices:
            due = start + cycle * interval + i * interval / len(dashboards)
            if due >= end or stop.is_set():
                return connection and connection.close()
            time.sleep(max(due - time.monotonic(), 0))
            headers = {"Authorization": f"Bearer {dashboards[i][1]}", "If-None-Match": etags.get(i, "")}
            began = time.monotonic()
            try:
                connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                connection.request("GET", "/api/campaigns", headers=headers)
                response = connection.getresponse()
                body, status = response.read(), response.status
                if status in (200, 304):
                    etags[i] = response.getheader("ETag", etags.get(i))
                if status == 200:
                    json.loads(body)  # a dashboard reads what it got
                if response.will_close:
                    connection = connection.close()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                status, connection = f"error:{exc.__class__.__name__}", connection and connection.close()
            results.append((due, began, time.monotonic(), str(status)))
        cycle += 1


def run_polling(measure, server, dashboards, args):
    results, stop = [], threading.Event()
    setup_before, start = measure(), time.monotonic() + 0.5
    window_start = start + args.interval  # after the first cycle: connections open, every ETag known
    end, count = window_start + args.duration, min(POLL_THREADS, len(dashboards))
    with ThreadPoolExecutor(count) as pool:  # leaving it waits for the threads
        for t in range(count):
            pool.submit(poll_thread, server.port, dashboards, range(t, len(dashboards), count), start, args.interval,
                        end, results, stop)
        try:
            time.sleep(max(window_start - time.monotonic(), 0))
            before = measure()
            harness.sleep_checking(end - time.monotonic(), server)
            after = measure()
        finally:
            stop.set()
    done = [r for r in results if before["at"] <= r[2] < after["at"]]
    statuses = dict(collections.Counter(r[3] for r in done))
    return {"mode": "polling", "dashboards": len(dashboards), "window": window(before, after),
            "setup": {**window(setup_before, before), "polls": sum(1 for r in results if r[2] < before["at"])},
            "delivered": len(done), "expected_polls_per_second": len(dashboards) / args.interval,
            "achieved_polls_per_second": len(done) / (after["at"] - before["at"]),
            "polls_due_in_window": sum(1 for r in results if before["at"] <= r[0] < after["at"]),
            "statuses": statuses, "start_lateness_ms": stats([(r[1] - r[0]) * 1000 for r in done]),
            "response_ms": stats([(r[2] - r[1]) * 1000 for r in done])}


def run_socket(measure, server, dashboards, args, client_pids):
    setup_before = measure()
    with ClientProcesses(server.url, dashboards, per_process=125, connect_threads=4) as clients:
        client_pids.extend(clients.pids)  # the meter reads their CPU from now on
        connect = clients.connected(600)
        setup_after = measure()
        if connect["connected"] < MIN_CONNECTED * len(dashboards):
            raise BenchFailure(f"{len(dashboards) - connect['connected']} of {len(dashboards)} clients could not "
                               f"connect: {connect['error_examples']}")
        time.sleep(1.0)  # settle: the last snapshots and catch-ups are done
        marks_before, before = clients.ask("mark"), measure()
        harness.sleep_checking(args.duration, server)
        after, marks_after = measure(), clients.ask("mark")
    result = window(before, after)
    disconnects = {name: collections.Counter(reason for moment, reason in marks_after["disconnects"]
                                             if (moment >= before["at"]) == (name == "in_window"))
                   for name in ("before_window", "in_window")}
    expected = sum(result["updates_stored"].get(t, 0) * n for t, n in marks_before["connected_per_tenant"].items())
    return {"mode": "socket", "dashboards": len(dashboards), "window": result,
            "setup": window(setup_before, setup_after), "connect": connect,
            "connected_at_start": marks_before["connected"], "connected_at_end": marks_after["connected"],
            "client_processes": len(clients.pids), "delivered": marks_after["updates"] - marks_before["updates"],
            "expected_updates": expected, "replayed_in_window": marks_after["replayed"] - marks_before["replayed"],
            "seq_gaps_in_window": marks_after["gaps"] - marks_before["gaps"],
            "client_processes_cpu": result["cpu_seconds"]["clients"], "unrequested_disconnects": disconnects}


def measure_phases(services, args):
    server, worker, tenant_ids, campaigns = harness.start_campaigns(services, "pvs", TENANTS, CAMPAIGNS)
    dashboards = [(tenant_ids[i % TENANTS], services.token(tenant_ids[i % TENANTS], subject=f"dashboard-{i}"))
                  for i in range(args.dashboards)]

    def events(n, _):
        failed = n % 20 == 19
        return [make_event(*campaigns[n % len(campaigns)], "message_failed" if failed else "message_sent",
                           {"message_id": f"m-{n}", **({"error": "bench failure"} if failed else {})})]

    client_pids, phases = [], {}
    meter = harness.Meter(server=server.pid, worker=worker.pid, clients=lambda: client_pids)
    with harness.Traffic(services, args.rate, events) as traffic:
        def measure():
            """A reading with each tenant's ``last_seq`` (updates stored), events published and packets sent."""
            traffic.check()
            return meter.read(updates_stored=dict(services.sql("SELECT id, last_seq FROM tenants")),
                              events_published=traffic.count, packets_sent={
                                  p: harness.metric(server, "campaign_live_socketio_packets_sent_total", path=p)
                                  for p in ("direct", "queued")})

        def idle(key, mode):
            before = measure()
            harness.sleep_checking(args.idle, traffic, server, worker)
            phases[key] = {"mode": mode, "dashboards": 0, "window": window(before, measure()), "delivered": 0}

        harness.sleep_checking(min(2.0, args.duration), traffic, worker)  # warm-up: the worker and throttle settle
        if args.idle:
            idle("idle", "idle, no Socket.IO yet")
        print(f"phase A: polling, {args.dashboards} dashboards ...", flush=True)
        phases["polling"] = run_polling(measure, server, dashboards, args)
        print(f"phase B: Socket.IO, {args.dashboards} clients ...", flush=True)
        phases["socket"] = run_socket(measure, server, dashboards, args, client_pids)
        if args.idle:  # python-socketio consumes the message queue since the first connection
            harness.sleep_checking(min(2.0, args.idle), traffic, server)
            idle("idle_after", "idle, queue listener on")
    return {"phases": phases, "events_published": traffic.count,
            "worker_queue_depth_at_end": harness.queue_depth(services.broker_url)}


def summarize(result, args):
    """Per phase: CPU per dashboard-minute, per poll or update; the ratio, a projection, the verdict."""
    polling, socket_ = result["phases"]["polling"], result["phases"]["socket"]
    for phase in (polling, socket_):
        w = phase["window"]
        served = (phase["connected_at_start"] + phase["connected_at_end"]) / 2 if phase is socket_ else args.dashboards
        phase["server_cpu_per_dashboard_minute"] = w["cpu_seconds"]["server"] / (served * w["seconds"] / 60)
        phase["server_cpu_ms_per_delivery"] = 1000 * w["cpu_seconds"]["server"] / max(phase["delivered"], 1)
    ratio = polling["server_cpu_per_dashboard_minute"] / max(socket_["server_cpu_per_dashboard_minute"], 1e-12)
    polling["kept_up"] = polling["achieved_polls_per_second"] >= 0.95 * polling["expected_polls_per_second"]
    projected = (polling["server_cpu_ms_per_delivery"] / 1000 * polling["expected_polls_per_second"] * 60
                 / args.dashboards) / max(socket_["server_cpu_per_dashboard_minute"], 1e-12)
    pw, sw = polling["window"], socket_["window"]
    result.update(ratio_polling_over_socket=ratio, projected_ratio=None if polling["kept_up"] else projected,
                  ratio_with_postgres=(pw["cpu_seconds"]["server"] + pw["cpu_seconds"]["postgres"])
                  / max(sw["cpu_seconds"]["server"] + sw["cpu_seconds"]["postgres"], 1e-9))
    if ratio >= TARGET_RATIO:
        return "MET"
    if not polling["kept_up"]:
        return f"NOT SHOWN: the polls fell behind, the ratio is a lower bound; projected {projected:.1f}x"
    return "NOT MET"


def main(args):
    settings = {"LOG_LEVEL": "WARNING", "API_RATE_LIMIT": "100000 per minute", "MAX_CONNECTIONS_PER_TENANT": 100000,
                "DIRECT_WEBSOCKET_WRITES": 0 if args.stock_writes else 1}
    with harness.environment("polling-vs-socket", args.keep_logs, **settings) as services:
        result = measure_phases(services, args)
    verdict = summarize(result, args)
    rows = []
    for phase in result["phases"].values():
        w = phase["window"]
        rows.append([phase["mode"], phase["dashboards"], fmt(w["seconds"]), fmt(w["cpu_seconds"]["server"], 2),
                     f"{w['user_seconds']['server']:.2f} / {w['system_seconds']['server']:.2f}",
                     fmt(1000 * phase.get("server_cpu_per_dashboard_minute", 0) or None, 3), phase["delivered"],
                     fmt(phase.get("server_cpu_ms_per_delivery"), 3), fmt(w["cpu_seconds"]["worker"], 2),
                     fmt(w["cpu_seconds"]["postgres"], 2), w["events_published"], fmt(w["machine_busy_percent"], 0)])
    harness.report(args, {"settings": settings, "target": {"ratio_at_least": TARGET_RATIO, "verdict": verdict},
                          **result},
                   [(["mode", "dashboards", "seconds", "server CPU s", "user / kernel", "ms per dashboard-minute",
                      "polls or updates", "ms per poll or update", "worker CPU s", "postgres CPU s", "events",
                      "machine %"], rows),
                    harness.figures(result["phases"], *(f"polling.{key}" for key in (
                        "achieved_polls_per_second", "expected_polls_per_second", "polls_due_in_window", "statuses",
                        "kept_up", "start_lateness_ms", "response_ms", "setup.cpu_seconds", "setup.polls",
                        "window.cpu_seconds")),
                        *(f"socket.{key}" for key in (
                            "expected_updates", "replayed_in_window", "seq_gaps_in_window", "connected_at_start",
                            "connected_at_end", "unrequested_disconnects", "client_processes", "client_processes_cpu",
                            "window.packets_sent", "setup.cpu_seconds", "connect"))),
                    harness.figures(result, "ratio_with_postgres", "worker_queue_depth_at_end", "projected_ratio")],
                   [f"ratio polling/socket (server CPU per dashboard-minute): "
                    f"{result['ratio_polling_over_socket']:.1f}x; target >= {TARGET_RATIO:.0f}x: {verdict}"])
    return 0


PARSER = harness.options(
    __doc__, "polling_vs_socket", {"dashboards": 100, "duration": 2.0, "idle": 1.0, "interval": 2.0},
    dashboards=(1000, "dashboards"), duration=(60.0, "seconds of each window"),
    rate=(200.0, "campaign events published per second"), interval=(10.0, "seconds between polls of a dashboard"),
    idle=(15.0, "seconds of each idle window (0: none)"), stock_writes=(False, "DIRECT_WEBSOCKET_WRITES=0"))

if __name__ == "__main__":
    harness.run(main, PARSER)
