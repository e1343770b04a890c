"""campaign-live: the app factory, and the Socket.IO + HTTP server (``python app.py``)."""

import os
import warnings

# eventlet is the requested default and known to be deprecated upstream (docs/architecture.md).
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

if __name__ == "__main__":
    # Monkey patching must happen before anything imports socket, threading, psycopg2 or kombu.
    ASYNC_MODE = os.environ.get("ASYNC_MODE", "eventlet")
    if ASYNC_MODE == "eventlet":
        import eventlet

        eventlet.monkey_patch()
    elif ASYNC_MODE == "gevent":
        from gevent import monkey

        monkey.patch_all()
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()

import gc
import logging
import secrets
import sys

from flask import Flask, request
from flask_babel import get_locale
from sqlalchemy import event
from sqlalchemy.engine import Engine
from werkzeug.middleware.proxy_fix import ProxyFix

from campaigns.accounts import LogoutForm
from campaigns.accounts import bp as accounts_bp
from campaigns.api import bp as api_bp
from campaigns.cli import register_commands
from campaigns.errors import register_error_handlers, retry_after_only_when_limited
from campaigns.health import bp as health_bp
from campaigns.models import User
from campaigns.pages import bp as pages_bp
from config import Config, secret_problems
from extensions import babel, csrf, db, limiter, login, migrate, socketio
from ops import bp as ops_bp
from ops.recent_errors import install as keep_recent_errors
from sockets.compression import without_websocket_compression
from sockets.encoding import PacketJSON
from sockets.fanout import install as install_direct_writes
from sockets.handlers import connections, register_handlers
from sockets.http_server import serve
from sockets.presence import Presence
from sockets.stream import UpdateStreamManager
from sockets.sweeper import start_sweeper
from sockets.tenants import tenant_states

log = logging.getLogger("campaign_live")
MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
TRANSLATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "translations")
LANGUAGES = ("en", "pt_BR")


def select_locale():
    """English or Brazilian Portuguese, from the browser's Accept-Language."""
    best = request.accept_languages.best_match(["en", "pt-BR", "pt"])
    return "pt_BR" if best in ("pt-BR", "pt") else "en"


def configure_logging(level):
    """One format for every process; the socketio/engineio loggers at warnings at least."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(level)
    for name in ("socketio", "engineio"):
        logging.getLogger(name).setLevel(max(logging.getLevelName(level), logging.WARNING))
    logging.getLogger("kombu").setLevel(logging.WARNING)
    # One INFO line per refused request would flood the log during a login flood; the 429s
    # are counted in campaign_live_http_requests_total instead.
    logging.getLogger("flask-limiter").setLevel(max(logging.getLevelName(level), logging.WARNING))


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, connection_record):
    """The demo's SQLite: WAL so the server reads while the worker writes."""
    if type(dbapi_connection).__module__ == "sqlite3":
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def socketio_options(config):
    """Keyword arguments of ``socketio.init_app`` for a config."""
    origins = config["CORS_ALLOWED_ORIGINS"]
    options = {
        "async_mode": config["ASYNC_MODE"],
        "ping_interval": config["PING_INTERVAL"],
        "ping_timeout": config["PING_TIMEOUT"],
        "max_http_buffer_size": config["MAX_HTTP_BUFFER_SIZE"],
        # sockets/sweeper.py checks the sockets instead (started by main).
        "monitor_clients": False,
        # A snapshot sent to many clients is encoded once (sockets/encoding.py).
        "json": PacketJSON,
        "cors_allowed_origins": (origins if origins == "*" else origins.split(",")) if origins else None,
        "logger": logging.getLogger("socketio"),
        "engineio_logger": logging.getLogger("engineio"),
    }
    url = config["SOCKETIO_MESSAGE_QUEUE_URL"]
    if url:
        # Updates from the message queue go through this server's tenant states (sockets/tenants.py).
        options["client_manager"] = UpdateStreamManager(url, config["SOCKETIO_CHANNEL"], tenant_states)
    return options


def create_app(config=None):
    """Build the Flask application."""
    config = config or Config()
    app = Flask(__name__)
    app.config.from_object(config)
    if app.config["TRUSTED_PROXIES"]:
        # Behind nginx: client addresses (per-address rate limits) come from X-Forwarded-For.
        proxies = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)
    configure_logging(app.config["LOG_LEVEL"])
    keep_recent_errors()
    for name in ("SECRET_KEY", "JWT_SECRET"):
        if not app.config[name]:
            # Only the demo and local CLI use run without secrets; `python app.py` refuses (see main).
            app.config[name] = secrets.token_urlsafe(32)
            app.config[f"{name}_GENERATED"] = True
    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS)
    login.init_app(app)
    login.login_view = "accounts.login"
    login.user_loader(lambda user_id: db.session.get(User, int(user_id)) if user_id.isdigit() else None)
    # Registered before the limiter's own hook, so it runs after it (Flask runs them in reverse).
    app.after_request(retry_after_only_when_limited)
    limiter.init_app(app)
    csrf.init_app(app)
    babel.init_app(app, locale_selector=select_locale, default_translation_directories=TRANSLATIONS)
    app.jinja_env.globals.update(logout_form=LogoutForm, get_locale=get_locale)
    socketio.init_app(app, **socketio_options(app.config))
    tenant_states.init_app(app)
    install_direct_writes(socketio.server.eio, enabled=app.config["DIRECT_WEBSOCKET_WRITES"])
    if not app.config["WEBSOCKET_COMPRESSION"]:
        app.wsgi_app = without_websocket_compression(app.wsgi_app)
    app.register_blueprint(health_bp)
    app.register_blueprint(api_bp, url_prefix="/api")
    csrf.exempt(api_bp)  # the API authenticates with bearer tokens; its cookie-auth routes only read
    app.register_blueprint(accounts_bp)
    app.register_blueprint(pages_bp)
    app.register_blueprint(ops_bp, url_prefix="/ops")
    register_handlers(app.config)
    register_error_handlers(app)
    register_commands(app)
    return app


def check_cooperative_database(app):
    """Under eventlet or gevent, psycopg2 must yield to other greenlets while it waits."""
    if app.config["ASYNC_MODE"] not in ("eventlet", "gevent") or app.config["DEMO"]:
        return
    import psycopg2.extensions

    if psycopg2.extensions.get_wait_callback() is None:
        raise RuntimeError("psycopg2 has no wait callback: the database would block every client")


def declare_broker_topology(config):
    """Declare the exchange and durable queues at start-up, so that events published before any
    worker ever ran wait in the queue (a broker that is down now is the worker's job later)."""
    from kombu import Connection

    from worker.queues import declare_topology

    try:
        with Connection(config["BROKER_URL"], connect_timeout=5) as connection:
            connection.ensure_connection(max_retries=2)
            declare_topology(connection, config["WORKER_QUEUE"])
    except Exception as exc:  # noqa: BLE001 - the server still serves; workers declare it too
        log.warning("could not declare the broker topology at start-up: %s", exc)


def freeze_startup_objects():
    """Keep the objects of start-up (modules, app, SQLAlchemy metadata) out of garbage collection.

    A full collection of the ~120,000 objects a started process holds takes ~30 ms, and it
    stops every client of an eventlet server (and the worker's loop) meanwhile; frozen, they
    are never scanned again (``gc.freeze``), so a collection only looks at what came since.
    """
    gc.collect()
    gc.freeze()


def main():
    """Run the server (and, without DATABASE_URL/BROKER_URL, the whole demo)."""
    app = create_app()
    config = app.config
    if config["DEMO"]:
        from campaigns.demo import prepare_demo, start_demo

        token = prepare_demo(app)
        start_demo(app)
        print(f"\ncampaign-live demo on http://{config['HOST']}:{config['PORT']}/", flush=True)
        print("Log in as ana@acme.test (tenant acme) or admin@demo.test (every tenant), password demo-password")
        print(f"Socket.IO token for tenant 'acme' (24 h):\n{token}\n", flush=True)
    else:
        problems = secret_problems(config)
        for problem in problems:
            log.error("[WEBSOCKET] refusing to start: %s", problem)
        if problems:
            return 2
    check_cooperative_database(app)
    if not config["DEMO"]:
        declare_broker_topology(config)
    start_sweeper(socketio.server.eio, interval=config["PING_TIMEOUT"] / 4)
    socketio.start_background_task(tenant_states.run_reconciliation)
    presence = app.extensions["presence"] = Presence(app, connections, tenant_states.clients, socketio.server.transport)
    socketio.start_background_task(presence.run)
    freeze_startup_objects()
    log.info(
        "[WEBSOCKET] serving on %s:%s (async mode %s, ping every %ss)",
        config["HOST"],
        config["PORT"],
        config["ASYNC_MODE"],
        config["PING_INTERVAL"],
    )
    if config["ASYNC_MODE"] == "eventlet":
        # socketio.run's listener has a backlog of 50: a burst of long-polling requests overflows it.
        serve(
            app,
            config["HOST"],
            config["PORT"],
            backlog=config["LISTEN_BACKLOG"],
            nodelay=config["TCP_NODELAY"],
            max_size=config["MAX_CONNECTIONS"],
        )
    else:
        # gevent's WSGIServer takes the backlog (its own default is 128); werkzeug's would not.
        extra = {"backlog": config["LISTEN_BACKLOG"]} if config["ASYNC_MODE"] == "gevent" else {}
        socketio.run(app, host=config["HOST"], port=config["PORT"], log_output=False, **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
