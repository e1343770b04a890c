"""JWTs that authenticate Socket.IO connections and REST calls (HS256, ``JWT_SECRET``)."""

import secrets
import time
from datetime import timedelta

import jwt

from campaigns.timeutil import utcnow

ALGORITHM = "HS256"
# Clock skew tolerated between the machine that minted a token and this one (``iat``, ``nbf``).
DEFAULT_LEEWAY_SECONDS = 30


class TokenError(Exception):
    """A token that does not authenticate; ``code`` is ``unauthorized`` or ``token_expired``."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


def mint_token(secret, tenant_id, subject, ttl_seconds):
    """A signed token for ``tenant_id`` valid ``ttl_seconds``."""
    now = utcnow()
    # jti: two tokens minted in the same second are still two credentials (connect throttle).
    claims = {
        "tenant": tenant_id,
        "sub": subject,
        "iat": now,
        "exp": now + timedelta(seconds=ttl_seconds),
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def decode_token(secret, token, leeway=DEFAULT_LEEWAY_SECONDS):
    """Verify a token and return its claims; raise ``TokenError`` when it does not hold.

    ``iat`` (and ``nbf``) are checked with ``leeway`` seconds of tolerance: a token minted by a
    backend whose clock runs a second ahead is valid at once, not a second later. ``exp`` has
    none: a token past its ``exp`` is ``token_expired`` (CONTRACT.md section 1), whoever minted it.
    """
    if not secret or not isinstance(token, str) or not token:
        raise TokenError("unauthorized")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "tenant"], "verify_sub": False},
            leeway=leeway,
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token_expired") from None
    except jwt.InvalidTokenError:
        raise TokenError("unauthorized") from None
    if claims["exp"] <= time.time():  # PyJWT checked it against now - leeway
        raise TokenError("token_expired")
    if not isinstance(claims.get("tenant"), str):
        raise TokenError("unauthorized")
    # ``sub`` only names the holder (logs): a token minted elsewhere without it, or with a number, is fine.
    claims["sub"] = str(claims.get("sub", "unknown"))
    return claims
