"""Configuration: one class that reads the environment, with safe development defaults."""

import os


def _int(name, default):
    """Read an integer environment variable, failing loudly on garbage."""
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise RuntimeError(f"{name} must be an integer, got {raw!r}") from None


def _float(name, default):
    """Read a float environment variable, failing loudly on garbage."""
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise RuntimeError(f"{name} must be a number, got {raw!r}") from None


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
                pool_size=_int("DB_POOL_SIZE", 10),
                max_overflow=_int("DB_MAX_OVERFLOW", 20),
                # UPDATEs of many campaigns in one round trip (psycopg2 execute_batch).
                executemany_mode="values_plus_batch",
            )
        # The in-process broker of the demo; a real deployment always sets BROKER_URL.
        self.EVENTS_BROKER_URL = self.BROKER_URL or "memory://localhost/"
        self.SECRET_KEY = os.environ.get("SECRET_KEY", "")
        self.JWT_SECRET = os.environ.get("JWT_SECRET", "")
        self.JWT_TTL_SECONDS = _int("JWT_TTL_SECONDS", 3600)
        self.THROTTLE_SECONDS = _float("THROTTLE_SECONDS", 2.0)
        self.PING_INTERVAL = _int("PING_INTERVAL", 30)
        self.PING_TIMEOUT = _int("PING_TIMEOUT", 20)
        self.EVENT_RETENTION_SECONDS = _float("EVENT_RETENTION_SECONDS", 86400.0)
        self.APPLIED_EVENT_RETENTION_SECONDS = _float("APPLIED_EVENT_RETENTION_SECONDS", 7 * 86400.0)
        self.HOST = os.environ.get("HOST", "127.0.0.1")
        self.PORT = _int("PORT", 5000)
        self.LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
        self.ASYNC_MODE = os.environ.get("ASYNC_MODE", "eventlet")
        self.MAX_CONNECTIONS = _int("MAX_CONNECTIONS", 10000)
        self.MAX_HTTP_BUFFER_SIZE = _int("MAX_HTTP_BUFFER_SIZE", 16 * 1024)
        self.CORS_ALLOWED_ORIGINS = os.environ.get("CORS_ALLOWED_ORIGINS", "")
        self.WEBSOCKET_COMPRESSION = os.environ.get("WEBSOCKET_COMPRESSION", "0") == "1"
        self.DIRECT_WEBSOCKET_WRITES = os.environ.get("DIRECT_WEBSOCKET_WRITES", "1") == "1"
        self.WORKER_BATCH_SIZE = _int("WORKER_BATCH_SIZE", 500)
        self.WORKER_BATCH_LINGER_MS = _int("WORKER_BATCH_LINGER_MS", 20)
        self.WORKER_QUEUE = os.environ.get("WORKER_QUEUE", "campaign.events.worker")
        self.AMQP_HEARTBEAT = _int("AMQP_HEARTBEAT", 30)
        self.SOCKETIO_CHANNEL = os.environ.get("SOCKETIO_CHANNEL", "flask-socketio")
        self.SIMULATOR = os.environ.get("SIMULATOR", "1" if self.DEMO else "0") == "1"
        self.SQLALCHEMY_TRACK_MODIFICATIONS = False
        self.TRUSTED_PROXIES = _int("TRUSTED_PROXIES", 0)
        self.MAX_CONNECTIONS_PER_TENANT = _int("MAX_CONNECTIONS_PER_TENANT", 2000)
        # Client events (``replay``) per connection: a burst, then this many per second.
        self.SOCKET_EVENT_BURST = _int("SOCKET_EVENT_BURST", 10)
        self.SOCKET_EVENT_RATE = _float("SOCKET_EVENT_RATE", 1.0)
        # Failure alert (campaigns/rules.py): a running campaign failing at least this share of
        # at least that many messages over the window.
        self.FAILURE_ALERT_RATE = _float("FAILURE_ALERT_RATE", 0.2)
        self.FAILURE_ALERT_WINDOW_SECONDS = _float("FAILURE_ALERT_WINDOW_SECONDS", 60.0)
        self.FAILURE_ALERT_MIN_MESSAGES = _int("FAILURE_ALERT_MIN_MESSAGES", 20)
        # Recovery (CONTRACT.md section 2): a client further behind than this gets resync + snapshot.
        self.REPLAY_MAX_UPDATES = _int("REPLAY_MAX_UPDATES", 1000)
        # Newest updates each server keeps in memory per tenant it has clients for (replay without a query).
        self.REPLAY_RING_SIZE = _int("REPLAY_RING_SIZE", 256)
        # Every client has every stored update within this long of its commit, even when the queue lost it.
        self.RECONCILE_SECONDS = _float("RECONCILE_SECONDS", 5.0)
        # A connect that cannot be served from memory within this long is refused with "unavailable".
        self.CONNECT_WAIT_SECONDS = _float("CONNECT_WAIT_SECONDS", 5.0)
        # Database queries of the connect path (tenant loads, replays) running at once.
        self.STATE_LOAD_CONCURRENCY = _int("STATE_LOAD_CONCURRENCY", 4)
        # Connect attempts per token (or logged-in user): a burst, then a rate; slowed up to a delay, then refused.
        self.CONNECT_BURST_PER_CREDENTIAL = _int("CONNECT_BURST_PER_CREDENTIAL", 20)
        self.CONNECT_RATE_PER_CREDENTIAL = _float("CONNECT_RATE_PER_CREDENTIAL", 5.0)
        self.CONNECT_MAX_DELAY_SECONDS = _float("CONNECT_MAX_DELAY_SECONDS", 3.0)
        # Each server writes its connection counts for the ops page this often (sockets/presence.py).
        self.SERVER_HEARTBEAT_SECONDS = _float("SERVER_HEARTBEAT_SECONDS", 5.0)
        # The ops page (/ops) polls its JSON this often; dead letters looked at per poll, at most.
        self.OPS_POLL_SECONDS = _float("OPS_POLL_SECONDS", 3.0)
        self.OPS_DEAD_LETTER_SCAN = _int("OPS_DEAD_LETTER_SCAN", 2000)
        self.API_RATE_LIMIT = os.environ.get("API_RATE_LIMIT", "600 per minute")
        self.TOKEN_RATE_LIMIT = os.environ.get("TOKEN_RATE_LIMIT", "30 per minute")
        self.RATELIMIT_STORAGE_URI = os.environ.get("RATELIMIT_STORAGE_URI", "memory://")
        self.RATELIMIT_HEADERS_ENABLED = True
        # Test-only fault point of the worker: "exit_before_emit" (tests/test_reconciliation.py).
        self.WORKER_FAULT = os.environ.get("WORKER_FAULT", "")
        self.WORKER_METRICS_PORT = _int("WORKER_METRICS_PORT", 0)
        # The worker's database session: how long it waits for a tenant's lock another worker
        # holds, and how long one statement may run, before it backs off and tries again.
        self.WORKER_LOCK_TIMEOUT_SECONDS = _float("WORKER_LOCK_TIMEOUT_SECONDS", 10.0)
        self.WORKER_STATEMENT_TIMEOUT_SECONDS = _float("WORKER_STATEMENT_TIMEOUT_SECONDS", 30.0)
        # PostgreSQL ends a worker session idle this long (with its tenant locks): a frozen worker.
        self.WORKER_IDLE_SESSION_TIMEOUT_SECONDS = _float("WORKER_IDLE_SESSION_TIMEOUT_SECONDS", 60.0)
        self.SESSION_COOKIE_HTTPONLY = True
        self.SESSION_COOKIE_SAMESITE = "Lax"
        self.SESSION_COOKIE_SECURE = os.environ.get("SESSION_COOKIE_SECURE", "0") == "1"
        self.REMEMBER_COOKIE_HTTPONLY = True
        self.REMEMBER_COOKIE_SAMESITE = "Lax"
        self.MAX_CONTENT_LENGTH = _int("MAX_CONTENT_LENGTH", 64 * 1024)

    def update(self, **overrides):
        """Return this config with some settings replaced (tests use it)."""
        for key, value in overrides.items():
            setattr(self, key, value)
        return self
