"""JWT validation: clock skew between the minting machine and the server."""

from datetime import timedelta

import jwt
import pytest

from campaigns.timeutil import utcnow
from campaigns.tokens import TokenError, decode_token
from tests.support import JWT_SECRET


def minted_by_a_clock(offset_seconds, ttl_seconds=3600):
    """A token minted on a machine whose clock is ``offset_seconds`` off ours."""
    now = utcnow() + timedelta(seconds=offset_seconds)
    claims = {"tenant": "acme", "sub": "skewed", "iat": now, "exp": now + timedelta(seconds=ttl_seconds)}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


@pytest.mark.parametrize("offset", [1, 10, 29])
def test_a_token_from_a_clock_ahead_within_the_leeway_is_accepted(offset):
    assert decode_token(JWT_SECRET, minted_by_a_clock(offset), leeway=30)["tenant"] == "acme"


def test_a_token_from_a_clock_too_far_ahead_is_refused():
    with pytest.raises(TokenError) as refused:
        decode_token(JWT_SECRET, minted_by_a_clock(120), leeway=30)
    assert refused.value.code == "unauthorized"


@pytest.mark.parametrize("expired_for", [1, 25, 40])
def test_a_token_past_its_exp_is_expired_whatever_the_leeway(expired_for):
    # The leeway is for clocks ahead (iat); CONTRACT.md section 1: past exp is token_expired.
    token = minted_by_a_clock(-3600 - expired_for)
    with pytest.raises(TokenError) as refused:
        decode_token(JWT_SECRET, token, leeway=30)
    assert refused.value.code == "token_expired"


def test_a_token_just_before_its_exp_is_accepted():
    assert decode_token(JWT_SECRET, minted_by_a_clock(-3590), leeway=30)["sub"] == "skewed"


def test_the_server_applies_jwt_leeway_seconds(app, store):
    from campaigns.models import Tenant

    store.add(Tenant(id="acme", name="Acme"))
    store.commit()
    client = app.test_client()
    ahead = {"Authorization": f"Bearer {minted_by_a_clock(2)}"}
    assert app.config["JWT_LEEWAY_SECONDS"] == 30
    assert client.get("/api/campaigns", headers=ahead).status_code == 200
    app.config["JWT_LEEWAY_SECONDS"] = 0
    assert client.get("/api/campaigns", headers=ahead).get_json()["error"] == "unauthorized"
