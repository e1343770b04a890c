"""Logging in to the admin pages: limits on wrong passwords, and no e-mail oracle."""

import statistics
import time

import pytest

from campaigns import passwords
from campaigns.models import Tenant, User
from campaigns.passwords import login_matches

PASSWORD = "the-right-password-7"


@pytest.fixture
def ana(app, store):
    store.add(Tenant(id="acme", name="Acme"))
    user = User(email="ana@acme.test", tenant_id="acme")
    user.set_password(PASSWORD)
    store.add(user)
    store.commit()
    app.config["WTF_CSRF_ENABLED"] = False  # the fault test posts with real CSRF tokens
    return user


def attempt(client, email, address="10.0.0.1", password="wrong", language="en"):
    return client.post(
        "/login",
        data={"email": email, "password": password},
        environ_base={"REMOTE_ADDR": address},
        headers={"Accept-Language": language},
    )


def test_wrong_passwords_for_one_e_mail_are_limited_from_any_address(app, ana):
    app.config["LOGIN_RATE_LIMIT_PER_EMAIL"] = "3 per minute"
    client = app.test_client()
    answers = [attempt(client, "ANA@acme.test ", address=f"10.0.0.{i}") for i in range(4)]
    assert [answer.status_code for answer in answers] == [401, 401, 401, 429]
    limited = answers[-1]
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    assert "Too many login attempts. Try again in" in limited.get_data(as_text=True)
    assert 'name="password"' in limited.get_data(as_text=True)  # the form is still there
    assert attempt(client, "other@acme.test", address="10.0.0.9").status_code == 401
    assert "Retry-After" not in attempt(client, "other@acme.test", address="10.0.0.9").headers


def test_wrong_logins_from_one_address_are_limited_whatever_the_e_mail(app, ana):
    app.config["LOGIN_RATE_LIMIT_PER_ADDRESS"] = "3 per minute"
    client = app.test_client()
    answers = [attempt(client, f"guess{i}@acme.test") for i in range(4)]
    assert [answer.status_code for answer in answers] == [401, 401, 401, 429]
    assert attempt(client, "guess9@acme.test", address="10.0.0.2").status_code == 401
    assert client.get("/login", environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code == 200


def test_the_limit_message_is_translated(app, ana):
    app.config["LOGIN_RATE_LIMIT_PER_EMAIL"] = "1 per minute"
    client = app.test_client()
    attempt(client, "ana@acme.test")
    limited = attempt(client, "ana@acme.test", language="pt-BR,pt;q=0.9")
    assert limited.status_code == 429
    assert "Muitas tentativas de login. Tente de novo em" in limited.get_data(as_text=True)


def test_the_right_password_still_logs_in(app, ana):
    answer = attempt(app.test_client(), "ana@acme.test", password=PASSWORD)
    assert answer.status_code == 302


def test_an_unknown_e_mail_costs_as_much_as_a_wrong_password(app, ana):
    def seconds(user):
        started = time.perf_counter()
        assert login_matches(user, "wrong") is False
        return time.perf_counter() - started

    seconds(None)  # the dummy hash is made on first use
    # Alternated, so that both see the same load of a shared machine (another test file runs beside).
    pairs = [(seconds(ana), seconds(None)) for _ in range(7)]
    wrong, unknown = (statistics.median(times) for times in zip(*pairs))
    assert 0.6 < unknown / wrong < 1.6, (unknown, wrong)


def test_a_login_that_waits_too_long_for_a_password_check_gets_429(app, ana, monkeypatch):
    """A flood from many addresses must not queue logins without end (they hold server slots)."""
    monkeypatch.setattr(passwords, "CHECK_WAIT_SECONDS", 0.2)
    held = [passwords._checks.acquire(blocking=False) for _ in range(passwords.CONCURRENT_CHECKS)]
    assert all(held)
    try:
        answer = attempt(app.test_client(), "ana@acme.test", password=PASSWORD)
    finally:
        for _ in held:
            passwords._checks.release()
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) > 0
    assert "busy checking logins" in answer.get_data(as_text=True)
    assert attempt(app.test_client(), "ana@acme.test", password=PASSWORD).status_code == 302
