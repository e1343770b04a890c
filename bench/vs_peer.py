"""campaign-live side by side with the Node socket.io 4.8 reference peer, in one run.

Starts both on the same machine (the peer from ``../shared/peer/``, copied to a cache folder and
installed with ``npm ci`` once; campaign-live as one server and one worker on a fresh database
and vhost, tenant ``anchor``), then runs each scenario with the peer's own runner
(``side_by_side.py``: the same load clients and publishers for both) and prints one table:
every figure of both, and campaign-live's ratio to the peer.

    python bench/vs_peer.py                               # the connect scenarios (issue 10)
    python bench/vs_peer.py --scenario ws-1000 --scenario poll-300 --repeat 3
    python bench/vs_peer.py --quick                       # 200 clients, a smoke run

Scenarios are the runner's (``ws-1000``, ``poll-300``, ``ws-5000-light``, ...) plus
``idle-5000``: 5,000 websocket clients connecting with no traffic. Every scenario starts with
one unrecorded warm-up round (``--warmup``), so both servers hold the same campaigns.
"""

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from tests import support  # noqa: E402

PEER_SOURCE = common.REPO.parent / "shared" / "peer"
PEER_CACHE = Path(tempfile.gettempdir()) / "campaign-live-peer"
TENANT = "anchor"
EXTRA_SCENARIOS = {
    "idle-5000": {
        "n": 5000, "transport": "websocket", "probes": 20, "interval_ms": 200, "bg_rate": 0, "bg_campaigns": 5
    },
    "quick-200": {
        "n": 200, "transport": "websocket", "probes": 20, "interval_ms": 100, "bg_rate": 200, "bg_campaigns": 10
    },
}
DEFAULT_SCENARIOS = ("idle-5000", "ws-5000-light")
SUMMARY = ("connected", "connect_s", "lat_p50_ms", "lat_p99_ms", "probes_lost", "rss_kb_per_conn", "us_per_msg_all")


def prepare_peer():
    """The peer's folder with its npm packages installed (re-installed when its lock file changes)."""
    if not PEER_SOURCE.is_dir():
        raise common.BenchFailure(f"{PEER_SOURCE} is missing: the reference peer lives in ../shared/peer/")
    lock = (PEER_SOURCE / "package-lock.json").read_bytes() + (PEER_SOURCE / "package.json").read_bytes()
    stamp = hashlib.sha256(lock).hexdigest()
    stamp_file = PEER_CACHE / "node_modules" / ".campaign-live-stamp"
    for name in ("side_by_side.py", "publish.py", "loadclients.js", "package.json", "package-lock.json"):
        PEER_CACHE.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PEER_SOURCE / name, PEER_CACHE / name)
    shutil.copytree(PEER_SOURCE / "node-peer", PEER_CACHE / "node-peer", dirs_exist_ok=True)
    if not stamp_file.exists() or stamp_file.read_text() != stamp:
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PEER_CACHE, check=True, timeout=600)
        stamp_file.write_text(stamp)
    return PEER_CACHE


def load_runner(peer_dir):
    """The peer's ``side_by_side`` module, with this benchmark's extra scenarios."""
    spec = importlib.util.spec_from_file_location("side_by_side", peer_dir / "side_by_side.py")
    runner = importlib.util.module_from_spec(spec)
    sys.modules["side_by_side"] = runner  # its dataclasses look their module up there
    spec.loader.exec_module(runner)
    runner.SCENARIOS.update(EXTRA_SCENARIOS)
    return runner


def wait_for_port(port, process, what, timeout=30):
    """Wait until something listens on ``port``; fail when ``process`` exits first."""

    def listening():
        if process.poll() is not None:
            raise common.BenchFailure(f"{what} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        return False

    support.wait_until(listening, timeout, 0.1, what)


@contextlib.contextmanager
def node_peer(peer_dir, log_dir):
    """The Node peer on its own vhost; yields ``(url, pid, broker_url)``."""
    vhost = support.create_vhost()
    port = support.free_port()
    broker = support.amqp_url(vhost)
    env = {**os.environ, "PORT": str(port), "JWT_SECRET": support.JWT_SECRET, "BROKER_URL": broker}
    env["THROTTLE_SECONDS"] = "2"
    with open(Path(log_dir) / "node-peer.log", "wb") as log:
        process = subprocess.Popen(["node", "node-peer/server.js"], cwd=peer_dir, env=env, stdout=log, stderr=log)
    try:
        wait_for_port(port, process, "the Node peer")
        yield f"http://127.0.0.1:{port}", process.pid, broker
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        support.delete_vhost(vhost)


def run_scenario(runner, scenario, targets, args, out_dir):
    """One scenario on both targets through the peer's runner; its JSON report."""
    out = out_dir / f"vs_peer.{scenario}.json"
    argv = ["--scenario", scenario, "--secret", support.JWT_SECRET, "--tenant", TENANT, "--baseline", "peer"]
    argv += ["--repeat", str(args.repeat), "--warmup", str(args.warmup), "--out", str(out)]
    argv += ["--python", sys.executable, "--logs", str(out_dir / "logs")]
    for name, url, pids, broker in targets:
        argv += ["--target", f"name={name},url={url},pids={'+'.join(map(str, pids))},broker={broker}"]
    status = runner.main(argv)
    report = json.loads(out.read_text())
    report["exit_status"] = status
    return report


def summary_rows(reports):
    """One row per scenario and target: the figures that matter most, with the ratio to the peer."""
    rows = []
    for report in reports:
        by_name = {target["name"]: target for target in report["targets"]}
        for name in ("peer", "campaign-live"):
            target = by_name[name]
            cells = [report["scenario"], name]
            for key in SUMMARY:
                value = target["summary"].get(key)
                ratio = target["ratio_to_baseline"].get(key) if name != "peer" else None
                cells.append("–" if value is None else f"{value}" + (f" ({ratio:.2f}x)" if ratio is not None else ""))
            refused = sum(sum((run.get("clients") or {}).get("connect_errors", {}).values()) for run in target["runs"])
            cells.append(refused)
            rows.append(cells)
    return rows


def main():
    """Run the scenarios on both servers; print the table; write bench/results/vs_peer.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", help=f"repeatable (default: {', '.join(DEFAULT_SCENARIOS)})")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="the quick-200 scenario only, no warm-up")
    common.add_run_options(parser, "vs_peer")
    args = parser.parse_args()
    scenarios = args.scenario or list(DEFAULT_SCENARIOS)
    if args.quick:
        scenarios, args.warmup = ["quick-200"], 0
    common.raise_open_files_limit()
    peer_dir = prepare_peer()
    runner = load_runner(peer_dir)
    out_dir = common.RESULTS_DIR
    settings = {"MAX_CONNECTIONS_PER_TENANT": 20000, "MAX_CONNECTIONS": 20000}
    started = time.monotonic()
    with common.environment("vs_peer", keep_logs=args.keep_logs, **settings) as stack:
        stack.create_tenant(TENANT)
        server = stack.start_server()
        worker = stack.start_worker()
        with node_peer(peer_dir, stack.log_dir) as (peer_url, peer_pid, peer_broker):
            targets = [
                ("peer", peer_url, [peer_pid], peer_broker),
                ("campaign-live", server.url, [server.pid, worker.pid], stack.broker_url),
            ]
            reports = [run_scenario(runner, scenario, targets, args, out_dir) for scenario in scenarios]
    headers = ["scenario", "server", *SUMMARY, "refused"]
    print(common.table(headers, summary_rows(reports)))
    common.write_results(args.output, {"machine": common.machine(), "scenarios": reports})
    print(f"({time.monotonic() - started:.0f} s)")
    failed = [report["scenario"] for report in reports if report["exit_status"]]
    if failed:
        raise common.BenchFailure(f"scenarios that did not run cleanly: {', '.join(failed)}")
    return 0


if __name__ == "__main__":
    common.run(main)
