"""The application factory: ``create_app()`` builds the Flask app of every process.

The server (``python app.py``), the worker (``python -m worker``), ``flask --app app`` and the
tests build their app here; the entry points import this module, never each other.
"""

import gc
import logging
import os
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
from config import Config, ConfigError, secret_problems, url_problems
from extensions import babel, csrf, db, limiter, login, migrate, socketio
from ops.recent_errors import install as keep_recent_errors
from ops.views import bp as ops_bp
from sockets.compression import without_websocket_compression
from sockets.encoding import PacketJSON
from sockets.fanout import install as install_direct_writes
from sockets.handlers import register_handlers
from sockets.polling import install as cap_long_polling_responses
from sockets.rooms import IndexedManager
from sockets.stream import UpdateStreamManager
from sockets.tenants import tenant_states

MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
TRANSLATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "translations")
LANGUAGES = ("en", "pt_BR")


log = logging.getLogger("campaign_live")


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
    else:
        options["client_manager"] = IndexedManager()  # a disconnect walks its client's rooms only
    return options


def create_service_app(tag):
    """The app of a long-running process (``python app.py``, ``python -m worker``), or None.

    None means the process must not start: a setting out of range, or outside the demo a
    missing URL or a weak secret; each reason is logged as ``<tag> refusing to start: ...`` first.
    """
    try:
        app = create_app()
    except ConfigError as exc:
        configure_logging("INFO")
        log.error("%s refusing to start: %s", tag, exc)
        return None
    problems = url_problems(app.config) + secret_problems(app.config)
    for problem in problems:
        log.error("%s refusing to start: %s", tag, problem)
    return None if problems else app


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
    cap_long_polling_responses(socketio.server.eio)
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


def freeze_startup_objects():
    """Keep the objects of start-up (modules, app, SQLAlchemy metadata) out of garbage collection.

    A full collection of the ~120,000 objects a started process holds takes ~30 ms, and it
    stops every client of an eventlet server (and the worker's loop) meanwhile; frozen, they
    are never scanned again (``gc.freeze``), so a collection only looks at what came since.
    """
    gc.collect()
    gc.freeze()
