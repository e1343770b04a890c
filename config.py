"""Configuration: one class that reads the environment, with safe development defaults."""

import math
import os

from limits import parse_many

# The shortest SECRET_KEY / JWT_SECRET accepted outside the demo: HS256 wants a key at least as
# long as its 32-byte output (RFC 7518 3.2), and a short one can be brute-forced from any token.
MIN_SECRET_BYTES = 32
# The placeholders of .env.example: a deployment that copied the file unchanged must not start.
PLACEHOLDER_SECRETS = frozenset({"change-me-to-a-long-random-string", "change-me-to-another-long-random-string"})
SECRET_NAMES = ("SECRET_KEY", "JWT_SECRET")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# threading is what the unit tests' Flask test client runs with; eventlet and gevent serve.
ASYNC_MODES = ("eventlet", "gevent", "threading")


class ConfigError(RuntimeError):
    """A setting of the environment the product cannot run with; the message says which and why."""


def _int(name, default, minimum=None, maximum=None):
    """Read an integer environment variable within ``[minimum, maximum]``, failing loudly on garbage."""
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ConfigError(f"{name} must be an integer {bounds}, got {raw!r}")
    return value


def _float(name, default, minimum=None, maximum=None, positive=False):
    """Read a finite float environment variable within bounds, failing loudly on garbage.

    ``positive`` asks for a value above 0; ``minimum`` and ``maximum`` are inclusive. nan and
    inf are always refused: every setting read here is a duration, a rate or a share, and
    ``THROTTLE_SECONDS=nan`` used to start and then dead-letter every event.
    """
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    bounds = ["above 0"] if positive else []
    bounds += [f"at least {minimum:g}"] if minimum is not None else []
    bounds += [f"at most {maximum:g}"] if maximum is not None else []
    out_of_range = (
        (positive and value <= 0)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    )
    if out_of_range or not math.isfinite(value):
        wanted = " ".join(["a finite number", " and ".join(bounds)]).rstrip()
        raise ConfigError(f"{name} must be {wanted}, got {raw!r}")
    return value


def _choice(name, default, choices, normalise=str):
    """Read an environment variable that must be one of ``choices`` (after ``normalise``)."""
    value = normalise(os.environ.get(name) or default)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {os.environ.get(name)!r}")
    return value


def _rate_limit(name, default):
    """Read a Flask-Limiter rate limit ("5 per minute; 30 per hour"), failing loudly on garbage.

    Flask-Limiter logs an error on every request for a limit it cannot parse and applies none:
    a typo would quietly turn the login limits off (measured with "five a minute": 8 wrong
    logins, 8 answers 401).
    """
    raw = os.environ.get(name) or default
    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a rate limit such as '5 per minute', got {raw!r}") from None
    return raw


class Config:
    """Settings of the server, the worker and the CLI, read from the environment.

    With neither ``DATABASE_URL`` nor ``BROKER_URL`` set, the product runs as the embedded
    demo (SQLite, in-process broker, simulator); see ``DEMO``.
    """

    def __init__(self):
        self.DATABASE_URL = os.environ.get("DATABASE_URL", "")
        self.BROKER_URL = os.environ.get("BROKER_URL", "")
        self.DEMO = not self.DATABASE_URL and not self.BROKER_URL
        self.SQLALCHEMY_DATABASE_URI = self.DATABASE_URL or os.environ.get(
            "DEMO_DATABASE_URL", "sqlite:///campaign-live-demo.db"
        )
        self.SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
        if self.SQLALCHEMY_DATABASE_URI.startswith("postgresql"):
            self.SQLALCHEMY_ENGINE_OPTIONS.update(
                pool_size=_int("DB_POOL_SIZE", 10, minimum=1),
                max_overflow=_int("DB_MAX_OVERFLOW", 20, minimum=0),
                # UPDATEs of many campaigns in one round trip (psycopg2 execute_batch).
                executemany_mode="values_plus_batch",
            )
        # The in-process broker of the demo; a real deployment always sets BROKER_URL.
        self.EVENTS_BROKER_URL = self.BROKER_URL or "memory://localhost/"
        self.SECRET_KEY = os.environ.get("SECRET_KEY", "")
        self.JWT_SECRET = os.environ.get("JWT_SECRET", "")
        self.JWT_TTL_SECONDS = _int("JWT_TTL_SECONDS", 3600, minimum=1)
        self.JWT_LEEWAY_SECONDS = _int("JWT_LEEWAY_SECONDS", 30, minimum=0)
        self.THROTTLE_SECONDS = _float("THROTTLE_SECONDS", 2.0, minimum=0)
        self.PING_INTERVAL = _int("PING_INTERVAL", 30, minimum=1)
        self.PING_TIMEOUT = _int("PING_TIMEOUT", 20, minimum=1)
        self.EVENT_RETENTION_SECONDS = _float("EVENT_RETENTION_SECONDS", 86400.0, positive=True)
        self.APPLIED_EVENT_RETENTION_SECONDS = _float("APPLIED_EVENT_RETENTION_SECONDS", 7 * 86400.0, positive=True)
        self.HOST = os.environ.get("HOST", "127.0.0.1")
        self.PORT = _int("PORT", 5000, minimum=1, maximum=65535)
        self.LOG_LEVEL = _choice("LOG_LEVEL", "INFO", LOG_LEVELS, str.upper)
        self.ASYNC_MODE = _choice("ASYNC_MODE", "eventlet", ASYNC_MODES)
        self.MAX_CONNECTIONS = _int("MAX_CONNECTIONS", 10000, minimum=1)
        self.MAX_HTTP_BUFFER_SIZE = _int("MAX_HTTP_BUFFER_SIZE", 16 * 1024, minimum=1)
        self.CORS_ALLOWED_ORIGINS = os.environ.get("CORS_ALLOWED_ORIGINS", "")
        self.WEBSOCKET_COMPRESSION = os.environ.get("WEBSOCKET_COMPRESSION", "0") == "1"
        self.DIRECT_WEBSOCKET_WRITES = os.environ.get("DIRECT_WEBSOCKET_WRITES", "1") == "1"
        # Responses over 16 KB (a long-polling GET's backlog, a snapshot) without Nagle's 40 ms wait.
        self.TCP_NODELAY = os.environ.get("TCP_NODELAY", "1") == "1"
        # Connections the kernel queues for accept(): every long-polling GET of a Node client is a new one.
        self.LISTEN_BACKLOG = _int("LISTEN_BACKLOG", 1024, minimum=1)
        self.WORKER_BATCH_SIZE = _int("WORKER_BATCH_SIZE", 500, minimum=1)
        self.WORKER_BATCH_LINGER_MS = _int("WORKER_BATCH_LINGER_MS", 50, minimum=0)
        self.WORKER_QUEUE = os.environ.get("WORKER_QUEUE", "campaign.events.worker")
        self.AMQP_HEARTBEAT = _int("AMQP_HEARTBEAT", 30, minimum=0)
        self.SOCKETIO_CHANNEL = os.environ.get("SOCKETIO_CHANNEL", "flask-socketio")
        # Where workers and servers exchange updates. Its own vhost and user in production: whoever
        # can publish there writes into clients' rooms, and producers only need BROKER_URL.
        self.SOCKETIO_MESSAGE_QUEUE_URL = os.environ.get("SOCKETIO_MESSAGE_QUEUE_URL", "") or self.BROKER_URL
        self.SIMULATOR = os.environ.get("SIMULATOR", "1" if self.DEMO else "0") == "1"
        self.SQLALCHEMY_TRACK_MODIFICATIONS = False
        self.TRUSTED_PROXIES = _int("TRUSTED_PROXIES", 0, minimum=0)
        self.MAX_CONNECTIONS_PER_TENANT = _int("MAX_CONNECTIONS_PER_TENANT", 2000, minimum=1)
        # Client events (``replay``) per connection: a burst, then this many per second.
        self.SOCKET_EVENT_BURST = _int("SOCKET_EVENT_BURST", 10, minimum=1)
        self.SOCKET_EVENT_RATE = _float("SOCKET_EVENT_RATE", 1.0, positive=True)
        # Failure alert (campaigns/rules.py): a running campaign failing at least this share of
        # at least that many messages over the window.
        self.FAILURE_ALERT_RATE = _float("FAILURE_ALERT_RATE", 0.2, maximum=1, positive=True)
        self.FAILURE_ALERT_WINDOW_SECONDS = _float("FAILURE_ALERT_WINDOW_SECONDS", 60.0, positive=True)
        self.FAILURE_ALERT_MIN_MESSAGES = _int("FAILURE_ALERT_MIN_MESSAGES", 20, minimum=1)
        # Recovery (CONTRACT.md section 2): a client further behind than this gets resync + snapshot.
        self.REPLAY_MAX_UPDATES = _int("REPLAY_MAX_UPDATES", 1000, minimum=0)
        # Newest updates each server keeps in memory per tenant it has clients for (replay without a query).
        self.REPLAY_RING_SIZE = _int("REPLAY_RING_SIZE", 256, minimum=0)
        # Every client has every stored update within this long of its commit, even when the queue lost it.
        self.RECONCILE_SECONDS = _float("RECONCILE_SECONDS", 5.0, positive=True)
        # A connect that cannot be served from memory within this long is refused with "unavailable".
        self.CONNECT_WAIT_SECONDS = _float("CONNECT_WAIT_SECONDS", 5.0, positive=True)
        # Database queries of the connect path (tenant loads, replays) running at once.
        self.STATE_LOAD_CONCURRENCY = _int("STATE_LOAD_CONCURRENCY", 4, minimum=1)
        # Connect attempts per token (or logged-in user): a burst, then a rate; slowed up to a delay, then refused.
        self.CONNECT_BURST_PER_CREDENTIAL = _int("CONNECT_BURST_PER_CREDENTIAL", 20, minimum=1)
        self.CONNECT_RATE_PER_CREDENTIAL = _float("CONNECT_RATE_PER_CREDENTIAL", 5.0, positive=True)
        self.CONNECT_MAX_DELAY_SECONDS = _float("CONNECT_MAX_DELAY_SECONDS", 3.0, minimum=0)
        # Each server writes its connection counts for the ops page this often (sockets/presence.py).
        self.SERVER_HEARTBEAT_SECONDS = _float("SERVER_HEARTBEAT_SECONDS", 5.0, positive=True)
        # The ops page (/ops) polls its JSON this often; dead letters looked at per poll, at most.
        self.OPS_POLL_SECONDS = _float("OPS_POLL_SECONDS", 3.0, positive=True)
        self.OPS_DEAD_LETTER_SCAN = _int("OPS_DEAD_LETTER_SCAN", 2000, minimum=1)
        self.API_RATE_LIMIT = _rate_limit("API_RATE_LIMIT", "600 per minute")
        self.TOKEN_RATE_LIMIT = _rate_limit("TOKEN_RATE_LIMIT", "600 per minute")
        self.TOKEN_FAILURE_RATE_LIMIT = _rate_limit("TOKEN_FAILURE_RATE_LIMIT", "30 per minute")
        # Every POST /login counts (a wrong password costs ~75 ms of scrypt on a thread).
        self.LOGIN_RATE_LIMIT_PER_ADDRESS = _rate_limit("LOGIN_RATE_LIMIT_PER_ADDRESS", "20 per minute")
        self.LOGIN_RATE_LIMIT_PER_EMAIL = _rate_limit("LOGIN_RATE_LIMIT_PER_EMAIL", "5 per minute")
        self.RATELIMIT_STORAGE_URI = os.environ.get("RATELIMIT_STORAGE_URI", "memory://")
        self.RATELIMIT_HEADERS_ENABLED = True
        # Test-only fault point of the worker: "exit_before_emit" (tests/test_reconciliation.py).
        self.WORKER_FAULT = os.environ.get("WORKER_FAULT", "")
        self.WORKER_METRICS_PORT = _int("WORKER_METRICS_PORT", 0, minimum=0, maximum=65535)
        # The worker's database session: how long it waits for a tenant's lock another worker
        # holds, and how long one statement may run, before it backs off and tries again.
        self.WORKER_LOCK_TIMEOUT_SECONDS = _float("WORKER_LOCK_TIMEOUT_SECONDS", 10.0, minimum=0)
        self.WORKER_STATEMENT_TIMEOUT_SECONDS = _float("WORKER_STATEMENT_TIMEOUT_SECONDS", 30.0, minimum=0)
        # PostgreSQL ends a worker session idle this long (with its tenant locks): a frozen worker.
        self.WORKER_IDLE_SESSION_TIMEOUT_SECONDS = _float("WORKER_IDLE_SESSION_TIMEOUT_SECONDS", 60.0, minimum=0)
        self.SESSION_COOKIE_HTTPONLY = True
        self.SESSION_COOKIE_SAMESITE = "Lax"
        self.SESSION_COOKIE_SECURE = os.environ.get("SESSION_COOKIE_SECURE", "0") == "1"
        self.REMEMBER_COOKIE_HTTPONLY = True
        self.REMEMBER_COOKIE_SAMESITE = "Lax"
        self.MAX_CONTENT_LENGTH = _int("MAX_CONTENT_LENGTH", 64 * 1024, minimum=1)

    def update(self, **overrides):
        """Return this config with some settings replaced (tests use it)."""
        for key, value in overrides.items():
            setattr(self, key, value)
        return self


def url_problems(config):
    """``DATABASE_URL`` or ``BROKER_URL`` missing outside the demo, one line each.

    With only ``DATABASE_URL``, a server used to start on an in-process broker that no worker
    can reach, and report itself ready while no update would ever arrive.
    """
    if config["DEMO"]:
        return []
    return [
        f"{name} is not set: a deployment needs both DATABASE_URL and BROKER_URL (the demo neither)"
        for name in ("DATABASE_URL", "BROKER_URL")
        if not config[name]
    ]


def secret_problems(config):
    """What is wrong with ``SECRET_KEY`` and ``JWT_SECRET`` for a real deployment, one line each.

    ``config`` is a mapping (``app.config``). The demo generates its own secrets and is never
    refused; elsewhere a secret must be set, not a placeholder, and at least
    ``MIN_SECRET_BYTES`` long. An empty list means the secrets may be used.
    """
    if config["DEMO"]:
        return []
    problems = []
    for name in SECRET_NAMES:
        value = config[name]
        if config.get(f"{name}_GENERATED") or not value:
            problems.append(f"{name} is not set: every server and worker must share it")
        elif value in PLACEHOLDER_SECRETS or value.startswith("change-me"):
            problems.append(f"{name} is the placeholder of .env.example: set a random value of its own")
        elif len(value.encode("utf-8")) < MIN_SECRET_BYTES:
            problems.append(
                f"{name} has {len(value.encode('utf-8'))} bytes, at least {MIN_SECRET_BYTES} are needed "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
    return problems
