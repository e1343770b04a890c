"""Fault: a flood of wrong logins against a real server (``python app.py``, PostgreSQL, RabbitMQ).

A scrypt password check costs ~75 ms of CPU. Run on the event loop, every wrong login stopped
every socket and request of the server for that long. While 20 clients post wrong passwords in
parallel, ``/healthz`` is probed back to back: its slowest answer
must stay under 100 ms, with the login limits open (every attempt reaches scrypt) and with the
default ones (which must answer 429). Prints ``FAULT-RESULT`` lines with what it measured.
"""

import http.client
import re
import statistics
import threading
import time
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest
import requests
from werkzeug.security import generate_password_hash

from tests import support
from tests.faults.helpers import report
from tests.support import wait_until

EMAIL, PASSWORD = "ops@flood.test", "the-right-password-7"
FLOOD_CLIENTS, LOGINS_PER_CLIENT = 20, 3
HEALTHZ_BUDGET_SECONDS = 0.100
OPEN_LIMITS = {"LOGIN_RATE_LIMIT_PER_ADDRESS": "10000 per minute", "LOGIN_RATE_LIMIT_PER_EMAIL": "10000 per minute"}
TIMING_SAMPLES = 7
Answer = namedtuple("Answer", "status_code headers text")


@pytest.fixture
def login_stack(database, vhost, tmp_path):
    """A stack with one user of the admin pages (servers are started by the test)."""
    with support.Stack(database, vhost, tmp_path) as stack:
        tenant = stack.create_tenant()
        stack.sql(
            "INSERT INTO users (email, password_hash, tenant_id, is_admin, created_at) "
            "VALUES (%s, %s, %s, false, now())",
            (EMAIL, generate_password_hash(PASSWORD), tenant),
        )
        yield stack


class LoginPage:
    """One browser session on ``/login`` (cookie and CSRF token), posted from many threads.

    Posts go through ``http.client``: the load generator shares the server's two cores, and
    ``requests`` would take several times more of them per login.
    """

    def __init__(self, server):
        self.port = server.port
        session = requests.Session()
        page = session.get(server.url + "/login", timeout=10)
        self.csrf_token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text).group(1)
        self.cookie = "; ".join(f"{name}={value}" for name, value in session.cookies.get_dict().items())

    def post(self, email, password):
        """Post the form; return the answer (status, headers, text) and how long it took."""
        body = urlencode({"csrf_token": self.csrf_token, "email": email, "password": password})
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": self.cookie}
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        started = time.perf_counter()
        connection.request("POST", "/login", body, headers)
        response = connection.getresponse()
        answer = Answer(response.status, dict(response.getheaders()), response.read().decode())
        elapsed = time.perf_counter() - started
        connection.close()
        return answer, elapsed


class HealthProbe(threading.Thread):
    """``GET /healthz`` back to back, recording each latency.

    A new connection each time, as a load balancer's check does: on a kept-alive connection
    gevent's server answers ~40 ms late even at rest (headers and body in two writes: Nagle's
    algorithm waits for the client's delayed ACK), which would hide what this test looks at.
    """

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.latencies = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            started = time.perf_counter()
            connection.request("GET", "/healthz")
            answer = connection.getresponse()
            answer.read()
            self.latencies.append(time.perf_counter() - started)
            connection.close()
            assert answer.status == 200
            self.done.wait(0.005)  # pacing of the probe, not a wait for anything

    def __enter__(self):
        self.start()
        wait_until(lambda: self.latencies, 10, message="a first /healthz answer")
        return self

    def __exit__(self, *exc_info):
        self.done.set()
        self.join(30)


def flood(page, email):
    """``FLOOD_CLIENTS`` clients posting wrong passwords at once; every answer."""
    start = threading.Barrier(FLOOD_CLIENTS)

    def client(_):
        start.wait()
        return [page.post(email, "wrong-password")[0] for _ in range(LOGINS_PER_CLIENT)]

    with ThreadPoolExecutor(FLOOD_CLIENTS) as pool:
        return [answer for answers in pool.map(client, range(FLOOD_CLIENTS)) for answer in answers]


def probed_flood(server, email=EMAIL):
    """Flood ``server`` with wrong logins while probing ``/healthz``; (answers, healthz latencies)."""
    page = LoginPage(server)
    with HealthProbe(server.port) as probe:
        answers = flood(page, email)
    return answers, probe.latencies


def median_login_seconds(page):
    """Median time of a wrong password for a known e-mail and of an unknown e-mail (interleaved)."""
    wrong, unknown = [], []
    for i in range(TIMING_SAMPLES):
        wrong.append(page.post(EMAIL, "wrong-password")[1])
        unknown.append(page.post(f"nobody-{i}@flood.test", "wrong-password")[1])
    return statistics.median(wrong), statistics.median(unknown)


@pytest.mark.parametrize("async_mode", ["eventlet", "gevent"])
def test_wrong_logins_neither_freeze_the_server_nor_tell_which_e_mails_exist(login_stack, async_mode):
    open_server = login_stack.start_server(ASYNC_MODE=async_mode, **OPEN_LIMITS)
    limited_server = login_stack.start_server(ASYNC_MODE=async_mode)

    open_answers, open_latencies = probed_flood(open_server)
    wrong_seconds, unknown_seconds = median_login_seconds(LoginPage(open_server))
    limited_answers, limited_latencies = probed_flood(limited_server)
    statuses = sorted({answer.status_code for answer in limited_answers})
    report(
        "login_flood",
        async_mode=async_mode,
        logins=len(open_answers),
        healthz_max_open_limits=max(open_latencies),
        healthz_probes_open_limits=len(open_latencies),
        healthz_max_default_limits=max(limited_latencies),
        statuses_default_limits=statuses,
        answered_429=sum(answer.status_code == 429 for answer in limited_answers),
        login_wrong_password_median=wrong_seconds,
        login_unknown_email_median=unknown_seconds,
    )

    assert {answer.status_code for answer in open_answers} == {401}
    assert max(open_latencies) < HEALTHZ_BUDGET_SECONDS, "scrypt ran on the event loop"
    assert max(limited_latencies) < HEALTHZ_BUDGET_SECONDS
    assert 429 in statuses and set(statuses) <= {401, 429}
    limited = next(answer for answer in limited_answers if answer.status_code == 429)
    assert int(limited.headers["Retry-After"]) > 0
    assert "Too many login attempts" in limited.text
    # An unknown e-mail costs a password check too, so the answer time does not tell it apart.
    assert 0.6 < unknown_seconds / wrong_seconds < 1.6
    right, _ = LoginPage(open_server).post(EMAIL, PASSWORD)
    assert right.status_code == 302
