"""Whose fault a database error is, decided on errors that real PostgreSQL raises."""

from contextlib import closing
from types import SimpleNamespace

import psycopg2
import pytest
from kombu import Connection
from sqlalchemy import create_engine, text

from tests import support
from tests.support import bare_worker
from worker.consumer import BrokerLost
from worker.failures import caused_by_event, retry_reason

# (statements run in one transaction, the last one fails; dead-letter the event?; retry reason)
CASES = {
    "division by zero (22012)": (["SELECT 1 / 0"], True, None),
    "value too long (22001)": (["CREATE TEMP TABLE t (v varchar(2))", "INSERT INTO t VALUES ('abc')"], True, None),
    "NUL in jsonb (22P05)": ([r"""SELECT '"\u0000"'::jsonb"""], True, None),
    "duplicate key (23505)": (
        ["CREATE TEMP TABLE t (v int PRIMARY KEY)", "INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (1)"],
        True,
        None,
    ),
    "read-only transaction (25006)": (
        [
            "SET TRANSACTION READ ONLY",
            "INSERT INTO tenants (id, name, last_seq, created_at) VALUES ('x', 'x', 0, now())",
        ],
        False,
        "read_only",
    ),
    "undefined column (42703)": (["SELECT no_such_column FROM campaigns"], False, "schema_mismatch"),
    "undefined table (42P01)": (["SELECT 1 FROM no_such_table"], False, "schema_mismatch"),
    "statement timeout (57014)": (
        ["SET LOCAL statement_timeout = 50", "SELECT pg_sleep(2)"],
        False,
        "statement_timeout",
    ),
    "lock timeout (55P03)": (
        ["SET LOCAL lock_timeout = 50", "SELECT pg_advisory_xact_lock(4242)"],
        False,
        "lock_timeout",
    ),
}


@pytest.fixture
def engine(database):
    engine = create_engine(support.pg_url(database))
    yield engine
    engine.dispose()


@pytest.mark.parametrize("case", list(CASES))
def test_only_errors_the_event_can_cause_dead_letter_it(engine, database, case):
    statements, event_fault, reason = CASES[case]
    with closing(psycopg2.connect(support.pg_url(database))) as holder, holder.cursor() as cursor:
        holder.autocommit = True
        if case.startswith("lock"):  # the lock held by another session, as by another worker
            cursor.execute("SELECT pg_advisory_lock(4242)")
        with engine.connect() as connection, pytest.raises(Exception) as raised:
            for statement in statements:
                connection.execute(text(statement))
    assert caused_by_event(raised.value) is event_fault, raised.value
    if reason:
        assert retry_reason(raised.value) == reason


def test_a_lost_server_is_retried_not_dead_lettered(engine):
    with engine.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
        with closing(support.pg_admin()) as admin, admin.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(Exception) as raised:
            connection.execute(text("SELECT 1"))
    assert not caused_by_event(raised.value)
    assert retry_reason(raised.value) == "database_unavailable"


def test_an_error_of_our_own_code_on_the_event_dead_letters_it():
    assert caused_by_event(TypeError("unsupported operand type(s) for +: 'int' and 'str'"))


class LostBroker:
    """A kombu connection that a failed write marked down: ``connection`` would connect again quietly."""

    connected = False

    def __init__(self):
        self.reconnected = False

    @property
    def connection(self):
        self.reconnected = True
        return SimpleNamespace(send_heartbeat=lambda: None)


def test_a_broker_connection_lost_while_waiting_raises_instead_of_reconnecting_without_the_consumer():
    lost = LostBroker()
    worker = bare_worker(active_connection=lost)
    with pytest.raises(BrokerLost):
        worker.wait(0.05)
    assert worker.amqp_connection() is None
    assert not lost.reconnected

    def heartbeat_fails():
        raise BrokenPipeError("broker gone")

    alive = SimpleNamespace(connected=True, connection=SimpleNamespace(send_heartbeat=heartbeat_fails))
    with pytest.raises(BrokerLost) as lost_heartbeat:  # not swallowed: kombu's loop reconnects and consumes again
        bare_worker(active_connection=alive).wait(0.05)
    assert isinstance(lost_heartbeat.value.__cause__, BrokenPipeError)
    # The demo's in-memory transport (``memory://``) has no heartbeat to send: waiting is just waiting.
    in_memory = Connection("memory://")
    in_memory.connect()
    bare_worker(active_connection=in_memory).wait(0.05)


@pytest.mark.parametrize("apply", ["apply_pairs", "process_alone"])
def test_a_broker_error_while_applying_goes_to_kombu_and_dead_letters_nothing(apply):
    def broker_lost(*args, **kwargs):
        raise BrokerLost("the broker connection was lost while the worker waited")

    dead_letters = []
    worker = bare_worker(in_transaction=broker_lost, dead_letter=lambda message, reason: dead_letters.append(reason))
    pair = (SimpleNamespace(event_id="e-1", tenant_id="acme", campaign_id="c"), SimpleNamespace())
    with pytest.raises(BrokerLost):
        if apply == "apply_pairs":
            worker.apply_pairs([pair], received=0.0)
        else:
            worker.process_alone(*pair)
    assert dead_letters == []


@pytest.mark.parametrize("apply", ["apply_pairs", "process_alone"])
def test_an_os_error_of_the_applying_itself_dead_letters_the_event(apply):
    # kombu counts every OSError as a broker error: caught as one, this event came back for ever.
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    dead_letters = []
    worker = bare_worker(
        connection=SimpleNamespace(connection_errors=(ConnectionError, OSError)),  # as kombu's py-amqp
        in_transaction=disk_full,
        release_locks=lambda: None,
        dead_letter=lambda message, reason: dead_letters.append(reason),
    )
    pair = (SimpleNamespace(event_id="e-1", tenant_id="acme", campaign_id="c"), SimpleNamespace())
    assert getattr(worker, apply)(*(([pair], 0.0) if apply == "apply_pairs" else pair)) is True
    assert dead_letters == ["apply_failed: OSError"]
