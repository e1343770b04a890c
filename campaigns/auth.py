"""Who is calling: API keys, JWTs and admin-page sessions, reduced to one ``Identity``."""

import hashlib
import secrets
from dataclasses import dataclass

from flask import current_app, request, session
from flask_login import current_user
from sqlalchemy import select

from campaigns.models import ApiKey, Tenant
from campaigns.tokens import TokenError, decode_token
from extensions import db

API_KEY_PREFIX = "clk_"


@dataclass(frozen=True)
class Identity:
    """A caller bound to exactly one tenant; everything it sees is scoped to ``tenant_id``."""

    tenant_id: str
    subject: str


class AuthError(Exception):
    """Credentials missing or wrong; ``code`` is ``unauthorized`` or ``token_expired``."""

    def __init__(self, code="unauthorized"):
        super().__init__(code)
        self.code = code


def hash_api_key(key):
    """The stored form of an API key (keys are random, so a plain SHA-256 is enough)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def create_api_key(tenant_id):
    """Store a new API key for a tenant; return the key, which is never stored in clear."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    db.session.add(ApiKey(tenant_id=tenant_id, key_hash=hash_api_key(key), prefix=key[:12]))
    db.session.commit()
    return key


def tenant_of_api_key(key):
    """The tenant id an API key belongs to, or None (unknown, revoked or tenant deleted)."""
    query = (
        select(ApiKey.tenant_id)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None))
    )
    return db.session.scalar(query)


def identity_from_token(token, tenant_exists=None):
    """The identity in a JWT whose tenant still exists; raise ``AuthError`` otherwise.

    ``tenant_exists(tenant_id)`` answers instead of a query when given (the socket server
    knows the tenants it holds).
    """
    try:
        claims = decode_token(current_app.config["JWT_SECRET"], token, current_app.config["JWT_LEEWAY_SECONDS"])
    except TokenError as exc:
        raise AuthError(exc.code) from None
    exists = tenant_exists or (lambda tenant_id: db.session.get(Tenant, tenant_id) is not None)
    if not exists(claims["tenant"]):
        raise AuthError()
    return Identity(claims["tenant"], claims["sub"])


def active_tenant_of(user):
    """The tenant a logged-in user looks at: their own, or the one a platform admin chose."""
    if user.is_admin:
        chosen = session.get("tenant_id")
        if chosen and db.session.get(Tenant, chosen) is not None:
            return chosen
        if user.tenant_id:
            return user.tenant_id
        return db.session.scalar(select(Tenant.id).order_by(Tenant.id).limit(1))
    return user.tenant_id


def identity_from_session():
    """The identity of a user logged in to the admin pages, or None."""
    if not current_user or not current_user.is_authenticated:
        return None
    tenant_id = active_tenant_of(current_user)
    return Identity(tenant_id, f"user:{current_user.id}") if tenant_id else None


def bearer_token():
    """The token of an ``Authorization: Bearer`` header, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def identity_from_request():
    """The caller of a REST request: a Bearer JWT, else the admin-page session."""
    token = bearer_token()
    if token is not None:
        return identity_from_token(token)
    identity = identity_from_session()
    if identity is None:
        raise AuthError()
    return identity
