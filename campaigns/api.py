"""The REST API (CONTRACT.md section 3): tokens, campaigns, stored updates."""

import hashlib
import json
import time
from datetime import timedelta

from flask import Blueprint, Response, current_app, g, request
from limits import parse_many
from sqlalchemy import select

from campaigns import metrics
from campaigns.auth import AuthError, bearer_token, hash_api_key, identity_from_request, tenant_of_api_key
from campaigns.errors import ApiError
from campaigns.events import CAMPAIGN_ID
from campaigns.models import ACTIVE_STATUSES, Campaign, CampaignUpdate, Tenant
from campaigns.reason_counts import failure_reasons
from campaigns.stats import campaign_history
from campaigns.timeutil import utcnow
from campaigns.tokens import mint_token
from campaigns.updates import as_replayed
from extensions import db, limiter

bp = Blueprint("api", __name__)
STATUSES = (*ACTIVE_STATUSES, "completed", "failed", "cancelled")
EVENTS_LIMIT_MAX = 1000
EVENTS_LIMIT_DEFAULT = 100


def json_response(payload, status=200):
    """A compact JSON response."""
    return Response(json.dumps(payload, separators=(",", ":")), status=status, mimetype="application/json")


def caller():
    """The authenticated caller, or a 401."""
    try:
        return identity_from_request()
    except AuthError as exc:
        message = "the token has expired" if exc.code == "token_expired" else "valid credentials are required"
        raise ApiError(401, exc.code, message) from None


def query_arg(name):
    """The query string's one value of ``name`` (None when absent), or a 400 when it is repeated.

    ``?after_seq=1&after_seq=900`` is ambiguous: Werkzeug would quietly take the first value,
    a proxy or another framework the last.
    """
    values = request.args.getlist(name)
    if len(values) > 1:
        raise ApiError(400, "bad_request", f"{name} must be given at most once")
    return values[0] if values else None


def json_body():
    """The request's JSON body (None when empty or not JSON), or a 413 past ``MAX_CONTENT_LENGTH``.

    A chunked body has no Content-Length to refuse up front: Werkzeug reads it up to the limit
    and stops there without a word, so a body that fills the limit is taken as too large.
    """
    data = request.get_data(cache=True)
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and limit is not None and len(data) >= limit:
        raise ApiError(413, "payload_too_large", f"the body is larger than {limit} bytes")
    return request.get_json(silent=True, force=True) if data else None


def int_arg(name, default, maximum=None):
    """A query-string integer >= 0 (at most ``maximum``), or a 400."""
    raw = query_arg(name)
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
    if not raw or not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise ApiError(400, "bad_request", f"{name} must be an integer from 0 to 10^18 - 1")
    value = int(raw)
    if maximum is not None and value > maximum:
        raise ApiError(400, "bad_request", f"{name} must be at most {maximum}")
    return value


def get_campaign_or_404(tenant_id, campaign_id):
    """The tenant's campaign, or a 404 (also for other tenants' campaigns: ids do not leak)."""
    if not CAMPAIGN_ID.fullmatch(campaign_id):  # no campaign has such an id (and NUL breaks PostgreSQL)
        raise ApiError(404, "not_found", "no such campaign")
    campaign = db.session.get(Campaign, (tenant_id, campaign_id))
    if campaign is None:
        raise ApiError(404, "not_found", "no such campaign")
    return campaign


def rate_limit_key():
    """Rate limits count per credential: the bearer token, else the session user, else the address."""
    token = bearer_token()
    if token:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    user = request.cookies.get(current_app.config.get("SESSION_COOKIE_NAME", "session"))
    return "session:" + hashlib.sha256(user.encode()).hexdigest()[:32] if user else "ip:" + (request.remote_addr or "")


REFUSED_KEY_SCOPE = "refused-api-key"
LOOKUPS_PER_REFUSAL = 10
RECENT_KEY_SECONDS = 600
RECENT_KEYS_MAX = 10_000
recent_keys = {}  # hash of an API key that minted here -> monotonic time it last did


def refused_key_address():
    """The per-address counter of refused API keys."""
    return "refused-key:" + (request.remote_addr or "")


def refusal_budget_left(counter, per_refusal=1, spend=False):
    """Whether ``counter`` (this address's) is within ``per_refusal`` times the refused-key limit;
    ``spend`` counts this request against it."""
    prefix = getattr(limiter, "_key_prefix", "")
    check = limiter.limiter.hit if spend else limiter.limiter.test
    return all(
        check(
            type(limit)(limit.amount * per_refusal, limit.multiples),
            *([prefix] if prefix else []),
            counter,
            REFUSED_KEY_SCOPE,
        )
        for limit in parse_many(current_app.config["TOKEN_FAILURE_RATE_LIMIT"])
    )


def minted_recently(key_hash):
    """Whether this API key minted a token from this process in the last ``RECENT_KEY_SECONDS``."""
    seen = recent_keys.get(key_hash)
    return seen is not None and time.monotonic() - seen < RECENT_KEY_SECONDS


def remember_minting(key_hash):
    """Note that this API key minted (the oldest notes go first past ``RECENT_KEYS_MAX``)."""
    recent_keys.pop(key_hash, None)
    recent_keys[key_hash] = time.monotonic()
    while len(recent_keys) > RECENT_KEYS_MAX:
        del recent_keys[next(iter(recent_keys))]


def may_look_up(key):
    """Whether this request's API key may cost a database lookup.

    Within the address's budget of refused keys, always. Past it, a key that minted here
    recently, and others only within ``LOOKUPS_PER_REFUSAL`` times that budget: a service
    stuck on a revoked key does not lock its neighbours behind one proxy out, and a flood of
    made-up keys costs a bounded number of lookups per address and window."""
    address = refused_key_address()
    return (
        refusal_budget_left(address)
        or minted_recently(hash_api_key(key))
        or refusal_budget_left("lookup:" + address, LOOKUPS_PER_REFUSAL, spend=True)
    )


def presented_tenant():
    """The tenant of the API key this request presents, or None (looked up once per request)."""
    if "api_key_tenant" not in g:
        key = bearer_token()
        g.api_key_tenant = tenant_of_api_key(key) if key and may_look_up(key) else None
    return g.api_key_tenant


# Minting is limited per API key (a customer's backend mints for all its users from one address),
# and refused keys per address: 401s count, and past the limit that address gets 429s, except for
# a valid key (behind a proxy every caller may share one address) that ``may_look_up`` allows.
@bp.post("/tokens")
@limiter.limit(lambda: current_app.config["TOKEN_RATE_LIMIT"], key_func=rate_limit_key)
@limiter.shared_limit(
    lambda: current_app.config["TOKEN_FAILURE_RATE_LIMIT"],
    scope=REFUSED_KEY_SCOPE,
    key_func=refused_key_address,
    deduct_when=lambda response: response.status_code == 401,
    exempt_when=lambda: presented_tenant() is not None,
)
def create_token():
    """Exchange a tenant API key for a JWT; an optional JSON ``{"sub": ...}`` names the holder."""
    # The contract defines no body: one that is not a JSON object with a usable "sub" is ignored.
    # (Read first: an oversized body is a 413 whatever the credentials.)
    body = json_body()
    tenant_id = presented_tenant()
    if tenant_id is None:
        raise ApiError(401, "unauthorized", "a valid tenant API key is required")
    subject = body.get("sub") if isinstance(body, dict) else None
    if not isinstance(subject, str) or not 0 < len(subject) <= 200:
        subject = "api-key"
    ttl = current_app.config["JWT_TTL_SECONDS"]
    token = mint_token(current_app.config["JWT_SECRET"], tenant_id, subject, ttl)
    remember_minting(hash_api_key(bearer_token()))
    return json_response({"token": token, "expires_in": ttl, "tenant": tenant_id}, 201)


@bp.get("/campaigns")
def list_campaigns():
    """The snapshot's set of campaigns, with an ETag so that polling is nearly free."""
    identity = caller()
    status = query_arg("status")
    if status is not None and status not in STATUSES:
        raise ApiError(400, "bad_request", f"status must be one of {', '.join(STATUSES)}")
    body = json.dumps(Campaign.snapshot(identity.tenant_id, status), separators=(",", ":"))
    response = Response(body, mimetype="application/json")
    response.set_etag(hashlib.sha256(body.encode()).hexdigest()[:32])
    response.headers["Cache-Control"] = "private, no-cache"
    return response.make_conditional(request)


@bp.get("/campaigns/<campaign_id>")
def show_campaign(campaign_id):
    """One campaign with its recent failures, its failures by reason and its event timeline."""
    identity = caller()
    campaign = get_campaign_or_404(identity.tenant_id, campaign_id)
    history = campaign_history(identity.tenant_id, campaign_id)
    reasons = failure_reasons(identity.tenant_id, campaign_id)
    return json_response({**campaign.to_dict(), **history, "failure_reasons": reasons})


@bp.get("/events")
def list_events():
    """Stored updates after ``after_seq`` (oldest first), for clients that saw a ``seq`` gap."""
    identity = caller()
    after_seq = int_arg("after_seq", 0)
    limit = int_arg("limit", EVENTS_LIMIT_DEFAULT, EVENTS_LIMIT_MAX)
    not_before = utcnow() - timedelta(seconds=current_app.config["EVENT_RETENTION_SECONDS"])
    expired = CampaignUpdate.history_expired(identity.tenant_id, after_seq, not_before)
    events = [as_replayed(p) for p in CampaignUpdate.after(identity.tenant_id, after_seq, limit, not_before)]
    seq = db.session.scalar(select(Tenant.last_seq).where(Tenant.id == identity.tenant_id))
    metrics.replayed_updates.labels("rest").inc(len(events))
    payload = {"events": events, "seq": seq}
    if expired:
        payload["history_expired"] = True
    return json_response(payload)


@bp.after_app_request
def count_request(response):
    """Count every HTTP request by route rule and status (bounded labels)."""
    rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
    if not rule.startswith("/socket.io"):
        metrics.http_requests.labels(request.method, rule, str(response.status_code)).inc()
    return response


def apply_rate_limits():
    """Every API route except token minting counts against the caller's per-credential limit."""
    limiter.limit(
        lambda: current_app.config["API_RATE_LIMIT"],
        key_func=rate_limit_key,
        exempt_when=lambda: request.endpoint == "api.create_token",
    )(bp)


apply_rate_limits()
