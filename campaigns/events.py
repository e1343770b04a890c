"""Validation of inbound campaign events against the contract (CONTRACT.md section 1).

``parse_event`` turns a raw AMQP body into a ``CampaignEvent`` or raises ``InvalidEvent``
whose ``reason`` goes into the dead-lettered message's ``x-rejection-reason`` header.
"""

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from campaigns.models import EVENT_TYPES

MAX_BODY_BYTES = 64 * 1024
TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
CAMPAIGN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})")
SHORT_TEXT = 200
MESSAGE_ID_MAX = 128
LONG_TEXT = 4096


class InvalidEvent(ValueError):
    """A message that breaks the contract; ``reason`` is ``"<code>: <detail>"``."""

    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.reason = f"{code}: {detail}"


@dataclass(frozen=True, slots=True)
class CampaignEvent:
    """One valid inbound event."""

    event_id: str
    type: str
    tenant_id: str
    campaign_id: str
    occurred_at: datetime
    data: dict = field(default_factory=dict)


def parse_event(body, routing_key=None):
    """Decode and validate one message body; raise ``InvalidEvent`` with a reason if it is bad."""
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    if len(body) > MAX_BODY_BYTES:
        raise InvalidEvent("too_large", f"{len(body)} bytes > {MAX_BODY_BYTES}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("invalid_encoding", f"body is not UTF-8 ({exc.reason})") from None
    try:
        document = json.loads(text)
    except RecursionError:
        raise InvalidEvent("invalid_json", "nested too deeply") from None
    except ValueError as exc:
        raise InvalidEvent("invalid_json", str(exc)[:200]) from None
    if not isinstance(document, dict):
        raise InvalidEvent("invalid_json", "body is not a JSON object")
    return validate_event(document, routing_key)


def validate_event(document, routing_key=None):
    """Validate a decoded event object; return a ``CampaignEvent``."""
    event_id = _required_string(document, "event_id", 128)
    kind = _required_string(document, "type", 64)
    if kind not in EVENT_TYPES:
        raise InvalidEvent("unknown_type", kind[:64])
    tenant_id = _required_string(document, "tenant_id", 64)
    if not TENANT_ID.fullmatch(tenant_id):
        raise InvalidEvent("invalid_field", "tenant_id does not match [a-z0-9][a-z0-9_-]{0,63}")
    campaign_id = _required_string(document, "campaign_id", 128)
    if not CAMPAIGN_ID.fullmatch(campaign_id):
        raise InvalidEvent("invalid_field", "campaign_id does not match the contract's pattern")
    occurred_at = parse_timestamp(_required_string(document, "occurred_at", 64))
    data = document.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidEvent("invalid_field", "data must be an object")
    if routing_key is not None and routing_key != f"{tenant_id}.{kind}":
        raise InvalidEvent("routing_key_mismatch", f"routing key {routing_key[:150]!r} is not {tenant_id}.{kind}")
    return CampaignEvent(event_id, kind, tenant_id, campaign_id, occurred_at, _validate_data(kind, data))


def parse_timestamp(text):
    """Parse an RFC 3339 timestamp with a time zone into an aware UTC datetime."""
    match = RFC3339.fullmatch(text)
    if not match:
        raise InvalidEvent("invalid_field", "occurred_at is not RFC 3339 with a time zone")
    day, clock, fraction, zone = match.groups()
    fraction = ((fraction or "") + "000000")[:6]
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:
        value = datetime.fromisoformat(f"{day}T{clock}.{fraction}{zone}")
    except ValueError:
        raise InvalidEvent("invalid_field", "occurred_at is not a real date and time") from None
    return value.astimezone(timezone.utc)


def is_integer(value):
    """True for a JSON integer (``True`` and ``False`` are ints in Python, not in JSON)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_data(kind, data):
    """Check the ``data`` fields a type needs; return only the fields the product uses."""
    if kind == "campaign_started":
        total = data.get("total_messages")
        if not is_integer(total) or not 0 <= total <= 2**31 - 1:
            raise InvalidEvent("invalid_field", "data.total_messages must be an integer >= 0")
        # A long name is cut to what the dashboard shows rather than losing the campaign's start.
        return {"name": _required_string(data, "name", LONG_TEXT, "data.")[:SHORT_TEXT], "total_messages": total}
    if kind == "campaign_paused":
        reason = data.get("reason")
        if reason is None:
            return {}
        if not isinstance(reason, str):
            raise InvalidEvent("invalid_field", "data.reason must be a string")
        return {"reason": _storable(reason, "data.reason")[:LONG_TEXT]}
    if kind == "campaign_failed":
        return {"error": _required_string(data, "error", 10**6, "data.")[:LONG_TEXT]}
    if kind in ("message_sent", "message_failed", "next_message_starting"):
        result = {"message_id": _required_string(data, "message_id", MESSAGE_ID_MAX, "data.")}
        if kind == "message_failed":
            result["error"] = _required_string(data, "error", 10**6, "data.")[:LONG_TEXT]
        if kind == "next_message_starting" and data.get("position") is not None:
            position = data["position"]
            if not is_integer(position) or position < 0:
                raise InvalidEvent("invalid_field", "data.position must be an integer >= 0")
            result["position"] = position
        return result
    return {}


def _required_string(document, name, max_length, prefix=""):
    """A required non-empty string field of at most ``max_length`` characters."""
    if name not in document or document[name] is None:
        raise InvalidEvent("missing_field", f"{prefix}{name}")
    value = document[name]
    if not isinstance(value, str):
        raise InvalidEvent("invalid_field", f"{prefix}{name} must be a string")
    if not value or len(value) > max_length:
        raise InvalidEvent("invalid_field", f"{prefix}{name} must be 1-{max_length} characters")
    return _storable(value, prefix + name)


def _storable(value, name):
    """Refuse text PostgreSQL cannot store: NUL characters and lone surrogates."""
    if "\x00" in value:
        raise InvalidEvent("invalid_field", f"{name} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent("invalid_field", f"{name} contains an unpaired surrogate") from None
    return value
