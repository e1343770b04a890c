"""campaign-live on real services, for the tests and the benchmarks: the one implementation.

A private PostgreSQL database (cloned from a migrated template) and RabbitMQ vhost per test
module or benchmark; servers and workers started with ``subprocess`` and stopped by pid.
Nothing here mocks the database or the broker. ``tests/support.py`` adds the test clients.
"""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

import engineio
import psycopg2
import socketio

from campaigns.publisher import EventPublisher
from campaigns.tokens import mint_token

REPO = Path(__file__).resolve().parent
PYTHON = sys.executable
PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TEST_PG_USER", "postgres")
AMQP_HOST = os.environ.get("TEST_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("TEST_AMQP_PORT", "5672"))
JWT_SECRET = "test-jwt-secret-" + "x" * 32
SECRET_KEY = "test-secret-key-" + "y" * 32
TEMPLATE_DB = f"cl_template_{os.getpid()}"


def wait_until(predicate, timeout=10.0, interval=0.02, message="condition"):
    """Poll ``predicate`` until it returns a truthy value; fail with ``message`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def metric(text, name, **labels):
    """The value of one sample in a Prometheus text scrape (0.0 when the sample is absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(f"{name}{{{wanted}}}" if labels else name) + r" ([0-9.e+]+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def require_services():
    """Fail (never skip) with what to start when PostgreSQL or RabbitMQ does not answer."""
    for name, host, port in (("PostgreSQL", PG_HOST, PG_PORT), ("RabbitMQ", AMQP_HOST, AMQP_PORT)):
        try:
            socket.create_connection((host, port), timeout=3).close()
        except OSError as exc:
            raise RuntimeError(
                f"{name} does not answer on {host}:{port} ({exc}). Start it with `make services` "
                "(or `bash scripts/services.sh`), which starts the installed service."
            ) from None


# Ports handed out by free_port: below the kernel's range for outgoing connections, where a port
# picked (as bind(0) picks) could be taken by any process's next connect() before it is bound.
PORTS_FROM = 20000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port():
    """A TCP port nobody listens on right now, from a range no outgoing connection takes, and
    from a share of its own for each pytest-xdist process (``make test`` runs two)."""
    ephemeral_from = int(EPHEMERAL_RANGE.read_text().split()[0]) if EPHEMERAL_RANGE.exists() else 32768
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    share = (ephemeral_from - PORTS_FROM) // max(workers, 1)
    start = PORTS_FROM + share * int(worker[2:] if worker[2:].isdigit() else 0)
    # A kernel whose outgoing range starts low leaves no share: then its own pick (port 0).
    candidates = [random.randrange(start, start + share) for _ in range(100)] if share >= 100 else []
    for port in [*candidates, 0]:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise RuntimeError("no free TCP port on 127.0.0.1")


# PostgreSQL ---------------------------------------------------------------------------


def pg_url(database):
    """SQLAlchemy URL of a database on the test server."""
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


def pg_admin():
    """An autocommit connection to the maintenance database."""
    connection = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres")
    connection.autocommit = True
    return connection


def migrate(database_url):
    """Run ``flask --app app db upgrade`` against a database, as an operator would."""
    env = {**os.environ, "DATABASE_URL": database_url, "BROKER_URL": "memory://"}
    subprocess.run(
        [PYTHON, "-m", "flask", "--app", "app", "db", "upgrade"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )


def create_template_database():
    """A migrated database that test databases are cloned from; returns its name."""
    with closing(pg_admin()) as connection, connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
        cursor.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    migrate(pg_url(TEMPLATE_DB))
    return TEMPLATE_DB


def create_database(template):
    """A fresh database cloned from ``template``; returns its name."""
    name = f"cl_test_{uuid.uuid4().hex[:12]}"
    with closing(pg_admin()) as connection, connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


def drop_database(name):
    """Drop a test database, closing whatever still uses it."""
    with closing(pg_admin()) as connection, connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# RabbitMQ -----------------------------------------------------------------------------


def _rabbitmqctl(*args, stdin=None):
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60, input=stdin)


def create_vhost(user="guest"):
    """A fresh vhost that ``user`` (only) may use; returns its name.

    One ``rabbitmqctl import_definitions`` makes the vhost and the permission: each rabbitmqctl
    call starts an Erlang VM (~0.4 s of CPU)."""
    name = f"cl_test_{uuid.uuid4().hex[:12]}"
    definitions = {
        "vhosts": [{"name": name}],
        "permissions": [{"user": user, "vhost": name, "configure": ".*", "write": ".*", "read": ".*"}],
    }
    _rabbitmqctl("import_definitions", stdin=json.dumps(definitions).encode())
    return name


def create_broker_user():
    """A broker user with a random password and no permissions yet; returns ``(name, password)``."""
    name, password = f"cl_test_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    _rabbitmqctl("add_user", name, password)
    return name, password


def set_permissions(vhost, user, configure, write, read):
    """Give ``user`` these permission patterns on ``vhost`` (``rabbitmqctl set_permissions``)."""
    _rabbitmqctl("set_permissions", "-p", vhost, user, configure, write, read)


def delete_broker_user(name):
    """Delete a user made by ``create_broker_user``."""
    _rabbitmqctl("delete_user", name)


def list_exchanges(vhost):
    """Names of a vhost's exchanges (``rabbitmqctl``)."""
    completed = _rabbitmqctl("-p", vhost, "list_exchanges", "--no-table-headers", "name")
    return set(completed.stdout.decode().split())


def delete_vhost(name):
    """Delete a test vhost with everything in it."""
    _rabbitmqctl("delete_vhost", name)


def list_queues(vhost):
    """``{queue: (ready, unacknowledged)}`` of a vhost of the shared broker (``rabbitmqctl``)."""
    completed = _rabbitmqctl(
        "-p", vhost, "list_queues", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged"
    )
    result = {}
    for line in completed.stdout.decode().splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].isdigit():
            result[parts[0]] = (int(parts[1]), int(parts[2]))
    return result


def amqp_url(vhost, user="guest", password="guest"):
    """Broker URL of a vhost."""
    return f"amqp://{user}:{password}@{AMQP_HOST}:{AMQP_PORT}/{quote(vhost, safe='')}"


# processes ----------------------------------------------------------------------------


class Process:
    """A child process of the tests, with its output in a log file; stopped by pid."""

    def __init__(self, name, args, env, log_dir):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.pid = self.popen.pid

    def alive(self):
        """True while the process runs."""
        return self.popen.poll() is None

    def log(self):
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout=15.0):
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(10)
        self.log_file.close()
        return self.popen.returncode

    def kill(self):
        """SIGKILL, as a crash would."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(10)


def server_healthy(process, port):
    """True once the server process answers ``GET /healthz`` with 200 on ``port``."""
    if not process.alive():
        raise AssertionError(f"server exited:\n{process.log()[-3000:]}")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            return conn.recv(64).startswith(b"HTTP/1.1 200") or False
    except OSError:
        return False


# nginx in front of servers (tests/test_nginx.py, bench/vs_peer.py --via-nginx): deploy/nginx.conf
# as shipped, with only its upstream ports, listen port and log paths substituted.
NGINX = Path("/usr/sbin/nginx")
SITE_CONFIG = REPO / "deploy" / "nginx.conf"
INSTALL_HINT = "nginx is not installed: run `make nginx-deps` (Debian's nginx package)"
TEMP_PATHS = ("client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path", "uwsgi_temp_path", "scgi_temp_path")


def require_nginx():
    """Fail (never skip) with how to install nginx."""
    assert NGINX.exists() and os.access(NGINX, os.X_OK), INSTALL_HINT


def substitute(text, pattern, replacements):
    """Replace each match of ``pattern`` (in order) with the next replacement; exactly that many."""
    found = re.findall(pattern, text, flags=re.MULTILINE)
    assert len(found) == len(replacements), f"deploy/nginx.conf: expected {len(replacements)} of {pattern!r}"
    parts = iter(replacements)
    return re.sub(pattern, lambda match: next(parts), text, flags=re.MULTILINE)


def render_site(upstream_ports, listen_port, directory):
    """deploy/nginx.conf with the test's upstream ports, listen port and log paths."""
    text = SITE_CONFIG.read_text()
    # The upstream's `server 127.0.0.1:<port> ...;` lines (their other parameters stay).
    text = substitute(text, r"^\s*server\s+127\.0\.0\.1:\d+", [f"    server 127.0.0.1:{p}" for p in upstream_ports])
    text = substitute(text, r"^\s*listen\s+80;", [f"    listen 127.0.0.1:{listen_port};"])
    text = substitute(text, r"^\s*access_log\s+\S+", [f"    access_log {directory / 'access.log'}"])
    text = substitute(text, r"^\s*error_log\s+\S+", [f"    error_log {directory / 'site-error.log'}"])
    return text


def render_main(directory, site_path, worker_connections=512):
    """A main config around the site file: a private, foreground instance under ``directory``."""
    temp = "\n".join(f"    {name} {directory / name};" for name in TEMP_PATHS)
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}daemon off;\n"
        "worker_processes 1;\n"
        f"pid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} info;\n"
        f"events {{ worker_connections {worker_connections}; }}\n"
        "http {\n"
        f"{temp}\n"
        f"    access_log {directory / 'default-access.log'};\n"
        f"    include {site_path};\n"
        "}\n"
    )


class Nginx:
    """A private nginx in front of ``upstream_ports``, listening on a free port."""

    def __init__(self, upstream_ports, directory, worker_connections=512):
        require_nginx()
        self.directory = Path(directory)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        site = self.directory / "campaign-live.conf"
        site.write_text(render_site(upstream_ports, self.port, self.directory))
        self.config = self.directory / "nginx.conf"
        self.config.write_text(render_main(self.directory, site, worker_connections))
        base = [str(NGINX), "-p", f"{self.directory}/", "-e", str(self.directory / "error.log"), "-c", str(self.config)]
        check = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, f"nginx -t refused the rendered deploy/nginx.conf:\n{check.stderr}"
        self.process = Process("nginx", base, dict(os.environ), self.directory)
        try:
            wait_until(self._listening, 10, 0.02, f"nginx on port {self.port}")
        except BaseException:
            self.process.stop()
            raise

    def _listening(self):
        if not self.process.alive():
            raise AssertionError(f"nginx exited:\n{self.process.log()}\n{self.error_log()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def error_log(self):
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log(self):
        """Parsed lines of the site's access log: (request line, status, upstream address)."""
        path = self.directory / "access.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return re.findall(r'"([^"]*)" (\d{3}) \d+ upstream=(\S+)', text)

    def stop(self):
        return self.process.stop()



class Stack:
    """Servers and workers of campaign-live on one database and one vhost.

    ``message_queue_url`` puts the Socket.IO message queue (``SOCKETIO_MESSAGE_QUEUE_URL``)
    somewhere else than the events' vhost, as production should; by default it shares it.
    """

    def __init__(self, database, vhost, log_dir, message_queue_url=None, **settings):
        self.database = database
        self.vhost = vhost
        self.database_url = pg_url(database)
        self.broker_url = amqp_url(vhost)
        self.message_queue_url = message_queue_url or self.broker_url
        self.log_dir = log_dir
        self.settings = {key: str(value) for key, value in settings.items()}
        self.processes = []
        self.servers = []
        self.workers = []

    def env(self, **extra):
        """Environment of a child process."""
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "BROKER_URL": self.broker_url,
            "SOCKETIO_MESSAGE_QUEUE_URL": self.message_queue_url,
            "JWT_SECRET": JWT_SECRET,
            "SECRET_KEY": SECRET_KEY,
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        env.update(self.settings)
        env.update({key: str(value) for key, value in extra.items()})
        return env

    def start_server(self, port=None, **extra):
        """Start ``python app.py``; wait for ``/healthz``; return its base URL."""
        port = port or free_port()
        process = Process("server", [PYTHON, "app.py"], self.env(PORT=port, **extra), self.log_dir)
        process.url = f"http://127.0.0.1:{port}"
        process.port = port
        self.processes.append(process)
        self.servers.append(process)
        wait_until(lambda: server_healthy(process, port), 30, 0.05, f"server on port {port}\n{process.log()[-3000:]}")
        return process

    def start_worker(self, wait=True, **extra):
        """Start ``python -m worker``; by default wait until it consumes."""
        process = Process("worker", [PYTHON, "-m", "worker"], self.env(**extra), self.log_dir)
        self.processes.append(process)
        self.workers.append(process)
        if wait:
            wait_until(lambda: self._consuming(process), 30, 0.05, f"worker to consume\n{process.log()[-3000:]}")
        return process

    def _consuming(self, process):
        if not process.alive():
            raise AssertionError(f"worker exited:\n{process.log()[-3000:]}")
        return "[WORKER] consuming from" in process.log()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def stop(self):
        """Stop every process this stack started."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    # data -----------------------------------------------------------------------------

    def sql(self, query, params=()):
        """Run one SQL statement on the stack's database; return the rows (if any)."""
        with psycopg2.connect(self.database_url) as connection, connection.cursor() as cursor:
            cursor.execute(query, params)
            rows = cursor.fetchall() if cursor.description else None
        connection.close()
        return rows

    def create_tenant(self, tenant_id=None, name=None):
        """Insert a tenant; returns its id."""
        tenant_id = tenant_id or f"t{uuid.uuid4().hex[:10]}"
        self.sql(
            "INSERT INTO tenants (id, name, last_seq, created_at) VALUES (%s, %s, 0, now())",
            (tenant_id, name or tenant_id),
        )
        return tenant_id

    def campaign(self, tenant_id, campaign_id):
        """A campaign's row as a dict, or None."""
        rows = self.sql(
            "SELECT status, total, sent, failed, version, name, current_message, last_error "
            "FROM campaigns WHERE tenant_id = %s AND id = %s",
            (tenant_id, campaign_id),
        )
        if not rows:
            return None
        keys = ("status", "total", "sent", "failed", "version", "name", "current_message", "last_error")
        return dict(zip(keys, rows[0]))

    def token(self, tenant_id, ttl=3600, secret=JWT_SECRET, subject="test"):
        """A JWT for a tenant."""
        return mint_token(secret, tenant_id, subject, ttl)

    def publisher(self, confirm=True):
        """An ``EventPublisher`` on the stack's vhost."""
        return EventPublisher(self.broker_url, confirm=confirm)


class OrderedEngineIOClient(engineio.Client):
    """Handles messages on the reading thread, in arrival order, as the JavaScript client does.

    python-engineio's client starts a thread per message, so two updates that arrive close
    together may be handled (and recorded) out of order.
    """

    def _trigger_event(self, event, *args, **kwargs):
        if event == "message":
            kwargs["run_async"] = False
        return super()._trigger_event(event, *args, **kwargs)


class OrderedClient(socketio.Client):
    """A python-socketio client whose event handlers run in arrival order (see ``OrderedEngineIOClient``)."""

    def _engineio_client_class(self):
        return OrderedEngineIOClient
