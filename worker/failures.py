"""Whose fault a failed batch is: the event's (dead-letter it) or the environment's (wait, retry).

Only an error the event's own content can cause dead-letters it: a value PostgreSQL refuses
(SQLSTATE class 22, data exception, or 23, integrity constraint violation), a value that
cannot be sent to it, or an error of our own code on that content. Every other database
error says nothing about the event (the server is gone or read-only after a failover, the
schema is behind the code, a timeout, a missing privilege): the worker acknowledges nothing,
backs off and tries again, and the same events are applied once the cause is gone.
"""

from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
    StatementError,
)

# SQLSTATE -> the ``reason`` label of campaign_live_worker_retries_total (a small fixed set).
REASONS_BY_SQLSTATE = {
    "25006": "read_only",  # read_only_sql_transaction: a replica, or default_transaction_read_only
    "55P03": "lock_timeout",  # another worker held a tenant's lock longer than WORKER_LOCK_TIMEOUT_SECONDS
    "57014": "statement_timeout",  # query_canceled: WORKER_STATEMENT_TIMEOUT_SECONDS, or an operator
    "42P01": "schema_mismatch",  # undefined_table: `flask db upgrade` not run yet
    "42703": "schema_mismatch",  # undefined_column
    "42883": "schema_mismatch",  # undefined_function
    "42704": "schema_mismatch",  # undefined_object
    "42501": "permission_denied",
}
OTHER_REASONS = (
    "database_unavailable",
    "database_error",
    "broker_unavailable",
    "broker_lost_after_commit",
    "task_failed",
)
RETRY_REASONS = tuple(sorted(set(REASONS_BY_SQLSTATE.values()) | set(OTHER_REASONS)))


def caused_by_event(exc):
    """True when the event being applied may itself have caused ``exc`` (see the module docstring)."""
    if isinstance(exc, (DataError, IntegrityError)):
        return True
    if isinstance(exc, DBAPIError):
        return False
    if isinstance(exc, StatementError):
        return True  # a value of the event could not be bound to the statement
    # Other SQLAlchemy errors are about the session or the connection, not the event.
    return not isinstance(exc, SQLAlchemyError)


def sqlstate(exc):
    """The PostgreSQL error code behind a SQLAlchemy error, or ""."""
    return getattr(getattr(exc, "orig", None), "pgcode", None) or ""


def retry_reason(exc):
    """The bounded reason of a retried failure, for the metric and the log."""
    reason = REASONS_BY_SQLSTATE.get(sqlstate(exc))
    if reason:
        return reason
    if isinstance(exc, (OperationalError, InterfaceError)):
        return "database_unavailable"
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return "database_unavailable"
    return "database_error"


def describe(exc):
    """One short line about an exception, for logs and the worker's /readyz."""
    code = sqlstate(exc)
    first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0][:200]
    return f"{exc.__class__.__name__}{f' [{code}]' if code else ''}: {first}"
