"""The worker's HTTP port (``WORKER_METRICS_PORT``): ``/metrics``, ``/healthz`` and ``/readyz``.

The server's ``/readyz`` checks the server's own database and broker connections; it cannot
see that a worker is retrying (a read-only database still answers ``SELECT 1``; a schema
behind the code only fails the worker's statements). So the worker says it itself:
``/readyz`` answers 503 naming what fails while the worker retries the database or
reconnects to the broker, and the gauge ``campaign_live_worker_ready`` says the same to
Prometheus (``campaign_live_worker_retries_total{reason}`` counts the retries).
"""

import json
import logging
import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

log = logging.getLogger(__name__)


class WorkerHealth:
    """What the worker cannot do right now, by component (``database``, ``broker``).

    Written by the consumer's loop, read by the HTTP threads (plain dict updates, atomic
    under the GIL).
    """

    def __init__(self):
        self.failures = {}

    def fail(self, component, reason):
        """Note that ``component`` fails (the first time: since now)."""
        since = self.failures.get(component, {}).get("since", time.time())
        self.failures[component] = {"reason": reason, "since": since}

    def ok(self, component):
        """Note that ``component`` works again."""
        self.failures.pop(component, None)

    def readiness(self):
        """``(ready, failing)`` where ``failing`` maps a component to its reason and seconds failing."""
        failing = {
            name: {"reason": state["reason"], "seconds": round(time.time() - state["since"], 1)}
            for name, state in list(self.failures.items())
        }
        return not failing, failing


def health_app(health):
    """A WSGI app: ``/healthz``, ``/readyz``, anything else is the Prometheus text."""
    prometheus = make_wsgi_app()

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path not in ("/healthz", "/readyz"):
            return prometheus(environ, start_response)
        ready, failing = health.readiness() if path == "/readyz" else (True, {})
        body = {"status": "ok"} if ready else {"status": "unavailable", "failing": failing}
        status = "200 OK" if ready else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    timeout = 5  # seconds: an idle connection does not keep its thread

    def log_message(self, format, *args):  # noqa: A002 - the standard library's signature
        """Scrapes and probes are not worth a log line each."""


def serve_health(health, host, port):
    """Serve ``health_app`` on ``host:port`` from a daemon thread; return the server."""
    server = make_server(host, port, health_app(health), _Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="worker-http", daemon=True).start()
    log.info("[WORKER] metrics and probes on http://%s:%s (/metrics, /healthz, /readyz)", host, port)
    return server
