"""``flask --app app doctor``: check a deployment the way an operator would.

Each check is a function that returns one ``Result`` (or several): ``ok`` True (✓), False
(✗, with a fix an operator can act on), or None when it does not apply here (the demo, or a
part that could not be reached). A warning passes with a remark (``!``). docs/troubleshooting.md
says which symptom each check catches.
"""

import contextlib
import json
import logging
import resource
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from kombu import Connection, Exchange, Queue
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from campaigns.queues import DEAD_LETTER_QUEUE, EVENTS_EXCHANGE
from config import secret_problems
from sockets.file_limit import files_needed, short_of
from sockets.stream import PROBE_EVENT

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
CONNECT_TIMEOUT_SECONDS = 3
MAX_CLOCK_SKEW_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 5.0
SOCKET_TIMEOUT_SECONDS = 10.0
GUIDE = "docs/troubleshooting.md"


@dataclass
class Result:
    """The outcome of one check: ``ok`` True, False, or None (not applicable); ``warning`` passes."""

    name: str
    ok: bool | None
    detail: str
    fix: str = ""
    warning: bool = False

    def mark(self):
        """The one-character mark of the line."""
        if self.ok is None:
            return "-"
        if not self.ok:
            return "✗"
        return "!" if self.warning else "✓"


def not_applicable(name, why):
    """A check that does not apply here, saying why."""
    return Result(name, None, f"not checked: {why}")


def _why(exc):
    """One short line for an exception."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{exc.__class__.__name__}: {first[:200]}"


# PostgreSQL ---------------------------------------------------------------------------


def _engine(config):
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    return create_engine(config["SQLALCHEMY_DATABASE_URI"], poolclass=NullPool, connect_args=connect_args)


def migration_heads():
    """The head revision(s) of migrations/ (what ``flask db upgrade`` would migrate to)."""
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    alembic_config = AlembicConfig()
    alembic_config.set_main_option("script_location", str(MIGRATIONS))
    return set(ScriptDirectory.from_config(alembic_config).get_heads())


def check_database(config):
    """PostgreSQL answers and its schema is at the head of migrations/."""
    from alembic.runtime.migration import MigrationContext

    name = "database"
    if config["DEMO"]:
        return not_applicable(name, "demo mode (SQLite, migrated by the demo at start); set DATABASE_URL")
    engine = _engine(config)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return Result(
            name,
            False,
            f"PostgreSQL does not answer ({_why(exc)})",
            "check DATABASE_URL (host, port, database, user, password) and that PostgreSQL runs and accepts "
            "connections from this host (pg_hba.conf, firewall)",
        )
    finally:
        engine.dispose()
    heads = migration_heads()
    if current == heads:
        return Result(name, True, f"PostgreSQL reachable, schema at head {', '.join(sorted(heads))}")
    at = ", ".join(sorted(current)) or "no schema"
    return Result(
        name,
        False,
        f"PostgreSQL reachable, schema at {at}, head of migrations/ is {', '.join(sorted(heads))}",
        "run `flask --app app db upgrade` with this DATABASE_URL (workers retry, and dead-letter nothing, "
        "until it is done)",
    )


def check_clock(config):
    """This machine's clock against the database's (tokens minted here are checked there)."""
    name = "clock"
    engine = _engine(config)
    try:
        with engine.connect() as connection:
            before = time.time()
            database_now = connection.execute(text("SELECT now()")).scalar_one()
            after = time.time()
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return not_applicable(name, f"the database does not answer ({_why(exc)})")
    finally:
        engine.dispose()
    local = datetime.fromtimestamp((before + after) / 2, timezone.utc)
    skew = (database_now - local).total_seconds()
    detail = f"{abs(skew):.2f} s {'behind' if skew > 0 else 'ahead of'} the database's clock"
    if abs(skew) <= MAX_CLOCK_SKEW_SECONDS:
        return Result(name, True, detail)
    return Result(
        name,
        False,
        detail,
        "synchronise the clocks (chrony or systemd-timesyncd on every machine); JWTs minted on a machine "
        f"whose clock is ahead by more than JWT_LEEWAY_SECONDS ({config['JWT_LEEWAY_SECONDS']} s) are refused, "
        "and status order and failure alerts follow event times",
    )


# RabbitMQ -----------------------------------------------------------------------------


def _broker(url):
    connection = Connection(url, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    connection.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT_SECONDS)
    return connection


def check_broker(config):
    """RabbitMQ at ``BROKER_URL`` accepts a connection."""
    name = "broker"
    if config["DEMO"]:
        return not_applicable(name, "demo mode (in-process broker); set BROKER_URL")
    try:
        with _broker(config["BROKER_URL"]):
            pass
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return Result(
            name,
            False,
            f"RabbitMQ does not answer at BROKER_URL ({_why(exc)})",
            "check BROKER_URL (host, port, vhost, user, password), that RabbitMQ runs, and the user's "
            "permissions on the vhost (rabbitmqctl list_permissions -p <vhost>)",
        )
    return Result(name, True, "RabbitMQ reachable at BROKER_URL")


def _passive(connection, declare):
    """Run one passive declare on a channel of its own (a 404 closes the channel)."""
    channel = connection.channel()
    try:
        return declare(channel)
    finally:
        with contextlib.suppress(Exception):  # the broker closed it already
            channel.close()


def check_topology(config):
    """The exchange, the worker queue and the dead-letter queue exist; the worker queue is consumed.

    Passive declares only: doctor never creates what it checks.
    """
    names = ("topology", "worker")
    if config["DEMO"]:
        return [not_applicable(name, "demo mode (in-process broker and worker)") for name in names]
    queue_name = config["WORKER_QUEUE"]
    missing, depths = [], {}
    try:
        with _broker(config["BROKER_URL"]) as connection:
            try:
                _passive(connection, lambda ch: ch.exchange_declare(EVENTS_EXCHANGE, "topic", passive=True))
            except Exception:  # noqa: BLE001 - NOT_FOUND
                missing.append(f"exchange {EVENTS_EXCHANGE}")
            for queue in (queue_name, DEAD_LETTER_QUEUE):
                try:
                    depths[queue] = _passive(connection, lambda ch, q=queue: ch.queue_declare(q, passive=True))
                except Exception:  # noqa: BLE001 - NOT_FOUND
                    missing.append(f"queue {queue}")
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return [not_applicable(name, f"RabbitMQ does not answer ({_why(exc)})") for name in names]
    if missing:
        topology = Result(
            "topology",
            False,
            f"missing on BROKER_URL's vhost: {', '.join(missing)}",
            "start a server (python app.py) or a worker (python -m worker) once: both declare them; check "
            "that WORKER_QUEUE and BROKER_URL's vhost are the ones the workers use",
        )
    else:
        dead = depths[DEAD_LETTER_QUEUE].message_count
        topology = Result(
            "topology",
            True,
            f"exchange {EVENTS_EXCHANGE}, queues {queue_name} and {DEAD_LETTER_QUEUE} declared; "
            f"{dead} dead letter(s)" + (" (flask --app app dead-letters list)" if dead else ""),
        )
    if queue_name not in depths:
        return [topology, not_applicable("worker", f"queue {queue_name} does not exist")]
    queue = depths[queue_name]
    detail = f"{queue.consumer_count} consumer(s) on {queue_name}, {queue.message_count} message(s) waiting"
    if queue.consumer_count:
        return [topology, Result("worker", True, detail)]
    return [
        topology,
        Result(
            "worker",
            False,
            detail,
            "start a worker: python -m worker (several may run; its log says "
            f'"[WORKER] consuming from {queue_name}"); events wait in the queue until one runs',
        ),
    ]


def probe_message(room, probe_id):
    """A python-socketio emit message, as a KombuManager emitter publishes it, that no server delivers:
    ``PROBE_EVENT`` (the servers drop it, sockets/stream.py) to a room nobody is in."""
    return {
        "method": "emit",
        "event": PROBE_EVENT,
        "data": [{"probe": probe_id}],
        "binary": False,
        "namespace": "/",
        "room": room,
        "skip_sid": None,
        "callback": None,
        "host_id": f"doctor-{probe_id}",
    }


def check_message_queue(config):
    """A probe emitted through the Socket.IO message queue comes back to a queue bound like a server's."""
    name = "message queue"
    if config["DEMO"]:
        return not_applicable(name, "demo mode (the in-process worker hands updates to the server directly)")
    url, channel = config["SOCKETIO_MESSAGE_QUEUE_URL"], config["SOCKETIO_CHANNEL"]
    where = "SOCKETIO_MESSAGE_QUEUE_URL"
    if url == config["BROKER_URL"]:
        where = "BROKER_URL (no SOCKETIO_MESSAGE_QUEUE_URL of its own)"
    probe_id = uuid.uuid4().hex
    exchange = Exchange(channel, type="fanout", durable=False)
    received = []
    try:
        with _broker(url) as connection:
            # Exclusive and auto-deleted, like the servers' own listener queues but gone with doctor.
            queue = Queue(f"doctor.{probe_id}", exchange, exclusive=True, auto_delete=True, durable=False)

            def on_message(message):
                # python-socketio publishes its JSON text as text/plain: read the body as it is.
                body = message.body
                received.append(body.decode("utf-8", "replace") if isinstance(body, bytes) else body)
                message.ack()

            with connection.Consumer(queue, on_message=on_message, accept=["text/plain"]):
                producer = connection.Producer(exchange=exchange)
                producer.publish(json.dumps(probe_message(f"doctor:{probe_id}", probe_id)))
                deadline = time.monotonic() + PROBE_TIMEOUT_SECONDS
                while not _probe_back(received, probe_id) and time.monotonic() < deadline:
                    try:
                        connection.drain_events(timeout=max(deadline - time.monotonic(), 0.01))
                    except TimeoutError:
                        break
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return Result(
            name,
            False,
            f"cannot use the message queue at {where} ({_why(exc)})",
            "check SOCKETIO_MESSAGE_QUEUE_URL (or BROKER_URL): every server and worker must reach it with a user "
            "that may configure, write and read on its vhost",
        )
    if _probe_back(received, probe_id):
        return Result(name, True, f"probe went round trip on exchange {channel!r} at {where}")
    return Result(
        name,
        False,
        f"the probe did not come back within {PROBE_TIMEOUT_SECONDS:.0f} s on exchange {channel!r}",
        "check that servers and workers share SOCKETIO_MESSAGE_QUEUE_URL and SOCKETIO_CHANNEL, and the broker's log",
    )


def _probe_back(received, probe_id):
    for payload in received:
        try:
            message = json.loads(payload) if isinstance(payload, str) else payload
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("host_id") == f"doctor-{probe_id}":
            return True
    return False


# The process's settings ---------------------------------------------------------------


def check_secrets(config):
    """``SECRET_KEY`` and ``JWT_SECRET`` are set, not placeholders, and long enough."""
    name = "secrets"
    if config["DEMO"]:
        return not_applicable(name, "demo mode generates SECRET_KEY and JWT_SECRET at each start")
    problems = secret_problems(config)
    if not problems:
        return Result(name, True, "SECRET_KEY and JWT_SECRET set and strong")
    return Result(
        name,
        False,
        "; ".join(problems),
        "generate each with python -c 'import secrets; print(secrets.token_urlsafe(32))' and give every "
        "server and worker the same values (servers refuse to start otherwise)",
    )


def check_file_limit(config):
    """``ulimit -n`` of this shell leaves room for ``MAX_CONNECTIONS`` clients, once the server has
    raised its soft limit up to the hard one (sockets/file_limit.py)."""
    name = "open files"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = files_needed(config["MAX_CONNECTIONS"])
    detail = f"ulimit -n is {soft} (hard {hard}); MAX_CONNECTIONS={config['MAX_CONNECTIONS']} needs {needed}"
    if not short_of(hard, needed):  # the server raises its soft limit up to the hard one
        if short_of(soft, needed):
            detail += "; the server raises its soft limit at start"
        return Result(name, True, detail)
    return Result(
        name,
        False,
        detail,
        f"raise the hard limit for the server (ulimit -Hn {needed} as root, LimitNOFILE={needed} in a systemd "
        "unit), or lower MAX_CONNECTIONS; past the limit new clients are refused with 'Too many open files'",
    )


def check_cors(config):
    """``CORS_ALLOWED_ORIGINS``: same origin, a list of origins, or ``*`` (a warning)."""
    name = "cors"
    origins = config["CORS_ALLOWED_ORIGINS"]
    if not origins:
        return Result(name, True, "same origin only (CORS_ALLOWED_ORIGINS unset)")
    if origins == "*":
        return Result(
            name,
            True,
            "CORS_ALLOWED_ORIGINS=*: pages of any web site may open a Socket.IO connection to this server from "
            "a visitor's browser (a valid token or session is still needed)",
            "list the origins of the pages that embed the dashboard instead, e.g. "
            "CORS_ALLOWED_ORIGINS=https://app.example.com",
            warning=True,
        )
    bad = [origin for origin in origins.split(",") if not origin.startswith(("http://", "https://"))]
    bad += [origin for origin in origins.split(",") if origin.endswith("/")]
    if bad:
        return Result(
            name,
            False,
            f"not an origin: {', '.join(bad)}",
            "write each as scheme://host[:port], comma-separated, no path and no trailing slash: a browser's "
            "Origin header must match it exactly, or its connection is refused",
        )
    return Result(name, True, f"allowed origins: {origins}")


# A running server ---------------------------------------------------------------------


def first_tenant(config):
    """The id of the first tenant in the database (by id), or None."""
    from campaigns.models import Tenant

    engine = _engine(config)
    try:
        with engine.connect() as connection:
            return connection.execute(text(f"SELECT id FROM {Tenant.__tablename__} ORDER BY id LIMIT 1")).scalar()
    finally:
        engine.dispose()


def connect_once(url, token, transport, timeout=SOCKET_TIMEOUT_SECONDS):
    """Connect a python-socketio client with ``token`` over one transport; None once a
    ``campaign_snapshot`` arrived, else why not."""
    import socketio

    class ProbeClient(socketio.Client):
        def disconnect(self):
            # Also the one connect() makes itself when the server refuses the namespace.
            if not wait_until_sent(self):
                # The goodbye was not sent in time (or can no longer be): end the client at once
                # instead of waiting for a GET the server holds until its ping.
                self.eio.disconnect(abort=True)
            super().disconnect()

    client = ProbeClient(reconnection=False)
    snapshot, refused = threading.Event(), []
    client.on("campaign_snapshot", lambda data: snapshot.set())
    client.on("connect_error", lambda data: refused.append(data.get("message") if isinstance(data, dict) else data))
    try:
        client.connect(url, auth={"token": token}, transports=[transport], wait_timeout=timeout)
        if not snapshot.wait(timeout):
            return f"connected, but no campaign_snapshot within {timeout:.0f} s"
        return None
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return f"refused: {refused[0]}" if refused else _why(exc)
    finally:
        if client.connected:
            client.disconnect()


def wait_until_sent(client, timeout=2.0):
    """Wait (at most ``timeout``) until a python-socketio client has sent what it queued.

    python-engineio's client (4.x) loses what ``disconnect()`` queues when its write loop is
    still inside the POST of an earlier packet: the loop ends once that POST returns, without
    sending the disconnect or the CLOSE, and the long-poll GET then waits for the server's next
    ping (30 s). Over long-polling the namespace's connect ack comes back on the GET, often before
    the POST that carried the connect has returned: seen under gevent (a doctor run took 31 s
    instead of 7, and one with a refused token 35 s). The queue counts a packet as done once its
    POST has returned. True when everything queued was sent; False at the deadline, or at once
    when the write loop has ended (what is queued then is never sent)."""
    eio = client.eio
    deadline = time.monotonic() + timeout
    while eio.queue is not None and eio.queue.unfinished_tasks:
        if eio.write_loop_task is None or time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def check_server(config, url, tenant_id=None):
    """A token minted with ``JWT_SECRET`` is accepted by the server at ``url`` over websocket and
    long-polling, and each connection receives a ``campaign_snapshot``."""
    from campaigns.tokens import mint_token

    name = "server"
    if config.get("JWT_SECRET_GENERATED"):
        why = "JWT_SECRET is not set here, so doctor cannot mint a token the server accepts"
        if config["DEMO"]:
            return not_applicable(name, f"{why} (the demo generates its own; give both the same JWT_SECRET)")
        return Result(name, False, why, "run doctor with the servers' JWT_SECRET")
    if tenant_id is None:
        try:
            tenant_id = first_tenant(config)
        except Exception as exc:  # noqa: BLE001 - any failure is the answer
            return Result(name, False, f"no tenant to mint a token for ({_why(exc)})", "pass --tenant TENANT_ID")
        if tenant_id is None:
            return Result(name, False, "the database has no tenant", "create one: flask --app app create-tenant ...")
    token = mint_token(config["JWT_SECRET"], tenant_id, "doctor", 300)
    failures = []
    for transport in ("websocket", "polling"):
        why = connect_once(url, token, transport)
        if why:
            failures.append(f"{transport}: {why}")
    if not failures:
        return Result(name, True, f"{url} accepted a token of tenant {tenant_id} over websocket and polling")
    return Result(
        name,
        False,
        f"{url}, tenant {tenant_id}: " + "; ".join(failures),
        "'unauthorized': the server's JWT_SECRET differs from this one or the tenant does not exist; "
        "'token_expired': clocks differ; a connection error: the server is down, or the URL or the proxy "
        "in front of it is wrong (websocket needs the proxy's Upgrade headers, polling sticky sessions)",
    )


def run_checks(config, url=None, tenant_id=None):
    """Every check, in the order an operator would look; returns the ``Result`` list."""
    results = [check_database(config)]
    if config["DEMO"]:
        results.append(not_applicable("clock", "demo mode (no database server to compare with)"))
    else:
        results.append(check_clock(config))
    broker = check_broker(config)
    results.append(broker)
    if broker.ok is False:
        results += [not_applicable(name, "RabbitMQ does not answer") for name in ("topology", "worker")]
    else:
        results += check_topology(config)
    results.append(check_message_queue(config))
    results += [check_secrets(config), check_file_limit(config), check_cors(config)]
    if url:
        results.append(check_server(config, url, tenant_id))
    else:
        results.append(not_applicable("server", "give --url http://host:port to check a running server"))
    return results


def format_result(result):
    """The line(s) ``doctor`` prints for one result."""
    line = f"{result.mark()} {result.name}: {result.detail}"
    if result.fix and (result.ok is False or result.warning):
        line += f"\n    fix: {result.fix}"
    return line
