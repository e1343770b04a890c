"""Settings read from the environment: secrets a real deployment must not start with."""

import subprocess

import pytest

from config import Config, ConfigError, secret_problems
from tests import support

GOOD = "g" * 32


def env_example():
    """``{name: value}`` of the repository's .env.example."""
    lines = (support.REPO / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def settings(demo=False, **secrets):
    config = {"DEMO": demo, "SECRET_KEY": GOOD, "JWT_SECRET": GOOD}
    config.update(secrets)
    return config


@pytest.mark.parametrize("name", ["SECRET_KEY", "JWT_SECRET"])
def test_the_placeholders_of_env_example_are_refused(name):
    placeholder = env_example()[name]
    assert len(placeholder.encode()) >= 32  # refused although long enough
    (problem,) = secret_problems(settings(**{name: placeholder}))
    assert problem.startswith(f"{name} is the placeholder of .env.example")


@pytest.mark.parametrize(
    ("value", "refused"),
    [("", True), ("s" * 31, True), ("é" * 16, False), ("s" * 32, False), (support.JWT_SECRET, False)],
)
def test_secrets_need_32_bytes_outside_the_demo(value, refused):
    problems = secret_problems(settings(JWT_SECRET=value))
    assert bool(problems) is refused
    assert not secret_problems(settings(demo=True, JWT_SECRET=value, SECRET_KEY=value))


def test_the_test_stacks_secrets_are_accepted():
    assert not secret_problems(settings(SECRET_KEY=support.SECRET_KEY, JWT_SECRET=support.JWT_SECRET))


def test_jwt_leeway_is_read_from_the_environment(monkeypatch):
    assert Config().JWT_LEEWAY_SECONDS == 30
    monkeypatch.setenv("JWT_LEEWAY_SECONDS", "5")
    assert Config().JWT_LEEWAY_SECONDS == 5


@pytest.mark.parametrize("name", ["LOGIN_RATE_LIMIT_PER_ADDRESS", "LOGIN_RATE_LIMIT_PER_EMAIL", "API_RATE_LIMIT"])
def test_a_rate_limit_that_does_not_parse_is_refused_not_ignored(monkeypatch, name):
    monkeypatch.setenv(name, "5 per minute; 30 per hour")
    assert getattr(Config(), name) == "5 per minute; 30 per hour"
    monkeypatch.setenv(name, "five a minute")
    with pytest.raises(RuntimeError, match=name):
        Config()


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "1e309"])
def test_a_reconcile_interval_that_would_spin_is_refused(monkeypatch, value):
    monkeypatch.setenv("RECONCILE_SECONDS", "2.5")
    assert Config().RECONCILE_SECONDS == 2.5
    monkeypatch.setenv("RECONCILE_SECONDS", value)
    with pytest.raises(RuntimeError, match="RECONCILE_SECONDS must be a finite number above 0"):
        Config()


# Each of these used to start: nan/inf/negative throttles and a 0 s alert window then
# dead-lettered every valid event (timedelta(nan), a division by zero), PORT=70000 listened on
# 4464, LOG_LEVEL=LOUD ended in a traceback.
OUT_OF_RANGE = [
    ("THROTTLE_SECONDS", "nan", "a finite number at least 0"),
    ("THROTTLE_SECONDS", "inf", "a finite number at least 0"),
    ("THROTTLE_SECONDS", "-1", "a finite number at least 0"),
    ("FAILURE_ALERT_WINDOW_SECONDS", "0", "a finite number above 0"),
    ("FAILURE_ALERT_RATE", "2", "a finite number above 0 and at most 1"),
    ("FAILURE_ALERT_RATE", "0", "a finite number above 0 and at most 1"),
    ("EVENT_RETENTION_SECONDS", "-60", "a finite number above 0"),
    ("CONNECT_WAIT_SECONDS", "nan", "a finite number above 0"),
    ("PORT", "70000", "an integer between 1 and 65535"),
    ("PING_INTERVAL", "0", "an integer at least 1"),
    ("PING_TIMEOUT", "-3", "an integer at least 1"),
    ("REPLAY_MAX_UPDATES", "-1", "an integer at least 0"),
    ("WORKER_BATCH_SIZE", "0", "an integer at least 1"),
    ("MAX_CONNECTIONS", "0", "an integer at least 1"),
    ("LOG_LEVEL", "LOUD", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("ASYNC_MODE", "asyncio", "one of eventlet, gevent, threading"),
]


@pytest.mark.parametrize(("name", "value", "wanted"), OUT_OF_RANGE)
def test_a_setting_out_of_its_range_is_refused(monkeypatch, name, value, wanted):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        Config()
    assert str(refused.value) == f"{name} must be {wanted}, got {value!r}"


@pytest.mark.parametrize(
    ("name", "value", "read"),
    [
        ("THROTTLE_SECONDS", "0", 0.0),  # no throttle: every update at once (tests/faults use it)
        ("FAILURE_ALERT_RATE", "1", 1.0),
        ("PORT", "65535", 65535),
        ("WORKER_METRICS_PORT", "0", 0),  # off
        ("REPLAY_MAX_UPDATES", "0", 0),  # always resync
        ("LOG_LEVEL", "debug", "DEBUG"),
    ],
)
def test_the_edges_of_each_range_are_accepted(monkeypatch, name, value, read):
    monkeypatch.setenv(name, value)
    assert getattr(Config(), name) == read


@pytest.mark.parametrize(("command", "tag"), [(["app.py"], "[WEBSOCKET]"), (["-m", "worker"], "[WORKER]")])
def test_server_and_worker_refuse_a_setting_out_of_range_in_one_line(command, tag):
    env = {
        **support.os.environ,
        "DATABASE_URL": support.pg_url("never_connected"),
        "BROKER_URL": support.amqp_url("never_connected"),
        "SECRET_KEY": support.SECRET_KEY,
        "JWT_SECRET": support.JWT_SECRET,
        "THROTTLE_SECONDS": "nan",
    }
    result = subprocess.run(
        [support.PYTHON, *command], cwd=support.REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{tag} refusing to start: THROTTLE_SECONDS must be a finite number at least 0, got 'nan'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("command", "tag"), [(["app.py"], "[WEBSOCKET]"), (["-m", "worker"], "[WORKER]")])
@pytest.mark.parametrize("missing", ["BROKER_URL", "DATABASE_URL"])
def test_server_and_worker_refuse_half_a_deployment(command, tag, missing):
    # The server used to start on an in-process broker (or SQLite) and answer /readyz 200.
    env = {
        **support.os.environ,
        "DATABASE_URL": support.pg_url("never_connected"),
        "BROKER_URL": support.amqp_url("never_connected"),
        "SECRET_KEY": support.SECRET_KEY,
        "JWT_SECRET": support.JWT_SECRET,
    }
    del env[missing]
    result = subprocess.run(
        [support.PYTHON, *command], cwd=support.REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{tag} refusing to start: {missing} is not set: a deployment needs both" in result.stderr


def test_the_cli_refuses_a_setting_out_of_range_in_one_line():
    env = {**support.os.environ, "DATABASE_URL": support.pg_url("never_connected"), "LOG_LEVEL": "LOUD"}
    result = subprocess.run(
        [support.PYTHON, "-m", "flask", "--app", "app", "doctor"],
        cwd=support.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Error: LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("command", "tag"), [(["app.py"], "[WEBSOCKET]"), (["-m", "worker"], "[WORKER]")])
def test_server_and_worker_refuse_to_start_with_the_placeholders(command, tag):
    example = env_example()
    env = {
        **support.os.environ,
        "DATABASE_URL": support.pg_url("never_connected"),
        "BROKER_URL": support.amqp_url("never_connected"),
        "SECRET_KEY": example["SECRET_KEY"],
        "JWT_SECRET": "short",
    }
    result = subprocess.run(
        [support.PYTHON, *command], cwd=support.REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{tag} refusing to start: SECRET_KEY is the placeholder of .env.example" in result.stderr
    assert f"{tag} refusing to start: JWT_SECRET has 5 bytes, at least 32 are needed" in result.stderr
