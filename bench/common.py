"""Shared helpers of the benchmarks: an isolated environment, tables, JSON results, CPU use.

Every benchmark runs on its own PostgreSQL database (cloned from a freshly migrated
template) and its own RabbitMQ vhost, both made with ``tests/support.py``, and removes
them, with every process it started, in a ``finally``.
"""

import contextlib
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests import support  # noqa: E402  (needs the repo root on sys.path)

RESULTS_DIR = REPO / "bench" / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchFailure(Exception):
    """A benchmark could not measure what it should (a stall, a lost message, a dead process)."""


def _terminate_on_sigterm():
    """Turn SIGTERM into SystemExit so the ``finally`` blocks clean up."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def environment(name, keep_logs=False, **settings):
    """Yield a ``support.Stack`` on a fresh database and vhost; remove everything afterwards.

    ``settings`` become environment variables of every process the stack starts. The
    processes' logs go to a temporary directory that is deleted after a clean run and
    kept (its path printed) after a failure or with ``keep_logs``.
    """
    _terminate_on_sigterm()
    support.require_services()
    template = database = vhost = stack = None
    log_dir = tempfile.mkdtemp(prefix=f"bench-{name}-")
    failed = True
    try:
        template = support.create_template_database()
        database = support.create_database(template)
        vhost = support.create_vhost()
        stack = support.Stack(database, vhost, log_dir, **settings)
        yield stack
        failed = False
    finally:
        errors = []
        for step, action in (
            ("stop processes", stack.stop if stack else None),
            ("drop database", (lambda: support.drop_database(database)) if database else None),
            ("drop template", (lambda: support.drop_database(template)) if template else None),
            ("delete vhost", (lambda: support.delete_vhost(vhost)) if vhost else None),
        ):
            if action is None:
                continue
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - go on cleaning up, report at the end
                errors.append(f"{step}: {exc!r}")
        if failed or keep_logs:
            print(f"process logs kept in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
        for error in errors:
            print(f"cleanup error: {error}", file=sys.stderr)


def machine():
    """What the numbers were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = ""
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_at_start": os.getloadavg(),
    }


def worker_settings(stack):
    """The settings a worker of ``stack`` reads from its environment (via the product's Config)."""
    from unittest import mock

    from config import Config

    with mock.patch.dict(os.environ, stack.env(), clear=True):
        config = Config()
    return {
        "WORKER_BATCH_SIZE": config.WORKER_BATCH_SIZE,
        "WORKER_BATCH_LINGER_MS": config.WORKER_BATCH_LINGER_MS,
        "prefetch_count": config.WORKER_BATCH_SIZE * 2,
        "THROTTLE_SECONDS": config.THROTTLE_SECONDS,
        "LOG_LEVEL": config.LOG_LEVEL,
    }


def table(headers, rows):
    """A plain-text table; numbers right-aligned."""
    text_rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in text_rows)) if text_rows else len(str(h))
              for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) and rows for i in range(len(headers))]

    def line(cells):
        return " | ".join(
            cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i]) for i, cell in enumerate(cells)
        ).rstrip()

    out = [line([str(h) for h in headers]), "-+-".join("-" * w for w in widths)]
    out.extend(line(row) for row in text_rows)
    return "\n".join(out)


def _is_number(value):
    if isinstance(value, (int, float)):
        return True
    try:
        float(str(value).replace(",", "").rstrip("x%"))
        return True
    except ValueError:
        return False


def write_results(name, data):
    """Write ``bench/results/<name>.json``; return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    return path


def percentile(sorted_values, fraction):
    """Nearest-rank percentile of an ascending list (``fraction`` in [0, 1])."""
    if not sorted_values:
        return None
    rank = min(max(1, math.ceil(len(sorted_values) * fraction)), len(sorted_values))
    return sorted_values[rank - 1]


def process_cpu_times(pid):
    """(user, system) CPU seconds a process (by pid) used so far, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS  # utime, stime


def process_cpu_seconds(pid):
    """User + system CPU seconds a process (by pid) used so far, or None once it is gone."""
    times = process_cpu_times(pid)
    return None if times is None else sum(times)


def command_cpu_seconds(command):
    """CPU seconds used so far by every running process whose command name is ``command``
    (e.g. all of PostgreSQL's: ``postgres``); processes that ended meanwhile are not counted."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != command:
                continue
        except OSError:
            continue
        total += process_cpu_seconds(entry.name) or 0.0
    return total


def machine_cpu_times():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])
    return total - idle, total


def queue_depth(connection, name):
    """Ready messages in a queue (passive ``queue.declare``; the queue must exist)."""
    channel = connection.channel()
    try:
        return channel.queue_declare(queue=name, passive=True).message_count
    finally:
        channel.close()


def rss_mb(pid):
    """Resident memory of a process (``VmRSS`` of ``/proc/<pid>/status``) in MB, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def raise_open_files_limit(wanted=65536):
    """Raise this process's RLIMIT_NOFILE (inherited by every child started later); return (soft, hard).

    The soft limit goes up to the hard one; as root the hard limit is raised to ``wanted`` first
    when it is lower (falling back to the current hard limit if the kernel refuses).
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted and os.geteuid() == 0:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else min(max(soft, wanted), hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def open_files_limit(pid):
    """The soft ``Max open files`` of a running process (from ``/proc/<pid>/limits``), or None."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                value = line.split()[3]
                return None if value == "unlimited" else int(value)
    except (OSError, ValueError, IndexError):
        return None
    return None


def add_run_options(parser, name):
    """The options every benchmark has: ``--keep-logs`` and ``--output``."""
    parser.add_argument("--keep-logs", action="store_true", help="keep the server's and worker's logs")
    parser.add_argument("--output", default=name, help=f"results file name under bench/results/ (default {name})")


def run(main):
    """Run a benchmark's ``main`` as a script: exit with its status, or 1 on ``BenchFailure``."""
    try:
        sys.exit(main())
    except BenchFailure as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        sys.exit(1)


def wait_for_campaigns(stack, worker, count, what, timeout=60):
    """Wait until the worker has applied the set-up events: ``count`` campaigns exist."""

    def applied():
        if not worker.alive():
            raise BenchFailure(f"worker exited:\n{worker.log()[-3000:]}")
        return stack.sql("SELECT count(*) FROM campaigns")[0][0] == count

    try:
        support.wait_until(applied, timeout, 0.05, what)
    except AssertionError as exc:
        raise BenchFailure(f"{exc}\n{worker.log()[-3000:]}") from None


def receive_from_child(process, pipe, timeout):
    """The next message a child process sends on ``pipe``; ``BenchFailure`` if it dies or stays silent."""
    deadline = time.monotonic() + timeout
    while not pipe.poll(0.5):
        if not process.is_alive():
            raise BenchFailure(f"{process.name} exited with {process.exitcode}")
        if time.monotonic() > deadline:
            raise BenchFailure(f"{process.name} did not answer within {timeout} s")
    return pipe.recv()


def percent_of_core(before, after, seconds):
    """CPU seconds between two readings as % of one core over ``seconds`` (None if a reading is missing)."""
    if before is None or after is None:
        return None
    return 100 * (after - before) / seconds


class PacedTraffic(threading.Thread):
    """Publishes campaign events at a steady ``rate`` per second from its own connection,
    catching up after a slow publish. ``events(n, elapsed)`` gives what the n-th tick publishes
    (override it); ``count`` is the number of ticks so far, ``published`` the events.
    """

    def __init__(self, stack, rate, name="traffic", wait=0.002):
        super().__init__(name=name, daemon=True)
        self.stack, self.rate, self.wait = stack, rate, wait
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.count = 0
        self.published = 0
        self.error = None

    def events(self, n, elapsed):
        """The events of tick ``n``, ``elapsed`` seconds after the start."""
        raise NotImplementedError

    def run(self):
        try:
            publisher = self.stack.publisher(confirm=False)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        started = time.monotonic()
        try:
            while not self.stop_event.is_set():
                elapsed = time.monotonic() - started
                due = int(elapsed * self.rate)
                while self.count < due and not self.stop_event.is_set():
                    for event in self.events(self.count, elapsed):
                        publisher.publish(event)
                        self.published += 1
                    self.count += 1
                self.stop_event.wait(self.wait)
        except Exception as exc:  # noqa: BLE001
            self.error = exc
        finally:
            publisher.close()

    def start_and_wait(self, timeout=30):
        """Start, and raise ``BenchFailure`` if the publisher could not connect."""
        self.start()
        self.ready.wait(timeout)
        self.check()

    def check(self):
        """Raise ``BenchFailure`` if the publisher failed or stopped."""
        if self.error is not None:
            raise BenchFailure(f"traffic publisher: {self.error!r}")
        if self.ready.is_set() and not self.is_alive() and not self.stop_event.is_set():
            raise BenchFailure("traffic publisher stopped")

    def stop(self):
        """Stop publishing and wait for the thread."""
        self.stop_event.set()
        if self.ident is not None:
            self.join(30)


class ForeignActivity:
    """Samples, every ``interval`` seconds in a thread, the test and benchmark processes on this
    machine that this process did not start (other people's runs share the cores and skew the
    numbers); ``seen`` maps their pids to their command lines.
    """

    PATTERN = ("pytest", "bench/", "-m worker", "app.py", "multiprocessing")

    def __init__(self, interval=2.0):
        import threading

        self.interval = interval
        self.seen = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="foreign-activity", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join(10)
        self.sample()

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def note(self):
        """A warning when other people's runs shared the machine (else None)."""
        if not self.seen:
            return None
        commands = "; ".join(sorted(set(self.seen.values()))[:4])
        return (f"WARNING: the machine was shared: {len(self.seen)} other test/benchmark processes ran meanwhile "
                f"({commands}): these numbers measure contention as much as the product")

    def sample(self):
        parents, commands = {}, {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            pid = int(entry.name)
            parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
            commands[pid] = command
        mine = os.getpid()
        launchers, pid = set(), mine  # whoever started this run (make, timeout, a shell) is not foreign
        while pid not in (0, 1) and pid not in launchers:
            launchers.add(pid)
            pid = parents.get(pid, 0)
        for pid, command in commands.items():
            if pid in launchers or not any(pattern in command for pattern in self.PATTERN):
                continue
            ancestor, hops = pid, 0
            while ancestor not in (0, 1, mine) and hops < 64:
                ancestor, hops = parents.get(ancestor, 0), hops + 1
            if ancestor != mine:
                self.seen.setdefault(pid, command[:160])


class SeqTally:
    """What one dashboard received: updates, replayed ones, and seq gaps (updates of its tenant it
    never got), counted from the snapshot's ``seq`` on."""

    __slots__ = ("updates", "replayed", "gaps", "last_seq")

    def __init__(self):
        self.updates = self.replayed = self.gaps = 0
        self.last_seq = None

    def snapshot(self, data):
        """Start from a ``campaign_snapshot``."""
        self.last_seq = data["seq"]

    def update(self, data):
        """Count one ``campaign_update``."""
        self.updates += 1
        if data.get("replayed"):
            self.replayed += 1
        seq, last = data["seq"], self.last_seq
        if last is not None and seq > last + 1:
            self.gaps += seq - last - 1
        self.last_seq = seq if last is None else max(seq, last)


def sum_tallies(tallies):
    """Totals of ``SeqTally``s, as a child process reports them."""
    return {name: sum(getattr(t, name) for t in tallies) for name in ("updates", "replayed", "gaps")}
