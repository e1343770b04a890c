"""Server CPU per long-polling request on a new connection (what a Node client costs per GET):
the server's HTTP path (``sockets/http_server.py``'s ``serve``) against eventlet's own WSGI server
and protocol, in the same run, on the same python-engineio application. How to read the figures:
docs/benchmarks.md.
"""

import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402
from bench.harness import BenchFailure, fmt  # noqa: E402
from stack import free_port, wait_until  # noqa: E402

SERVERS = ("eventlet", "campaign-live")  # the baseline first
CPU_PATH = "/cpu"
# A poll of a session the server does not know: the whole HTTP path and Engine.IO's routing, and
# an answer (400) without a session's state, so that every request costs the same.
POLL = (b"GET /socket.io/?EIO=4&transport=polling&sid=unknown HTTP/1.1\r\nHost: bench\r\n"
        b"User-Agent: node\r\nAccept: */*\r\nConnection: close\r\n\r\n")


def serve(kind, port):
    """The server process: python-engineio with our polling install, served by ``kind``'s HTTP path;
    ``GET /cpu`` answers this process's CPU seconds."""
    import eventlet

    eventlet.monkey_patch()
    import engineio
    from eventlet import wsgi

    from sockets import polling
    from sockets.http_server import listen
    from sockets.http_server import serve as serve_ours

    eio = engineio.Server(async_mode="eventlet", monitor_clients=False)
    eio.on("connect", lambda sid, environ: True)
    polling.install(eio)
    engineio_app = engineio.WSGIApp(eio, engineio_path="socket.io")

    def app(environ, start_response):
        if environ["PATH_INFO"] != CPU_PATH:
            return engineio_app(environ, start_response)
        body = repr(time.process_time()).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    if kind == "campaign-live":
        serve_ours(app, "127.0.0.1", port, 1024, max_size=10000)
    else:
        wsgi.server(listen("127.0.0.1", port, 1024), app, log_output=False, debug=False, max_size=10000)


def get(port, raw):
    """Send ``raw`` on a new connection; the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(raw)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer


def server_cpu(port):
    """The server process's CPU seconds so far."""
    return float(get(port, f"GET {CPU_PATH} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
                 .split(b"\r\n\r\n", 1)[1])


def measure(kind, requests, threads):
    """Start ``kind``'s server, warm it, make ``requests`` new-connection polls from ``threads``
    threads; µs of server CPU per request, requests per second."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([sys.executable, "-W", "ignore", __file__, "--serve", kind, str(port)],
                                   cwd=harness.REPO, stdout=subprocess.DEVNULL, stderr=log)
        try:
            with contextlib.suppress(AssertionError):
                wait_until(lambda: process.poll() is not None or _answers(port), 15, 0.05)
            if process.poll() is not None or not _answers(port):
                log.seek(0)
                raise BenchFailure(f"{kind}'s server did not answer: {log.read().decode()[-2000:]}")
            return _polls(kind, port, requests, threads)
        finally:
            process.terminate()
            process.wait(10)


def _polls(kind, port, requests, threads):
    """``requests`` polls from ``threads`` threads after a warm-up; the server's CPU per request."""
    for _ in range(200):
        get(port, POLL)
    answers = []

    def client(count):
        answers.extend(get(port, POLL).split(b"\r\n", 1)[0] for _ in range(count))

    workers = [threading.Thread(target=client, args=(requests // threads,)) for _ in range(threads)]
    cpu, began = server_cpu(port), time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    cpu, wall = server_cpu(port) - cpu, time.monotonic() - began
    if len(answers) != requests // threads * threads or len(set(answers)) != 1:
        raise BenchFailure(f"{kind}: {len(answers)} answers, status lines {set(answers)}")
    return {"us_per_request": cpu / len(answers) * 1e6, "requests_per_s": len(answers) / wall,
            "status": answers[0].decode()}


def _answers(port):
    try:
        return bool(server_cpu(port))
    except (OSError, ValueError, IndexError):
        return False


def main(args):
    rounds = {kind: [] for kind in SERVERS}
    for _ in range(args.rounds):  # alternated, so that a busier minute falls on both
        for kind in SERVERS:
            rounds[kind].append(measure(kind, args.requests, args.threads))
    medians = {kind: {key: statistics.median(r[key] for r in found) for key in ("us_per_request", "requests_per_s")}
               for kind, found in rounds.items()}
    base = medians[SERVERS[0]]["us_per_request"]
    rows = [[kind, fmt(m["us_per_request"]), fmt(m["us_per_request"] / base, 2),
             " ".join(fmt(r["us_per_request"], 0) for r in rounds[kind]), fmt(m["requests_per_s"], 0)]
            for kind, m in medians.items()]
    harness.report(args, {"rounds": rounds, "medians": medians},
                   tables=[(["server", "µs CPU/request", "ratio", "rounds", "requests/s"], rows)],
                   notes=[f"{args.requests} new-connection polls per round from {args.threads} threads, "
                          f"{args.rounds} alternated rounds (medians); answer: {rounds[SERVERS[1]][0]['status']}"])
    return 0


PARSER = harness.options(__doc__, "poll_request_cost", {"requests": 2000, "rounds": 1},
                         requests=(20000, "polls per round"), rounds=(5, "rounds of each server"),
                         threads=(16, "client threads"))

if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        harness.run(main, PARSER)
