"""Ingest throughput: how fast one ``python -m worker`` applies a backlog of campaign events.

What is measured
    N events (default 100,000) for 50 campaigns of 10 tenants are published to the
    ``campaign.events`` exchange while no worker runs: one ``campaign_started`` per campaign
    (``total_messages`` = its sent + failed), then ~95 % ``message_sent``, ~3 %
    ``message_failed`` and ~2 % ``next_message_starting``, campaigns interleaved. Before
    publishing, the worker queue and an extra queue ``bench.bare`` (bound with ``#``) are
    declared, so each gets its own copy; both depths are checked to be exactly N before
    anything consumes (the publisher does not use confirms, for speed).

    1. bare:   a kombu consumer in this process on ``bench.bare``, prefetch 1000, that only
               acknowledges each message. Time from its first message to the N-th ack. This is
               the ceiling the broker and a Python AMQP client give on this machine.
    2. worker: ONE ``python -m worker`` (LOG_LEVEL=WARNING) started on the full worker queue.
               "end to end" is from starting the process until ``SELECT count(*) FROM
               applied_events`` = N (polled at ~20 Hz), so it includes interpreter start-up,
               imports and connecting. "steady" excludes start-up: it uses the ``applied_at``
               column, which the worker sets to the start time of each batch, so it is
               (N - events of the last batch) / (max(applied_at) - min(applied_at)).

    At the end every campaign's ``sent``, ``failed`` and ``version`` are compared with what
    was published (exactness: each event applied exactly once); nothing may be dead-lettered.
    The script prints PASS/FAIL and exits 1 on FAIL.

How to read it
    The table gives events/s and the ratio to the bare consumer. The issue's target is that
    the worker reaches at least min(10,000 events/s, half the bare rate); it is evaluated for
    both worker rows. On a small machine (see nproc) PostgreSQL, RabbitMQ and the worker share
    the same cores, so the worker's rate is a lower bound of what a dedicated host gives;
    a WARNING names other test or benchmark processes seen running at the same time. Also
    printed: the worker's batches (count, mean size) and CPU use, to tell a CPU-bound worker
    from one that waits on round trips.
    Results are also written to ``bench/results/ingest.json``.

Usage
    .venv/bin/python bench/ingest.py [--events N] [--batch-size B] [--linger-ms MS] [--quick]
"""

import argparse
import contextlib
import os
import random
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2  # noqa: E402
from kombu import Connection, Consumer, Queue  # noqa: E402

from bench import common  # noqa: E402
from bench.common import BenchFailure, support  # noqa: E402
from campaigns.publisher import make_event  # noqa: E402
from worker.queues import DEAD_LETTER_QUEUE, declare_topology, events_exchange  # noqa: E402

WORKER_QUEUE = "campaign.events.worker"
BARE_QUEUE = "bench.bare"
TARGET_EVENTS_PER_SECOND = 10_000


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events to publish (default 100000)")
    parser.add_argument("--tenants", type=int, default=10, help="tenants (default 10)")
    parser.add_argument("--campaigns", type=int, default=50, help="campaigns over all tenants (default 50)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="WORKER_BATCH_SIZE for the worker (default: the product's default)")
    parser.add_argument("--linger-ms", type=int, default=None,
                        help="WORKER_BATCH_LINGER_MS for the worker (default: the product's default)")
    parser.add_argument("--prefetch", type=int, default=1000, help="prefetch of the bare consumer (default 1000)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="give up when one phase takes longer than this many seconds (default 900)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the event mix")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5,000 events")
    common.add_run_options(parser, "ingest")
    args = parser.parse_args(argv)
    if args.quick:
        args.events = 5_000
    if args.campaigns < args.tenants or args.events < args.campaigns:
        parser.error("need campaigns >= tenants and events >= campaigns")
    return args


# the events ---------------------------------------------------------------------------


def build_events(n, tenant_ids, campaign_count, seed):
    """The N events to publish and what each campaign must end up with."""
    rng = random.Random(seed)
    campaigns = [(tenant_ids[i % len(tenant_ids)], f"bench-c{i:03d}") for i in range(campaign_count)]
    expected = {key: {"sent": 0, "failed": 0, "events": 1} for key in campaigns}
    counts = {"campaign_started": len(campaigns), "message_sent": 0, "message_failed": 0, "next_message_starting": 0}
    progress = []
    for i in range(n - len(campaigns)):
        key = campaigns[rng.randrange(len(campaigns))]
        tenant_id, campaign_id = key
        roll = rng.random()
        if roll < 0.95:
            kind, data = "message_sent", {"message_id": f"m-{i}"}
            expected[key]["sent"] += 1
        elif roll < 0.98:
            kind, data = "message_failed", {"message_id": f"m-{i}", "error": "recipient is not on WhatsApp"}
            expected[key]["failed"] += 1
        else:
            kind, data = "next_message_starting", {"message_id": f"m-{i}", "position": i}
        expected[key]["events"] += 1
        counts[kind] += 1
        progress.append(make_event(tenant_id, campaign_id, kind, data))
    starts = [
        make_event(tenant_id, campaign_id, "campaign_started",
                   {"name": f"Bench {campaign_id}", "total_messages": expected[(tenant_id, campaign_id)]["sent"]
                    + expected[(tenant_id, campaign_id)]["failed"]})
        for tenant_id, campaign_id in campaigns
    ]
    return starts + progress, expected, counts


def publish_backlog(stack, events, timeout):
    """Declare the queues, publish every event unconfirmed, then check both queues hold N."""
    bare_queue = Queue(BARE_QUEUE, exchange=events_exchange, routing_key="#", durable=True)
    with Connection(stack.broker_url) as connection:
        declare_topology(connection, WORKER_QUEUE)
        bare_queue(connection.default_channel).declare()
        publisher = stack.publisher(confirm=False)
        started = time.perf_counter()
        try:
            for event in events:
                publisher.publish(event)
        finally:
            publisher.close()
        published = time.perf_counter() - started
        n = len(events)

        def all_routed():
            depths = {name: common.queue_depth(connection, name) for name in (WORKER_QUEUE, BARE_QUEUE)}
            if any(depth > n for depth in depths.values()):
                raise BenchFailure(f"more messages than published in the queues: {depths}")
            return depths if all(depth == n for depth in depths.values()) else None

        try:
            support.wait_until(all_routed, timeout, 0.05, f"both queues to hold {n} messages")
        except AssertionError as exc:
            depths = {q: common.queue_depth(connection, q) for q in (WORKER_QUEUE, BARE_QUEUE)}
            raise BenchFailure(f"{exc}; depths now: {depths}") from None
        routed = time.perf_counter() - started
    return {"publish_seconds": published, "routed_seconds": routed, "publish_rate": n / published}


# 1. the bare consumer -----------------------------------------------------------------


def run_bare(stack, n, prefetch, timeout):
    """Ack-only kombu consumer on ``bench.bare``: seconds from the first message to the N-th ack."""
    state = {"count": 0, "first": None, "last": None}
    cpu_before = time.process_time()

    def on_message(message):
        if state["first"] is None:
            state["first"] = time.perf_counter()
        message.ack()
        state["count"] += 1
        if state["count"] == n:
            state["last"] = time.perf_counter()

    queue = Queue(BARE_QUEUE, exchange=events_exchange, routing_key="#", durable=True)
    with Connection(stack.broker_url) as connection:
        channel = connection.channel()
        consumer = Consumer(channel, queues=[queue], on_message=on_message, prefetch_count=prefetch)
        deadline = time.monotonic() + timeout
        with consumer:
            while state["count"] < n:
                if time.monotonic() > deadline:
                    raise BenchFailure(f"bare consumer: {state['count']} of {n} after {timeout}s")
                with contextlib.suppress(socket.timeout):
                    connection.drain_events(timeout=1.0)
        channel.close()
    # A fresh connection: unacknowledged messages of the closed one would be back in the queue.
    with Connection(stack.broker_url) as connection:
        left = common.queue_depth(connection, BARE_QUEUE)
        connection.default_channel.queue_delete(BARE_QUEUE)
    if left:
        raise BenchFailure(f"bare consumer: {left} messages still in {BARE_QUEUE} after acking {n}")
    seconds = state["last"] - state["first"]
    cpu = time.process_time() - cpu_before
    return {"events": n, "seconds": seconds, "rate": n / seconds, "prefetch": prefetch, "cpu_seconds": cpu}


# 2. the worker ------------------------------------------------------------------------


def run_worker(stack, n, timeout):
    """Start one worker; time until ``applied_events`` holds N rows."""
    database = psycopg2.connect(stack.database_url)
    database.autocommit = True
    try:
        with database.cursor() as cursor:
            def applied():
                cursor.execute("SELECT count(*) FROM applied_events")
                return cursor.fetchone()[0]

            if applied():
                raise BenchFailure("applied_events is not empty before the worker starts")
            started_wall = time.time()
            started = time.perf_counter()
            machine_before = common.machine_cpu_times()
            worker = stack.start_worker(wait=False)
            state = {"count": 0, "changed": time.monotonic()}

            def done():
                count = applied()
                if count != state["count"]:
                    state["count"], state["changed"] = count, time.monotonic()
                if count >= n:
                    return True
                if not worker.alive():
                    raise BenchFailure(f"worker exited ({worker.popen.returncode}) after {count} of {n}:\n"
                                       f"{worker.log()[-3000:]}")
                if count and time.monotonic() - state["changed"] > 60:
                    raise BenchFailure(f"worker stalled at {count} of {n} for 60 s:\n{worker.log()[-3000:]}")
                return False

            try:
                support.wait_until(done, timeout, 0.05, f"{n} applied events")
            except AssertionError as exc:
                raise BenchFailure(f"{exc} ({state['count']} applied)\n{worker.log()[-3000:]}") from None
            seconds = time.perf_counter() - started
            worker_cpu = common.process_cpu_seconds(worker.pid)
            machine_after = common.machine_cpu_times()
            cursor.execute(
                "SELECT count(*), min(applied_at), max(applied_at), "
                "count(*) FILTER (WHERE applied_at = (SELECT max(applied_at) FROM applied_events)) "
                "FROM applied_events"
            )
            count, first, last, in_last_batch = cursor.fetchone()
            cursor.execute("SELECT count(DISTINCT applied_at) FROM applied_events")
            batches = cursor.fetchone()[0]
    finally:
        database.close()
    steady_seconds = (last - first).total_seconds()
    steady_events = count - in_last_batch
    return {
        "events": count,
        "seconds": seconds,
        "rate": count / seconds,
        "startup_seconds": first.timestamp() - started_wall,
        "steady_seconds": steady_seconds,
        "steady_events": steady_events,
        "steady_rate": steady_events / steady_seconds if steady_seconds > 0 else None,
        "last_batch_events": in_last_batch,
        "batches": batches,
        "mean_batch": count / batches,
        "worker_cpu_seconds": worker_cpu,
        "worker_cpu_percent": 100 * worker_cpu / seconds if worker_cpu is not None else None,
        "machine_busy_percent": 100 * (machine_after[0] - machine_before[0])
        / max(machine_after[1] - machine_before[1], 1),
        "worker_pid": worker.pid,
    }


def check_exactness(stack, expected, counts):
    """Every campaign's sent/failed/version equals what was published; nothing dead-lettered."""
    rows = stack.sql("SELECT tenant_id, id, sent, failed, version, total, status FROM campaigns")
    found = {(t, c): {"sent": s, "failed": f, "version": v, "total": total, "status": status}
             for t, c, s, f, v, total, status in rows}
    problems = []
    for key, want in expected.items():
        got = found.get(key)
        if got is None:
            problems.append(f"{key}: missing")
            continue
        if (got["sent"], got["failed"], got["version"]) != (want["sent"], want["failed"], want["events"]):
            problems.append(f"{key}: sent/failed/version {got['sent']}/{got['failed']}/{got['version']}, "
                            f"want {want['sent']}/{want['failed']}/{want['events']}")
    extra = set(found) - set(expected)
    if extra:
        problems.append(f"unexpected campaigns: {sorted(extra)[:5]}")
    sent = sum(row["sent"] for row in found.values())
    failed = sum(row["failed"] for row in found.values())
    if sent + failed != counts["message_sent"] + counts["message_failed"]:
        problems.append(f"sent+failed {sent}+{failed} = {sent + failed}, published "
                        f"{counts['message_sent'] + counts['message_failed']}")
    with Connection(stack.broker_url) as connection:
        dead = common.queue_depth(connection, DEAD_LETTER_QUEUE)
    if dead:
        problems.append(f"{dead} messages dead-lettered")
    return {
        "passed": not problems,
        "problems": problems,
        "campaigns_sent": sent,
        "campaigns_failed": failed,
        "published_sent": counts["message_sent"],
        "published_failed": counts["message_failed"],
        "dead_lettered": dead,
    }


# main ---------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    settings = {"LOG_LEVEL": "WARNING"}
    if args.batch_size:
        settings["WORKER_BATCH_SIZE"] = args.batch_size
    if args.linger_ms is not None:
        settings["WORKER_BATCH_LINGER_MS"] = args.linger_ms
    info = common.machine()
    print(f"ingest benchmark: {args.events:,} events, {args.campaigns} campaigns of {args.tenants} tenants; "
          f"nproc {info['nproc']} ({info['cpu_model']})", flush=True)
    with common.ForeignActivity() as foreign, \
            common.environment("ingest", keep_logs=args.keep_logs, **settings) as stack:
        tenant_ids = [stack.create_tenant(f"bench-t{i:02d}") for i in range(args.tenants)]
        events, expected, counts = build_events(args.events, tenant_ids, args.campaigns, args.seed)
        publish = publish_backlog(stack, events, args.timeout)
        print(f"published {len(events):,} events in {publish['publish_seconds']:.2f} s "
              f"({publish['publish_rate']:,.0f}/s, unconfirmed); both queues hold {len(events):,}", flush=True)
        del events
        bare = run_bare(stack, args.events, args.prefetch, args.timeout)
        print(f"bare consumer done: {bare['rate']:,.0f} events/s", flush=True)
        config = common.worker_settings(stack)
        worker = run_worker(stack, args.events, args.timeout)
        print(f"worker done: {worker['rate']:,.0f} events/s end to end", flush=True)
        exact = check_exactness(stack, expected, counts)
    info["loadavg_at_end"] = os.getloadavg()

    target = min(TARGET_EVENTS_PER_SECOND, bare["rate"] / 2)
    rows = [
        ["bare kombu consumer (ack only)", f"{bare['events']:,}", f"{bare['seconds']:.2f}",
         f"{bare['rate']:,.0f}", "1.00x"],
        ["worker, end to end (from process start)", f"{worker['events']:,}", f"{worker['seconds']:.2f}",
         f"{worker['rate']:,.0f}", f"{worker['rate'] / bare['rate']:.2f}x"],
        ["worker, steady (first to last applied)", f"{worker['steady_events']:,}",
         f"{worker['steady_seconds']:.2f}", f"{worker['steady_rate']:,.0f}",
         f"{worker['steady_rate'] / bare['rate']:.2f}x"],
    ]
    print()
    print(common.table(["consumer", "events", "seconds", "events/s", "ratio vs bare"], rows))
    print()
    print(f"worker: 1 process, WORKER_BATCH_SIZE={config['WORKER_BATCH_SIZE']}, "
          f"WORKER_BATCH_LINGER_MS={config['WORKER_BATCH_LINGER_MS']}, prefetch {config['prefetch_count']}, "
          f"LOG_LEVEL={config['LOG_LEVEL']}; start-up until the first batch {worker['startup_seconds']:.2f} s")
    print(f"worker batches: {worker['batches']:,} (mean {worker['mean_batch']:.1f} events per batch); "
          f"worker CPU {worker['worker_cpu_percent']:.0f}% of one core, whole machine "
          f"{worker['machine_busy_percent']:.0f}% busy during the worker run; "
          f"bare consumer used {bare['cpu_seconds']:.2f} s CPU in this process")
    print(f"machine: nproc {info['nproc']}, {info['cpu_model']}, Python {info['python']}, load average at start "
          f"{info['loadavg_at_start'][0]:.2f}, at end {info['loadavg_at_end'][0]:.2f}; "
          f"PostgreSQL, RabbitMQ, the worker and this script share these cores")
    print(f"publish: {publish['publish_rate']:,.0f} events/s (unconfirmed, one connection)")
    note = foreign.note()
    if note:
        print(note)
    met_e2e = worker["rate"] >= target
    met_steady = worker["steady_rate"] >= target
    print(f"target: worker >= min(10,000, bare/2 = {bare['rate'] / 2:,.0f}) = {target:,.0f} events/s: "
          f"end to end {'MET' if met_e2e else 'NOT MET'} ({worker['rate']:,.0f}), "
          f"steady {'MET' if met_steady else 'NOT MET'} ({worker['steady_rate']:,.0f})")
    print(f"exactness: campaigns sent+failed = {exact['campaigns_sent']:,}+{exact['campaigns_failed']:,}, "
          f"published message_sent+message_failed = {exact['published_sent']:,}+{exact['published_failed']:,}, "
          f"dead-lettered {exact['dead_lettered']}: {'PASS' if exact['passed'] else 'FAIL'}")
    for problem in exact["problems"][:20]:
        print(f"  {problem}")

    path = common.write_results(args.output, {
        "benchmark": "ingest",
        "args": vars(args),
        "machine": info,
        "event_counts": counts,
        "publish": publish,
        "bare": bare,
        "worker": worker,
        "worker_settings": config,
        "target": {"events_per_second": target, "met_end_to_end": met_e2e, "met_steady": met_steady},
        "exactness": exact,
        "other_processes_seen": foreign.seen,
    })
    print(f"results: {path.relative_to(common.REPO)}")
    return 0 if exact["passed"] else 1


if __name__ == "__main__":
    common.run(main)
