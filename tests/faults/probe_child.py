"""Run by tests/faults/test_login_flood.py in its own process: ``GET`` one path back to back
until its standard input closes, then print one JSON line ``{"latencies": [...], "statuses": {...}}``.

Its own process, so that the test's flooding threads (and the GIL they share) add nothing to
what is measured. A new connection each time, as a load balancer's check does: on a kept-alive
connection gevent's server answers ~40 ms late even at rest (headers and body in two writes:
Nagle's algorithm waits for the client's delayed ACK), which would hide what the test looks at.

Usage: ``python -m tests.faults.probe_child PORT PATH HEADERS_JSON PAUSE_SECONDS``; prints
``probing`` once the first answer came.
"""

import http.client
import json
import sys
import threading
import time
from collections import Counter


def probe(port, path, headers, pause, stop):
    """Latencies and status counts of ``GET path`` repeated (``pause`` s apart) until ``stop`` is set."""
    latencies, statuses = [], Counter()
    while not stop.is_set():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        started = time.perf_counter()
        connection.request("GET", path, headers=headers)
        answer = connection.getresponse()
        answer.read()
        elapsed = time.perf_counter() - started
        connection.close()
        statuses[answer.status] += 1
        if sum(statuses.values()) == 1:
            # The first answer only says the probe works (and warms up this process's code):
            # it comes before the test's load starts, so it is not recorded.
            print("probing", flush=True)
        else:
            latencies.append(elapsed)
        stop.wait(pause)  # pacing of the probe, not a wait for anything
    return latencies, statuses


def main():
    """Probe until stdin closes; print the findings."""
    port, path, headers, pause = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4])
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    latencies, statuses = probe(port, path, headers, pause, stop)
    print(json.dumps({"latencies": latencies, "statuses": dict(statuses)}), flush=True)


if __name__ == "__main__":
    main()
