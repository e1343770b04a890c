"""campaign-live side by side with the Node socket.io 4.8 reference peer (``../shared/peer/``), in one
run, with the peer's own load clients: one table of both servers' figures and campaign-live's ratio
to the peer. The scenarios and how to read them: docs/benchmarks.md.
"""

import contextlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402
from bench.harness import BenchFailure, stack  # noqa: E402
from bench.probe_legs import ProbeLegs  # noqa: E402

PEER_SOURCE = harness.REPO.parent / "shared" / "peer"
PEER_CACHE = Path(tempfile.gettempdir()) / "campaign-live-peer"
TENANT = "anchor"
RUNNER_EXTRA = {
    "idle-5000": {"n": 5000, "transport": "websocket", "probes": 20, "interval_ms": 200, "bg_rate": 0,
                  "bg_campaigns": 5},
    "quick-200": {"n": 200, "transport": "websocket", "probes": 10, "interval_ms": 100, "bg_rate": 200,
                  "bg_campaigns": 10},
}
AT_REST = {"idle-10000": 10_000, "idle-200": 200}
DEFAULT_SCENARIOS = ("idle-10000", "idle-1000", "ws-1000", "poll-300", "poll-500")
LEGS = ("p50", "p95", "p99")
SUMMARY = ("connected", "connect_s", "lat_p50_ms", "lat_p99_ms", "probes_lost", "rss_kb_per_conn",
           "us_per_msg_all", "cpu_rest_pct_first", "cpu_rest_pct_all")


def prepare_peer():
    """The peer's folder with its npm packages installed (again when its lock file changes)."""
    if not PEER_SOURCE.is_dir():
        raise BenchFailure(f"{PEER_SOURCE} is missing: the reference peer lives in ../shared/peer/")
    stamp = b"".join((PEER_SOURCE / name).read_bytes() for name in ("package-lock.json", "package.json"))
    shutil.copytree(PEER_SOURCE, PEER_CACHE, dirs_exist_ok=True, ignore=shutil.ignore_patterns("node_modules"))
    stamp_file = PEER_CACHE / "node_modules" / ".campaign-live-stamp"
    if not stamp_file.exists() or stamp_file.read_bytes() != stamp:
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PEER_CACHE, check=True, timeout=600)
        stamp_file.write_bytes(stamp)
    spec = importlib.util.spec_from_file_location("side_by_side", PEER_CACHE / "side_by_side.py")
    runner = importlib.util.module_from_spec(spec)
    sys.modules["side_by_side"] = runner  # its dataclasses look their module up there
    spec.loader.exec_module(runner)
    runner.SCENARIOS.update(RUNNER_EXTRA)
    return runner


@contextlib.contextmanager
def node_peer(log_dir):
    """The Node peer on its own vhost; yields ``(url, pid, broker_url)``."""
    vhost, port = stack.create_vhost(), stack.free_port()
    broker = stack.amqp_url(vhost)
    env = {**os.environ, "PORT": str(port), "JWT_SECRET": stack.JWT_SECRET, "BROKER_URL": broker,
           "THROTTLE_SECONDS": "2"}
    process = stack.Process("node-peer", ["node", str(PEER_CACHE / "node-peer" / "server.js")], env, log_dir)
    try:  # its /healthz answers 200 once it consumes from the broker
        harness.wait_for(process, lambda: stack.server_healthy(process, port), 30, "the Node peer")
        yield f"http://127.0.0.1:{port}", process.pid, broker
    finally:
        process.stop(10)
        stack.delete_vhost(vhost)


def nginx_target(services, cleanup):
    """campaign-live behind deploy/nginx.conf, as deployed: ``(name, url, pids, broker)`` of a target.

    A server of its own behind the proxy (the runner lists a pid under one target only), nginx's
    worker process after it: the row's first-pid figures are that server's, its "all" figures
    the server's and nginx's (the worker's share is the direct row's)."""
    server = services.start_server()
    directory = Path(services.log_dir) / "nginx"
    directory.mkdir(exist_ok=True)
    # Both upstream lines of the shipped file on the one server; a poll holds a client and an upstream connection.
    proxy = stack.Nginx([server.port, server.port], directory, worker_connections=16384)
    cleanup.callback(proxy.stop)
    workers = [child.pid for child in psutil.Process(proxy.process.pid).children()]
    return "campaign-live.nginx", proxy.url, [server.pid, *workers], services.broker_url


def at_rest_round(url, pids, n, args, log_dir):
    """n of the peer's websocket load clients on one server, no traffic: RSS per connection, CPU at rest."""
    ready, out = Path(log_dir) / "rest.ready", Path(log_dir) / "rest.json"
    ready.unlink(missing_ok=True)
    rss_before = harness.rss_mb(pids[0])
    clients = stack.Process("loadclients", [
        "node", str(PEER_CACHE / "loadclients.js"), "--url", url, "--n", str(n), "--tenant", TENANT, "--secret",
        stack.JWT_SECRET, "--transport", "websocket", "--duration", str(args.settle + args.rest + 2),
        "--connect-timeout", "900", "--ready-file", str(ready), "--out", str(out)], os.environ, log_dir)
    try:
        stack.wait_until(lambda: ready.exists() or not clients.alive(), 960, 0.2, "the load clients")
        time.sleep(args.settle)  # the last handshakes' work is done
        meter = harness.Meter(first=pids[0], all=pids)
        rss_after, before = harness.rss_mb(pids[0]), meter.read()
        time.sleep(args.rest)  # the measurement: nothing but heartbeats
        rest = harness.Meter.delta(before, meter.read())["percent_of_one_core"]
        clients.popen.wait(args.settle + args.rest + 60)
        result = json.loads(out.read_text())
    finally:
        clients.stop(10)
    return {"clients": result, "summary": {
        "connected": result["connected"], "connect_s": result["connect_seconds"],
        "rss_kb_per_conn": round(1024 * (rss_after - rss_before) / max(result["connected"], 1), 1),
        "cpu_rest_pct_first": round(rest["first"], 1), "cpu_rest_pct_all": round(rest["all"], 1)}}


def at_rest(scenario, targets, args, log_dir):
    """An at-rest scenario on both targets, ``args.repeat`` rounds: the runner's report shape."""
    report = {"scenario": scenario, "exit_status": 0, "targets": []}
    for name, url, pids, _ in targets:
        runs = [at_rest_round(url, pids, AT_REST[scenario], args, log_dir) for _ in range(args.repeat)]
        summary = {key: statistics.median(run["summary"][key] for run in runs) for key in runs[0]["summary"]}
        summary["rss_kb_per_conn"] = runs[0]["summary"]["rss_kb_per_conn"]  # fresh server only
        report["targets"].append({"name": name, "summary": summary, "runs": runs})
        report["exit_status"] |= summary["connected"] < AT_REST[scenario]
    peer = report["targets"][0]["summary"]
    for target in report["targets"]:
        target["ratio_to_baseline"] = {k: v / peer[k] if peer.get(k) else None for k, v in target["summary"].items()}
    return report


def through_runner(runner, scenario, targets, args, log_dir, legs):
    """A scenario of the peer's runner on both targets; its JSON report, with campaign-live's probe legs
    (``bench/probe_legs.py``; every round, warm-up included) under ``legs``."""
    out = harness.RESULTS_DIR / f"vs_peer.{scenario}.json"
    argv = ["--scenario", scenario, "--secret", stack.JWT_SECRET, "--tenant", TENANT, "--baseline", "peer",
            "--repeat", str(args.repeat), "--warmup", str(args.warmup), "--out", str(out),
            "--python", sys.executable, "--logs", str(log_dir), "--settle", str(args.settle),
            "--connect-settle", str(args.settle)]
    for name, url, pids, broker in targets:
        argv += ["--target", f"name={name},url={url},pids={'+'.join(map(str, pids))},broker={broker}"]
    with ProbeLegs(*legs) as observers:
        status = runner.main(argv)
    return {**json.loads(out.read_text()), "exit_status": status, "legs": observers.summary()}


def legs_rows(reports):
    """Rows of the legs table: campaign-live's probe delays at each observer and at the load clients."""
    rows = []
    for report in reports:
        if "legs" not in report:
            continue
        ours = next(target["summary"] for target in report["targets"] if target["name"] == "campaign-live")
        queue, observer = report["legs"]["message_queue_ms"], report["legs"]["websocket_observer_ms"]
        rows.append([report["scenario"], queue["count"], *(harness.fmt(queue[q]) for q in LEGS), observer["count"],
                     *(harness.fmt(observer[q]) for q in LEGS), harness.fmt(ours.get("lat_p50_ms")),
                     harness.fmt(ours.get("lat_p99_ms"))])
    return rows


def main(args):
    runner, scenarios = prepare_peer(), args.scenario or list(DEFAULT_SCENARIOS)
    settings = {"MAX_CONNECTIONS_PER_TENANT": 20000, "MAX_CONNECTIONS": 20000}
    with harness.environment("vs_peer", args.keep_logs, **settings) as services:
        services.create_tenant(TENANT)
        server, worker = services.start_server(), services.start_worker()
        with node_peer(services.log_dir) as (peer_url, peer_pid, peer_broker), contextlib.ExitStack() as cleanup:
            targets = [("peer", peer_url, [peer_pid], peer_broker),
                       ("campaign-live", server.url, [server.pid, worker.pid], services.broker_url)]
            behind_nginx = [nginx_target(services, cleanup)] if args.via_nginx else []
            legs = (server.url, services.message_queue_url, services.settings.get("SOCKETIO_CHANNEL", "flask-socketio"),
                    services.token(TENANT))
            reports = [at_rest(s, targets, args, services.log_dir) if s in AT_REST
                       else through_runner(runner, s, targets + behind_nginx, args, services.log_dir, legs)
                       for s in scenarios]
    rows = []
    for report in reports:
        for target in report["targets"]:
            ratios = target.get("ratio_to_baseline", {}) if target["name"] != "peer" else {}
            cells = [("–" if target["summary"].get(key) is None else f"{target['summary'][key]}")
                     + (f" ({ratios[key]:.2f}x)" if ratios.get(key) is not None else "") for key in SUMMARY]
            refused = sum(sum((run.get("clients") or {}).get("connect_errors", {}).values()) for run in target["runs"])
            rows.append([report["scenario"], target["name"], *cells, refused])
    failed = [report["scenario"] for report in reports if report["exit_status"]]
    legs_headers = ["scenario", "to queue n", *(f"queue {q}" for q in LEGS), "to observer n",
                    *(f"observer {q}" for q in LEGS), "load clients p50", "load clients p99"]
    harness.report(args, {"scenarios": reports, "failed": failed},
                   [(["scenario", "server", *SUMMARY, "refused"], rows), (legs_headers, legs_rows(reports))],
                   ["legs: campaign-live's probes, ms from publish to the Socket.IO message queue (the worker's leg), "
                    "to one websocket client of the server's, and to the load clients (the runner's recorded rounds); "
                    "queue and observer count every round, warm-up included"])
    if failed:
        raise BenchFailure(f"scenarios that did not run cleanly: {', '.join(failed)}")
    return 0


PARSER = harness.options(
    __doc__, "vs_peer", {"scenario": ["idle-200", "quick-200"], "warmup": 0, "rest": 1.0, "settle": 0.5},
    repeat=(1, "recorded rounds"), warmup=(1, "unrecorded rounds of the runner's scenarios"),
    rest=(10.0, "seconds of CPU at rest (idle-N)"), settle=(2.0, "quiet seconds after connecting and between targets"))
PARSER.add_argument("--scenario", action="append", help=f"repeatable (default: {', '.join(DEFAULT_SCENARIOS)})")
PARSER.add_argument("--via-nginx", action="store_true", help="a third target in the runner's scenarios: "
                    "campaign-live behind deploy/nginx.conf (campaign-live.nginx)")

if __name__ == "__main__":
    harness.run(main, PARSER)
