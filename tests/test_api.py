"""The REST API, the CLI and the socket handlers in-process, on a real PostgreSQL database."""

import copy
from datetime import timedelta

import jwt
import pytest
from flask_socketio import SocketIOTestClient

import sockets.handlers
from campaigns import metrics
from campaigns.auth import hash_api_key
from campaigns.ingest import apply_batch
from campaigns.models import ApiKey, User
from campaigns.timeutil import utcnow
from extensions import db, socketio
from sockets.tenants import tenant_states
from tests.support import JWT_SECRET, statements_on
from tests.test_ingest import ev, started
from tests.test_tenant_state import campaign, update


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def run(*args):
        result = runner.invoke(args=list(args))
        assert result.exit_code == 0, result.output
        return result.output.strip()

    return run


@pytest.fixture
def acme(cli, store):
    cli("create-tenant", "acme", "--name", "Acme")
    cli("create-tenant", "globex", "--name", "Globex")
    return "acme"


@pytest.fixture
def token(app, acme):
    client = app.test_client()
    key = app.test_cli_runner().invoke(args=["create-api-key", "acme"]).output.strip()
    answer = client.post("/api/tokens", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 201
    return answer.get_json()["token"]


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_api_keys_are_shown_once_and_stored_hashed(app, cli, acme, store):
    key = cli("create-api-key", "acme")
    stored = store.query(ApiKey).one()
    assert stored.key_hash == hash_api_key(key) and key not in (stored.key_hash, stored.prefix)
    answer = app.test_client().post("/api/tokens", headers=bearer(key), json={"sub": "mobile-user-7"})
    assert answer.status_code == 201
    body = answer.get_json()
    assert body["expires_in"] == 3600
    claims = jwt.decode(body["token"], JWT_SECRET, algorithms=["HS256"])
    assert (claims["tenant"], claims["sub"]) == ("acme", "mobile-user-7")
    assert claims["exp"] - claims["iat"] == 3600


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer clk_wrong", "Basic abc", "Bearer " + "x" * 5000])
def test_token_minting_needs_a_valid_api_key(app, acme, header):
    answer = app.test_client().post("/api/tokens", headers={"Authorization": header} if header else {})
    assert answer.status_code == 401
    assert answer.get_json()["error"] == "unauthorized"


@pytest.mark.parametrize(
    ("body", "content_type", "subject"),
    [
        (b'{"sub": "u1"}', "application/x-www-form-urlencoded", "u1"),
        (b"x", "text/plain", "api-key"),
        (b'["not", "an", "object"]', "application/json", "api-key"),
        (b'{"sub": 42}', "application/json", "api-key"),
    ],
)
def test_token_minting_ignores_a_body_it_cannot_use(app, cli, acme, body, content_type, subject):
    key = cli("create-api-key", "acme")
    answer = app.test_client().post("/api/tokens", data=body, headers={**bearer(key), "Content-Type": content_type})
    assert answer.status_code == 201
    assert jwt.decode(answer.get_json()["token"], JWT_SECRET, algorithms=["HS256"])["sub"] == subject


def test_a_token_minted_elsewhere_without_sub_is_accepted(app, acme):
    claims = {"tenant": "acme", "exp": utcnow() + timedelta(minutes=5)}
    token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    assert app.test_client().get("/api/campaigns", headers=bearer(token)).status_code == 200
    numeric_sub = jwt.encode({**claims, "sub": 7}, JWT_SECRET, algorithm="HS256")
    assert app.test_client().get("/api/campaigns", headers=bearer(numeric_sub)).status_code == 200
    no_tenant = jwt.encode({"sub": "x", "exp": claims["exp"]}, JWT_SECRET, algorithm="HS256")
    assert app.test_client().get("/api/campaigns", headers=bearer(no_tenant)).status_code == 401


def test_create_user_reads_one_password_line_from_a_pipe(app, acme, store):
    result = app.test_cli_runner().invoke(args=["create-user", "pipe@acme.com", "--tenant", "acme"], input="short\n")
    assert result.exit_code == 0, result.output
    assert store.query(User).filter_by(email="pipe@acme.com").one().check_password("short")


def test_keys_of_a_deleted_tenant_stop_working(app, cli, acme):
    key = cli("create-api-key", "globex")
    client = app.test_client()
    token = client.post("/api/tokens", headers=bearer(key)).get_json()["token"]
    assert client.get("/api/campaigns", headers=bearer(token)).status_code == 200
    cli("delete-tenant", "globex")
    assert client.post("/api/tokens", headers=bearer(key)).status_code == 401
    assert client.get("/api/campaigns", headers=bearer(token)).status_code == 401


def test_users_get_hashed_passwords(app, cli, acme, store):
    cli("create-user", "Ana@Acme.com", "--tenant", "acme", "--password", "correct horse")
    cli("create-user", "root@platform.io", "--admin", "--password", "battery staple")
    ana = store.query(User).filter_by(email="ana@acme.com").one()
    assert ana.password_hash != "correct horse" and ana.check_password("correct horse")
    assert not ana.check_password("wrong") and not ana.is_admin
    assert store.query(User).filter_by(email="root@platform.io").one().is_admin
    refused = app.test_cli_runner().invoke(args=["create-user", "x@y.z", "--password", "12345678"])
    assert refused.exit_code != 0 and "--tenant is required" in refused.output


def test_campaign_list_uses_etags_so_polling_is_cheap(app, token, store):
    client = app.test_client()
    first = client.get("/api/campaigns", headers=bearer(token))
    assert first.status_code == 200 and first.get_json() == {"seq": 0, "campaigns": []}
    etag = first.headers["ETag"]
    again = client.get("/api/campaigns", headers={**bearer(token), "If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    apply_batch(store, [started(10, at=utcnow())], utcnow(), 2.0)
    store.commit()
    changed = client.get("/api/campaigns", headers={**bearer(token), "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert [c["id"] for c in changed.get_json()["campaigns"]] == ["bf"]
    assert changed.get_json()["seq"] == 1
    assert client.get("/api/campaigns?status=paused", headers=bearer(token)).get_json()["campaigns"] == []
    assert client.get("/api/campaigns?status=bogus", headers=bearer(token)).status_code == 400


def test_the_snapshot_keeps_campaigns_that_ended_within_24_hours_of_their_end(app, token, store):
    now = utcnow()
    long_ago, recently = now - timedelta(days=4), now - timedelta(hours=2)
    apply_batch(
        store,
        [
            started(3, campaign="old", at=long_ago),
            ev("campaign_completed", campaign="old", at=long_ago + timedelta(days=1)),
            started(3, campaign="recent", at=recently),
            ev("campaign_completed", campaign="recent", at=recently + timedelta(hours=1)),
            started(3, campaign="live", at=recently),
        ],
        now,  # all applied just now: the end time, not the apply time, decides
        2.0,
    )
    store.commit()
    listed = app.test_client().get("/api/campaigns", headers=bearer(token)).get_json()["campaigns"]
    assert sorted(c["id"] for c in listed) == ["live", "recent"]


def test_campaign_detail_is_scoped_to_the_tenant(app, token, store):
    now = utcnow()
    failure = ev("message_failed", {"message_id": "m1", "error": "no WhatsApp"}, at=now + timedelta(seconds=1))
    apply_batch(store, [started(3, at=now), failure, started(3, tenant="globex", campaign="theirs", at=now)], now, 2.0)
    store.commit()
    client = app.test_client()
    mine = client.get("/api/campaigns/bf", headers=bearer(token))
    assert mine.status_code == 200
    body = mine.get_json()
    assert (body["failed"], body["recent_failures"][0]["error"]) == (1, "no WhatsApp")
    assert [entry["type"] for entry in body["timeline"]] == ["campaign_started"]
    for path in ("/api/campaigns/theirs", "/api/campaigns/nope", "/api/campaigns/a%00b", "/api/campaigns/%20x"):
        answer = client.get(path, headers=bearer(token))
        assert answer.status_code == 404 and answer.get_json() == {"error": "not_found", "message": "no such campaign"}


@pytest.mark.parametrize(
    "query",
    [
        "after_seq=abc",
        "after_seq=-1",
        "after_seq=1.5",
        "limit=100000",
        "limit=-3",
        "limit=",
        "after_seq=1e3",
        "after_seq=%C2%B2",  # "²": str.isdigit() says yes, int() says no
        "limit=%D9%A3",  # an Arabic-Indic digit
        "after_seq=99999999999999999999999",
    ],
)
def test_events_query_is_validated(app, token, query):
    answer = app.test_client().get(f"/api/events?{query}", headers=bearer(token))
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "bad_request"


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/events?after_seq=1&after_seq=2", "after_seq"),
        ("/api/events?limit=5&after_seq=0&limit=5", "limit"),  # even the same value twice
        ("/api/campaigns?status=running&status=paused", "status"),
    ],
)
def test_a_repeated_query_parameter_is_refused_not_half_read(app, token, path, name):
    answer = app.test_client().get(path, headers=bearer(token))
    assert answer.status_code == 400
    assert answer.get_json() == {"error": "bad_request", "message": f"{name} must be given at most once"}


def test_events_returns_stored_updates_after_seq(app, token, store):
    now = utcnow()
    for i, kind in enumerate(["campaign_started", "campaign_paused", "campaign_resumed"]):
        data = {"name": "x", "total_messages": 1} if kind == "campaign_started" else {}
        apply_batch(store, [ev(kind, data, at=now.replace(microsecond=i))], now, 2.0)
        store.commit()
    body = app.test_client().get("/api/events?after_seq=1&limit=1", headers=bearer(token)).get_json()
    assert [(e["seq"], e["type"], e["replayed"]) for e in body["events"]] == [(2, "campaign_paused", True)]
    assert body["seq"] == 3 and "history_expired" not in body


def test_errors_are_json(app, token):
    client = app.test_client()
    assert client.get("/api/nothing-here").get_json()["error"] == "not_found"
    refused = client.delete("/api/campaigns", headers=bearer(token))
    assert (refused.status_code, refused.get_json()["error"]) == (405, "method_not_allowed")
    assert set(refused.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    assert set(client.get("/api/tokens").headers["Allow"].split(", ")) == {"OPTIONS", "POST"}
    assert client.get("/api/campaigns").get_json() == {
        "error": "unauthorized",
        "message": "valid credentials are required",
    }
    huge = client.post("/api/tokens", data=b"x" * 70000, headers={"Content-Type": "application/json"})
    assert huge.status_code == 413 and huge.get_json()["error"] == "payload_too_large"


def test_rest_requests_are_rate_limited_per_token(app, token):
    app.config["API_RATE_LIMIT"] = "3 per minute"
    client = app.test_client()
    answers = [client.get("/api/campaigns", headers=bearer(token)) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert [("Retry-After" in answer.headers) for answer in answers] == [False, False, False, True]
    limited = client.get("/api/campaigns", headers=bearer(token))
    assert limited.get_json()["error"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) > 0
    assert client.get("/healthz").status_code == 200


def test_tokens_are_minted_per_api_key_and_refused_keys_are_limited_per_address(app, cli, acme):
    app.config.update(TOKEN_RATE_LIMIT="3 per minute", TOKEN_FAILURE_RATE_LIMIT="2 per minute")
    keys = [cli("create-api-key", "acme"), cli("create-api-key", "globex")]
    client = app.test_client()

    def mint(key, address="10.0.0.1"):
        return client.post("/api/tokens", headers=bearer(key), environ_base={"REMOTE_ADDR": address})

    # One address (a customer's backend) mints for both keys: each key has its own budget.
    assert [mint(keys[0]).status_code for _ in range(4)] == [201, 201, 201, 429]
    assert [mint(keys[1]).status_code for _ in range(2)] == [201, 201]
    # Refused keys count per address: past the limit, that address gets 429s whatever it sends.
    assert [mint("wrong-key", "10.0.0.2").status_code for _ in range(2)] == [401, 401]
    refused = mint("another-wrong-key", "10.0.0.2")
    assert refused.status_code == 429 and refused.get_json()["error"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) > 0
    # ...but never a valid key that minted recently (behind a proxy, callers share the address)...
    assert mint(keys[1], "10.0.0.2").status_code == 201
    # ...and only that address: another one with a wrong key still gets its 401.
    assert mint("wrong-key", "10.0.0.3").status_code == 401


def test_made_up_keys_past_the_refusal_budget_cost_bounded_lookups(app, cli, acme):
    app.config.update(TOKEN_FAILURE_RATE_LIMIT="2 per minute")  # and 10 x 2 lookups past it
    minted, fresh, other = (cli("create-api-key", "acme") for _ in range(3))
    client = app.test_client()

    def mint(key):
        return client.post("/api/tokens", headers=bearer(key), environ_base={"REMOTE_ADDR": "10.0.1.1"})

    assert mint(minted).status_code == 201
    assert [mint(f"made-up-{n}").status_code for n in range(2)] == [401, 401]
    with app.app_context():
        engine = db.engine
    with statements_on(engine) as seen:
        # Past the budget a valid key is still served while lookups are left (a neighbour stuck on a
        # revoked key must not lock everyone behind the proxy out)...
        assert mint(fresh).status_code == 201
        assert {mint(f"made-up-{n}").status_code for n in range(2, 60)} == {429}
        # ...and made-up keys cost at most 10 lookups per refusal allowed: 20, then none.
        assert len([sql for sql in seen if "api_keys" in sql]) == 20
        seen.clear()
        # A key that minted here is still looked up (so a revoked one is refused at once)...
        assert mint(minted).status_code == 201
        assert [sql for sql in seen if "api_keys" in sql]
    # ...while a valid key new to this address waits out the window once the lookups are spent.
    assert mint(other).status_code == 429


def test_health_ready_and_metrics(app, token):
    client = app.test_client()
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    client.get("/api/campaigns", headers=bearer(token))
    scrape = client.get("/metrics")
    assert scrape.headers["Content-Type"].count("charset") == 1  # Prometheus refuses a repeated parameter
    text = scrape.get_data(as_text=True)
    assert 'campaign_live_http_requests_total{method="GET",route="/api/campaigns",status="200"}' in text
    assert "campaign_live_connected_clients" in text


def socket_client(app, token=None, flask_client=None, **auth):
    payload = {"token": token, **auth} if token else auth
    return SocketIOTestClient(app, socketio, auth=payload or None, flask_test_client=flask_client)


def refusals(reason):
    return metrics.connections_refused.labels(reason)._value.get()


def test_connections_per_tenant_are_capped(app, token):
    app.config["MAX_CONNECTIONS_PER_TENANT"] = 1
    first = socket_client(app, token)
    assert first.is_connected()
    before = refusals("too_many_connections")
    assert not socket_client(app, token).is_connected()
    assert refusals("too_many_connections") == before + 1
    first.disconnect()
    assert socket_client(app, token).is_connected()


def test_a_client_gone_while_its_connect_is_decided_leaves_no_ghost(app, token, monkeypatch):
    # python-socketio ignores a disconnect while the connect handler runs (prepare may wait on the
    # database for a replay), and then marks the client connected all the same.
    app.config["MAX_CONNECTIONS_PER_TENANT"] = 1
    decide = tenant_states.prepare
    gone = []

    def prepare_then_lose_the_client(*args):
        plan = decide(*args)
        (eio_sid,) = socketio.server.environ  # the one client, its websocket closed meanwhile
        gone.append(socketio.server.manager.sid_from_eio_sid(eio_sid, "/"))
        socketio.server._handle_eio_disconnect(eio_sid, "transport close")
        return plan

    monkeypatch.setattr(tenant_states, "prepare", prepare_then_lose_the_client)
    socket_client(app, token)
    monkeypatch.setattr(tenant_states, "prepare", decide)
    (sid,) = gone
    assert not socketio.server.manager.is_connected(sid, "/")
    assert socketio.server.manager.get_rooms(sid, "/") == []
    assert socket_client(app, token).is_connected()  # its tenant slot was freed


def test_a_tenant_reloaded_while_a_connect_is_decided_is_decided_again(app, token, monkeypatch):
    # A reload with the same epoch (reconciliation's reset) is no epoch change: the client that
    # asked for the updates after seq 3 gets them, not resync epoch_changed.
    first = socket_client(app, token)
    for seq in range(1, 6):
        tenant_states.receive(update(seq, campaign("c1", seq)))
    decide, reloaded = tenant_states.recovery, []

    def recovery_during_a_reload(*args):
        if not reloaded:
            reloaded.append(True)
            tenant_states.states["acme"] = copy.deepcopy(tenant_states.states["acme"])
        return decide(*args)

    monkeypatch.setattr(tenant_states, "recovery", recovery_during_a_reload)
    second = socket_client(app, token, last_seq=3)
    received = [(packet["name"], packet["args"][0].get("seq")) for packet in second.get_received()]
    assert received == [("campaign_snapshot", 5), ("campaign_update", 4), ("campaign_update", 5)]
    assert first.is_connected()


def test_a_client_that_floods_replay_is_slowed_then_disconnected(app, token):
    app.config["SOCKET_EVENT_BURST"], app.config["SOCKET_EVENT_RATE"] = 3, 0.001
    client = socket_client(app, token)
    answers = [client.emit("replay", {"after_seq": 0}, callback=True) for _ in range(4)]
    assert [a.get("ok", a.get("error")) for a in answers] == [True, True, True, "rate_limited"]
    for _ in range(30):
        if not client.is_connected():
            break
        client.emit("replay", {"after_seq": 0}, callback=True)
    assert not client.is_connected()


def test_clients_cannot_pick_rooms_or_fake_reserved_events(app, token):
    client = socket_client(app, token)
    counted = tenant_states.clients["acme"]
    for name in ("join", "join_room", "subscribe", "enter_room", "connect", "disconnect"):
        answer = client.emit(name, {"room": "tenant:globex", "token": token}, callback=True)
        assert answer["error"] == "unknown_event", name
    assert client.is_connected()
    assert client.emit("replay", {"after_seq": 0}, callback=True)["ok"] is True
    assert tenant_states.clients["acme"] == counted == 1


def test_the_admin_session_cookie_authenticates_a_socket(app, acme, store):
    user = User(email="ops@acme.com", tenant_id="acme")
    user.set_password("password1")
    store.add(user)
    store.commit()
    browser = app.test_client()
    with browser.session_transaction() as session:
        session["_user_id"] = str(user.id)
        session["_fresh"] = True
    client = socket_client(app, flask_client=browser)
    snapshot = next(p for p in client.get_received() if p["name"] == "campaign_snapshot")
    assert snapshot["args"][0]["seq"] == 0
    assert app.test_client().get("/api/campaigns").status_code == 401
    assert browser.get("/api/campaigns").status_code == 200
    before = refusals("unauthorized")
    assert not socket_client(app).is_connected()
    assert not socket_client(app, "garbage").is_connected()
    assert refusals("unauthorized") == before + 2


def test_a_connect_that_fails_unexpectedly_is_refused_not_half_accepted(app, token, monkeypatch):
    def broken(tenant_id, now, limit):
        raise RuntimeError("database went away")

    monkeypatch.setattr("campaigns.models.Campaign.live_set", broken)
    before = refusals("unavailable")
    client = socket_client(app, token)
    assert not client.is_connected()
    assert refusals("unavailable") == before + 1
    assert tenant_states.clients["acme"] == 0


def test_a_client_that_does_not_read_gets_no_more_replays(app, token, monkeypatch):
    client = socket_client(app, token)
    assert client.emit("replay", {"after_seq": 0}, callback=True)["ok"] is True

    class Backlog:
        def qsize(self):
            return sockets.handlers.REPLAY_BACKLOG_LIMIT + 1

    class Session:
        queue = Backlog()

    monkeypatch.setattr(sockets.handlers, "_engineio_session", lambda sid: Session())
    answer = client.emit("replay", {"after_seq": 0}, callback=True)
    assert answer == {"error": "rate_limited", "message": "read what was sent first"}
    assert client.is_connected()
