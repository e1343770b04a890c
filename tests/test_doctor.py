"""``flask --app app doctor`` run as an operator would, against a real stack and each broken part.

Every test runs the real command in a subprocess with an environment and reads its lines:
``<mark> <check>: <detail>`` with ✓, ✗, ! (a warning that passes) or - (not applicable).
"""

import os
import re
import subprocess
from contextlib import closing
from types import SimpleNamespace

import pytest

from campaigns.publisher import EventPublisher
from tests import support
from tests.support import PYTHON, REPO, event

# The newest migration: its file name starts with its revision (0001_..., 0002_...).
HEAD = max(path.name.split("_", 1)[0] for path in (REPO / "migrations" / "versions").glob("[0-9]*_*.py"))
LINE = re.compile(r"^([✓✗!-]) ([a-z ]+): (.*)$")
CHECKS = (
    "database",
    "clock",
    "broker",
    "topology",
    "worker",
    "message queue",
    "secrets",
    "open files",
    "cors",
    "server",
)


def doctor(env, *args):
    """Run ``flask --app app doctor``; return ``(exit code, {check: (mark, detail)}, stdout)``."""
    completed = subprocess.run(
        [PYTHON, "-m", "flask", "--app", "app", "doctor", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    checks = {}
    for line in completed.stdout.splitlines():
        found = LINE.match(line)
        if found:
            checks[found.group(2)] = (found.group(1), found.group(3))
    assert set(checks) == set(CHECKS), completed.stdout + completed.stderr
    return completed.returncode, checks, completed.stdout


def marks(checks):
    """``{check: mark}``."""
    return {name: mark for name, (mark, _) in checks.items()}


@pytest.fixture(scope="module")
def healthy(module_database, module_vhost, tmp_path_factory):
    """A server and a worker on the module's database and vhost, with one tenant."""
    with support.Stack(module_database, module_vhost, tmp_path_factory.mktemp("logs")) as stack:
        stack.start_server()
        stack.start_worker()
        stack.create_tenant("doctor-acme")
        yield stack


def test_a_healthy_stack_passes_every_check(healthy):
    code, checks, output = doctor(healthy.env(MAX_CONNECTIONS=500), "--url", healthy.servers[0].url)
    assert code == 0, output
    assert set(marks(checks).values()) == {"✓"}, output
    assert "1 consumer(s) on campaign.events.worker" in checks["worker"][1]
    assert "probe went round trip" in checks["message queue"][1]
    assert "tenant doctor-acme over websocket and polling" in checks["server"][1]
    assert f"schema at head {HEAD}" in checks["database"][1]
    # The probe is dropped by the server quietly: no client gets it, no warning per run.
    assert "dropped a message-queue emit" not in healthy.servers[0].log()


def test_a_wrong_server_secret_and_a_down_server_fail_the_server_check(healthy):
    other_secret = "another-jwt-secret-" + "z" * 32
    code, checks, output = doctor(
        healthy.env(MAX_CONNECTIONS=500, JWT_SECRET=other_secret), "--url", healthy.servers[0].url
    )
    assert code == 1 and marks(checks)["server"] == "✗", output
    assert "websocket: refused: unauthorized" in checks["server"][1]
    assert "polling: refused: unauthorized" in checks["server"][1]
    down = f"http://127.0.0.1:{support.free_port()}"
    code, checks, output = doctor(healthy.env(MAX_CONNECTIONS=500), "--url", down, "--tenant", "doctor-acme")
    assert code == 1 and marks(checks)["server"] == "✗", output
    assert f"{down}, tenant doctor-acme: websocket:" in checks["server"][1] and "polling:" in checks["server"][1]
    assert "fix: " in output


def test_a_low_soft_file_limit_passes_when_the_hard_one_lets_the_server_raise_it(healthy):
    with support.low_soft_file_limit() as (soft, hard):
        code, checks, output = doctor(healthy.env(MAX_CONNECTIONS=min(hard, 10**6) - 200))
    assert code == 0, output
    assert marks(checks)["open files"] == "✓" and f"ulimit -n is {soft}" in checks["open files"][1]
    assert "the server raises its soft limit at start" in checks["open files"][1]


def test_weak_secrets_file_limit_and_origins_fail_and_a_wildcard_only_warns(healthy):
    code, checks, output = doctor(
        healthy.env(JWT_SECRET="short", MAX_CONNECTIONS=10**7, CORS_ALLOWED_ORIGINS="https://app.example.com/")
    )
    assert code == 1, output
    assert marks(checks)["secrets"] == "✗" and "JWT_SECRET has 5 bytes" in checks["secrets"][1]
    assert marks(checks)["open files"] == "✗" and "needs 10000100" in checks["open files"][1]
    assert marks(checks)["cors"] == "✗" and "https://app.example.com/" in checks["cors"][1]
    code, checks, output = doctor(healthy.env(MAX_CONNECTIONS=500, CORS_ALLOWED_ORIGINS="*"))
    assert code == 0, output
    assert marks(checks)["cors"] == "!" and "pages of any web site" in checks["cors"][1]
    assert marks(checks)["server"] == "-"


def test_a_database_behind_or_empty_or_unreachable_fails(healthy, template_database):
    behind = support.create_database(template_database)
    empty = f"cl_test_empty_{os.getpid()}"
    with closing(support.pg_admin()) as connection, connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{empty}"')
    try:
        support.Stack(behind, healthy.vhost, healthy.log_dir).sql("UPDATE alembic_version SET version_num = '0002'")
        code, checks, output = doctor(healthy.env(MAX_CONNECTIONS=500, DATABASE_URL=support.pg_url(behind)))
        assert code == 1 and marks(checks)["database"] == "✗", output
        assert f"schema at 0002, head of migrations/ is {HEAD}" in checks["database"][1]
        assert "flask --app app db upgrade" in output
        code, checks, output = doctor(healthy.env(MAX_CONNECTIONS=500, DATABASE_URL=support.pg_url(empty)))
        assert code == 1 and "schema at no schema" in checks["database"][1], output
    finally:
        support.drop_database(behind)
        support.drop_database(empty)
    nowhere = f"postgresql://postgres@127.0.0.1:{support.free_port()}/campaign_live"
    code, checks, output = doctor(healthy.env(MAX_CONNECTIONS=500, DATABASE_URL=nowhere))
    assert code == 1 and marks(checks)["database"] == "✗" and "does not answer" in checks["database"][1], output
    assert marks(checks)["clock"] == "-"
    assert marks(checks)["worker"] == "✓"


def test_an_unreachable_broker_fails_and_skips_what_needs_it(healthy):
    nowhere = f"amqp://guest:guest@127.0.0.1:{support.free_port()}//"
    code, checks, output = doctor(healthy.env(MAX_CONNECTIONS=500, BROKER_URL=nowhere, SOCKETIO_MESSAGE_QUEUE_URL=""))
    assert code == 1, output
    assert marks(checks)["broker"] == "✗" and "RabbitMQ does not answer" in checks["broker"][1]
    assert marks(checks)["topology"] == marks(checks)["worker"] == "-"
    assert marks(checks)["message queue"] == "✗"
    assert marks(checks)["database"] == "✓"


def test_missing_queues_then_no_worker_fail_and_doctor_creates_nothing(healthy, vhost):
    env = healthy.env(MAX_CONNECTIONS=500, BROKER_URL=support.amqp_url(vhost), SOCKETIO_MESSAGE_QUEUE_URL="")
    code, checks, output = doctor(env)
    assert code == 1 and marks(checks)["topology"] == "✗", output
    assert "exchange campaign.events, queue campaign.events.worker, queue campaign.events.dead" in output
    assert "campaign.events.worker" not in support.list_queues(vhost)
    assert "campaign.events" not in support.list_exchanges(vhost)
    # A server declares the topology at start; with no worker, the events wait.
    with support.Stack(healthy.database, vhost, healthy.log_dir) as stack:
        stack.start_server()
        with EventPublisher(stack.broker_url) as publisher:
            publisher.publish(event("doctor-acme", "c1", "campaign_started", name="C", total_messages=1))
        code, checks, output = doctor(env)
    assert code == 1, output
    assert marks(checks)["topology"] == "✓"
    assert marks(checks)["worker"] == "✗" and "0 consumer(s) on campaign.events.worker, 1 message(s)" in output
    assert "python -m worker" in output


def test_a_message_queue_the_user_may_not_use_fails_and_its_own_vhost_passes(healthy):
    user, password = support.create_broker_user()
    own_vhost = support.create_vhost(user)
    try:
        env = healthy.env(
            MAX_CONNECTIONS=500, SOCKETIO_MESSAGE_QUEUE_URL=support.amqp_url(healthy.vhost, user, password)
        )
        code, checks, output = doctor(env)
        assert code == 1 and marks(checks)["message queue"] == "✗", output
        assert "cannot use the message queue at SOCKETIO_MESSAGE_QUEUE_URL" in checks["message queue"][1]
        # Production's layout: the message queue on a vhost and user of its own.
        env["SOCKETIO_MESSAGE_QUEUE_URL"] = support.amqp_url(own_vhost, user, password)
        code, checks, output = doctor(env)
        assert code == 0 and marks(checks)["message queue"] == "✓", output
        assert "round trip on exchange 'flask-socketio' at SOCKETIO_MESSAGE_QUEUE_URL" in output
    finally:
        support.delete_vhost(own_vhost)
        support.delete_broker_user(user)


def test_the_demo_checks_what_applies_and_says_what_does_not():
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "BROKER_URL")}
    env.update(MAX_CONNECTIONS="500")
    env.pop("SOCKETIO_MESSAGE_QUEUE_URL", None)
    code, checks, output = doctor(env)
    assert code == 0, output
    for name in ("database", "clock", "broker", "topology", "worker", "message queue", "secrets"):
        assert marks(checks)[name] == "-" and "demo mode" in checks[name][1], output
    assert marks(checks)["open files"] == marks(checks)["cors"] == "✓"
    assert "demo mode: neither DATABASE_URL nor BROKER_URL is set" in output


def test_a_clock_off_by_more_than_two_seconds_fails(healthy, template_database):
    # PostgreSQL's now() shifted 10 s for doctor's sessions only: a function named now() in a
    # schema searched before pg_catalog (PGOPTIONS reaches libpq), so the clocks differ for real.
    skewed = support.create_database(template_database)
    try:
        support.Stack(skewed, healthy.vhost, healthy.log_dir).sql(
            "CREATE SCHEMA skew; CREATE FUNCTION skew.now() RETURNS timestamptz LANGUAGE sql "
            "AS $$ SELECT pg_catalog.now() + interval '10 seconds' $$"
        )
        env = healthy.env(
            MAX_CONNECTIONS=500,
            DATABASE_URL=support.pg_url(skewed),
            PGOPTIONS="-c search_path=skew,pg_catalog,public",
        )
        code, checks, output = doctor(env)
    finally:
        support.drop_database(skewed)
    assert code == 1 and marks(checks)["clock"] == "✗", output
    assert re.search(r"clock: (9|10)\.\d\d s behind the database's clock", output), output
    assert "JWT_LEEWAY_SECONDS (30 s)" in output
    assert marks(checks)["database"] == "✓"


def test_the_server_check_says_goodbye_at_once_under_gevent(database, vhost, tmp_path):
    """doctor's long-polling probe client leaves before it returns: the server sees each disconnect
    at once. python-engineio's client lost its goodbye when its write loop was still inside the
    connect's POST (seen under gevent); the server then waited for its next ping (30 s)."""
    from campaigns.doctor import connect_once

    with support.Stack(database, vhost, tmp_path) as stack:
        server = stack.start_server(ASYNC_MODE="gevent")
        tenant = stack.create_tenant("doctor-gevent")
        for number in range(1, 4):
            assert connect_once(server.url, stack.token(tenant), "polling") is None
            support.wait_until(
                lambda number=number: server.log().count(f"disconnected (tenant {tenant})") == number,
                5,
                message=f"the server seeing probe {number} leave",
            )


def test_the_probe_waits_for_its_sends_only_while_they_can_still_happen():
    import queue

    from campaigns.doctor import wait_until_sent

    eio = SimpleNamespace(queue=queue.Queue(), write_loop_task=object())
    client = SimpleNamespace(eio=eio)
    assert wait_until_sent(client) is True  # nothing queued
    eio.queue.put("a packet")
    assert wait_until_sent(client, timeout=0.05) is False  # a POST that does not return: bounded
    eio.write_loop_task = None
    assert wait_until_sent(client, timeout=3600) is False  # the write loop ended: no waiting at all
    eio.write_loop_task = object()
    eio.queue.get()
    eio.queue.task_done()
    assert wait_until_sent(client) is True
