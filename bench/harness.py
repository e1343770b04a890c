"""The benchmarks' harness: a private ``stack.Stack`` on a fresh database and vhost (``environment``),
campaigns to drive (``start_campaigns``), steady publishing (``Traffic``), CPU and memory readings
(``Meter``), statistics, and ``report()`` (prints tables, writes ``bench/results/<name>.json``).
"""

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

import psutil
from kombu import Connection

import stack  # the scripts put the repository's root on sys.path
from campaigns.publisher import make_event
from campaigns.queues import declare_topology
from campaigns.timeutil import isoformat
from config import Config

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
WORKER_QUEUE = "campaign.events.worker"
MACHINE = {}  # what this run measures on: filled by ``run``, written by ``report``


class BenchFailure(Exception):
    """A benchmark could not measure what it should (a stall, a lost message, a dead process)."""


def options(doc, name, quick, **numbers):
    """An argument parser: ``--quick`` (a smoke run with the values of ``quick``), ``--keep-logs``,
    ``--output``, and a ``--name`` for each of ``numbers`` (``name=(default, help)``)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: " + ", ".join(f"{key}={value}" for key, value in quick.items()))
    parser.add_argument("--keep-logs", action="store_true", help="keep the server's and worker's logs")
    parser.add_argument("--output", default=name, help=f"results file name under bench/results/ (default {name})")
    for key, (value, text) in numbers.items():
        kind = {"action": "store_true"} if value is False else {"type": type(value), "default": value}
        parser.add_argument(f"--{key.replace('_', '-')}", help=f"{text} (default {value})", **kind)
    parser.set_defaults(quick_values=quick)
    return parser


def run(main, parser):
    """Run a benchmark script: record the machine, raise the open files limit (inherited by every process
    started later), exit with ``main(args)``'s status (1 on ``BenchFailure``); SIGTERM cleans up."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args = parser.parse_args()
    if args.quick:
        vars(args).update(args.quick_values)
    MACHINE.update(machine(), rlimit_nofile=raise_open_files_limit())
    try:
        sys.exit(main(args))
    except BenchFailure as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        sys.exit(1)


@contextlib.contextmanager
def environment(name, keep_logs=False, **settings):
    """Yield a ``stack.Stack`` on a fresh database and vhost (``settings``: environment of its
    processes); remove everything afterwards. Logs are kept (path printed) after a failure."""
    stack.require_services()
    log_dir, made, failed = tempfile.mkdtemp(prefix=f"bench-{name}-"), [], True  # made: (undo, argument)
    try:
        made.append((stack.drop_database, template := stack.create_template_database()))
        made.append((stack.drop_database, database := stack.create_database(template)))
        made.append((stack.delete_vhost, vhost := stack.create_vhost()))
        services = stack.Stack(database, vhost, log_dir, **settings)
        made.append((stack.Stack.stop, services))
        MACHINE["worker_settings"] = worker_settings(services)
        yield services
        failed = False
    finally:
        for undo, argument in reversed(made):  # processes first, then the vhost, the database, the template
            try:
                undo(argument)
            except Exception as exc:  # noqa: BLE001 - go on cleaning up
                print(f"cleanup error: {exc!r}", file=sys.stderr)
        if failed or keep_logs:
            print(f"process logs kept in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


def at(offset=0.0):
    """An ``occurred_at`` ``offset`` seconds from now."""
    return isoformat(datetime.now(timezone.utc) + timedelta(seconds=offset))


def start_campaigns(services, prefix, tenants, campaigns, every_tenant=()):
    """One server and one worker; ``tenants`` tenants and ``campaigns`` started round-robin over them (plus
    ``every_tenant`` in each): ``(server, worker, tenant_ids, [(tenant_id, campaign_id)])`` once applied."""
    with Connection(services.broker_url) as connection:  # an exchange without a queue drops messages
        declare_topology(connection, WORKER_QUEUE)
    server, worker = services.start_server(), services.start_worker(wait=False)
    tenant_ids = [services.create_tenant(f"{prefix}-t{i:02d}") for i in range(tenants)]
    pairs = [(tenant_ids[i % tenants], f"{prefix}-c{i:03d}") for i in range(campaigns)]
    with services.publisher() as publisher:
        for tenant_id, campaign_id in pairs + [(t, c) for t in tenant_ids for c in every_tenant]:
            publisher.publish(make_event(tenant_id, campaign_id, "campaign_started",
                                         {"name": campaign_id, "total_messages": 100_000_000}, occurred_at=at(-1)))
    total = len(pairs) + len(tenant_ids) * len(every_tenant)
    wait_for(worker, lambda: services.sql("SELECT count(*) FROM campaigns")[0][0] == total, 60, "the campaigns")
    return server, worker, tenant_ids, pairs


def wait_for(process, predicate, timeout, what):
    """Wait until ``predicate()`` holds; ``BenchFailure`` with the process's log when it exits or the time is up."""
    if seconds_until(predicate, timeout, process) is None:
        raise BenchFailure(f"{what}: not within {timeout} s, or {process.name} exited:\n{process.log()[-3000:]}")


def seconds_until(predicate, timeout, *things):
    """Seconds until ``predicate()`` holds while ``things`` run (``check_running``); None if not within ``timeout``."""
    started = time.monotonic()
    with contextlib.suppress(AssertionError, BenchFailure):
        stack.wait_until(lambda: check_running(*things) or predicate(), timeout, 0.05)
        return time.monotonic() - started
    return None


def queue_depth(broker_url, name=WORKER_QUEUE):
    """Ready messages in a queue (passive ``queue.declare``)."""
    with Connection(broker_url) as connection, contextlib.closing(connection.channel()) as channel:
        return channel.queue_declare(queue=name, passive=True).message_count


def metric(server, name, **labels):
    """One sample of a server's /metrics."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as answer:
        return stack.metric(answer.read().decode(), name, **labels)


def applied(services):
    """``(events, batches)`` the worker applied so far."""
    return services.sql("SELECT count(*), count(DISTINCT applied_at) FROM applied_events")[0]


def worker_settings(services):
    """The batching settings a worker of ``services`` reads (through the product's ``Config``)."""
    with mock.patch.dict(os.environ, services.env(), clear=True):
        config = Config()
    keys = ("WORKER_BATCH_SIZE", "WORKER_BATCH_LINGER_MS", "THROTTLE_SECONDS", "LOG_LEVEL")
    return {**{key: getattr(config, key) for key in keys}, "prefetch_count": config.WORKER_BATCH_SIZE * 2}


# readings -------------------------------------------------------------------------------


def _each(pids, method):
    """``method()`` of each process of a pid or a list of them, leaving out those that are gone."""
    answers = []
    for pid in pids if isinstance(pids, (list, tuple)) else [pids]:
        with contextlib.suppress(psutil.Error):
            answers.append(getattr(psutil.Process(pid), method)())
    return answers


def rss_mb(pids):
    """Resident memory of a pid, or of a list of them, in MB (None when all are gone)."""
    values = [memory.rss for memory in _each(pids, "memory_info")]
    return sum(values) / 2**20 if values else None


def raise_open_files_limit(wanted=65536):
    """Raise RLIMIT_NOFILE to ``wanted`` or as far as allowed (beyond the hard limit as root): (soft, hard)."""
    me = psutil.Process()
    soft, hard = me.rlimit(psutil.RLIMIT_NOFILE)
    wanted = max(soft, wanted)
    for limits in ((wanted, hard if hard == psutil.RLIM_INFINITY else max(hard, wanted)), (hard, hard)):
        with contextlib.suppress(ValueError, OSError, psutil.Error):
            me.rlimit(psutil.RLIMIT_NOFILE, limits)
            break
    return me.rlimit(psutil.RLIMIT_NOFILE)


class Meter:
    """CPU of named processes (``name=pid`` or a callable giving pids), of PostgreSQL, of this process
    (``bench``) and of the machine at one moment (``read``); ``delta`` of two readings."""

    def __init__(self, **pids):
        self.pids = {**pids, "bench": os.getpid(), "postgres": lambda: [
            p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]}

    def read(self, **extra):
        """A reading; ``extra`` counters (numbers, or dicts of them) are differenced by ``delta`` too."""
        cpu = {}  # (user, system) CPU seconds so far, of the processes still there
        for name, pids in self.pids.items():
            times = _each(pids() if callable(pids) else pids, "cpu_times")
            cpu[name] = (sum(t.user for t in times), sum(t.system for t in times))
        return {"at": time.monotonic(), "cpu": cpu, "machine": psutil.cpu_times(), "loadavg": os.getloadavg()[0],
                **extra}

    @staticmethod
    def delta(before, after):
        """Seconds, CPU seconds (user + system, and split) per name and extra counters' growth between readings."""
        seconds, machine = after["at"] - before["at"], {f: a - b for f, a, b in zip(
            after["machine"]._fields, after["machine"], before["machine"])}  # guest time is in user and nice too
        split = {name: [a - b for a, b in zip(after["cpu"][name], before["cpu"][name])] for name in after["cpu"]}
        grew = {key: {k: v - before[key].get(k, 0) for k, v in value.items()} if isinstance(value, dict)
                else value - before[key] for key, value in after.items()
                if key not in ("at", "cpu", "machine", "loadavg")}
        return {**grew, "seconds": seconds, "cpu_seconds": {name: sum(pair) for name, pair in split.items()},
                "percent_of_one_core": {name: 100 * sum(pair) / seconds for name, pair in split.items()},
                "user_seconds": {name: pair[0] for name, pair in split.items()},
                "system_seconds": {name: pair[1] for name, pair in split.items()},
                "machine_busy_percent": 100 - 100 * (machine["idle"] + machine["iowait"])
                / max(sum(machine.values()) - machine["guest"] - machine["guest_nice"], 0.01),
                "loadavg_at_end": after["loadavg"]}


def stats(values):
    """count, nearest-rank p50, p95 and p99, max and mean of some numbers (None when there are none)."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, **dict.fromkeys(("p50", "p95", "p99", "max", "mean"))}
    return {"count": len(ordered), **{f"p{q}": ordered[max(1, math.ceil(len(ordered) * q / 100)) - 1]
                                      for q in (50, 95, 99)}, "max": ordered[-1], "mean": sum(ordered) / len(ordered)}


class Traffic(threading.Thread):
    """Publishes ``events(n, elapsed)`` (a list per tick) ``rate`` ticks a second from its own connection,
    catching up after a slow publish; ``count`` is the ticks so far, ``published`` the events."""

    def __init__(self, services, rate, events):
        super().__init__(name="traffic", daemon=True)
        self.services, self.rate, self.events, self.stop_event = services, rate, events, threading.Event()
        self.count = self.published = 0
        self.error = None

    def run(self):
        try:
            with self.services.publisher(confirm=False) as publisher:
                started = time.monotonic()
                while not self.stop_event.wait(0.002):
                    elapsed = time.monotonic() - started
                    while self.count < int(elapsed * self.rate):
                        for event in self.events(self.count, elapsed):
                            publisher.publish(event)
                            self.published += 1
                        self.count += 1
        except Exception as exc:  # noqa: BLE001 - reported by check()
            self.error = exc

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop_event.set()
        self.join(30)

    def check(self):
        """Raise ``BenchFailure`` if the publisher failed or stopped."""
        if self.error is not None or not (self.is_alive() or self.stop_event.is_set()):
            raise BenchFailure(f"traffic publisher stopped: {self.error!r}")


def check_running(*things):
    """``BenchFailure`` (with its log) if one of the processes exited or the ``Traffic`` stopped."""
    for thing in things:
        if isinstance(thing, Traffic):
            thing.check()
        elif not thing.alive():
            raise BenchFailure(f"{thing.name} exited:\n{thing.log()[-3000:]}")


def sleep_checking(seconds, *things):
    """Sleep ``seconds`` (a measurement window), checking first and every second that ``things`` still run."""
    end = time.monotonic() + seconds
    check_running(*things)
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        check_running(*things)


# output ---------------------------------------------------------------------------------


def machine():
    """What the numbers were measured on, and other test or benchmark processes running now."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "")  # the one figure psutil does not give
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": model, "python": platform.python_version(),
            "git_commit": commit.stdout.strip(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "loadavg_at_start": os.getloadavg()[0], "other_processes": foreign_processes()}


def foreign_processes():
    """Test and benchmark processes this run did not start (they share the cores and skew the numbers)."""
    me = psutil.Process()
    mine = {me.pid, *(parent.pid for parent in me.parents())}  # this run and whoever launched it
    patterns = ("pytest", "bench/", "-m worker", "app.py", "multiprocessing")
    commands = {" ".join(p.info["cmdline"] or ()) for p in psutil.process_iter(["ppid", "cmdline"])
                if p.pid not in mine and p.info["ppid"] != me.pid}
    return sorted({command[:120] for command in commands if any(p in command for p in patterns)})


def fmt(value, digits=1):
    """A number for a table ("-" for None)."""
    return "-" if value is None else f"{value:,.{digits}f}"


def shown(value):
    """A figure for a table: numbers with 2 decimals, a dict as ``key value`` pairs, at most 160 characters."""
    if isinstance(value, dict):
        return ", ".join(f"{key} {shown(item)}" for key, item in value.items())[:160]
    if isinstance(value, (list, tuple)):
        return json.dumps(value, default=str)[:160]
    return fmt(value, 2) if isinstance(value, float) else value


def figures(data, *paths):
    """A table (headers, rows) of the figures of ``data`` at ``paths`` ("a.b"; a dict: a row per item)."""
    rows = []
    for path in paths:
        value = functools.reduce(lambda found, part: found[part], path.split("."), data)
        for key, item in value.items() if isinstance(value, dict) else [(None, value)]:
            rows.append([path if key is None else f"{path}.{key}", shown(item)])
    return ["figure", "value"], rows


def table(headers, rows):
    """A plain-text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [" | ".join(c.rjust(w) if n else c.ljust(w) for n, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in cells]
    return "\n".join([lines[0], "-+-".join("-" * w for w in widths), *lines[1:]])


def report(args, data, tables=(), notes=()):
    """Print ``tables`` (``(headers, rows)``) and ``notes``; write ``data`` with the machine and the
    arguments to ``bench/results/<args.output>.json``."""
    info = {**MACHINE, "loadavg_at_end": os.getloadavg()[0],  # other processes: seen at the start or at the end
            "other_processes": sorted({*MACHINE["other_processes"], *foreign_processes()})}
    print(*(f"\n{table(headers, rows)}" for headers, rows in tables), "", *notes, sep="\n")
    if info["other_processes"]:
        print(f"WARNING: the machine was shared with {len(info['other_processes'])} other test/benchmark "
              f"processes ({'; '.join(info['other_processes'][:3])}): the numbers measure contention too")
    print(f"worker settings: {info.get('worker_settings')}")
    print(f"machine: nproc {info['nproc']} ({info['cpu_model']}), load average {info['loadavg_at_start']:.1f} "
          f"at start, {info['loadavg_at_end']:.1f} at end; PostgreSQL, RabbitMQ, the server, the worker and the "
          f"load generator share these cores")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{args.output}.json"
    path.write_text(json.dumps({"args": vars(args), "machine": info, **data}, indent=2, default=str) + "\n")
    print(f"results: {path.relative_to(REPO)}")
