"""Validation of inbound events against CONTRACT.md section 1."""

import json
from datetime import datetime, timezone

import pytest

from campaigns.events import MAX_BODY_BYTES, InvalidEvent, parse_event


def body(**overrides):
    event = {
        "event_id": "e-1",
        "type": "message_sent",
        "tenant_id": "acme",
        "campaign_id": "black-friday-2026",
        "occurred_at": "2026-11-25T12:00:00.123Z",
        "data": {"message_id": "m-000123"},
    }
    event.update(overrides)
    return json.dumps({k: v for k, v in event.items() if v is not ...}).encode()


def test_valid_event_is_parsed_with_utc_time():
    event = parse_event(body(), "acme.message_sent")
    assert (event.event_id, event.type, event.tenant_id, event.campaign_id) == (
        "e-1",
        "message_sent",
        "acme",
        "black-friday-2026",
    )
    assert event.occurred_at == datetime(2026, 11, 25, 12, 0, 0, 123000, tzinfo=timezone.utc)
    assert event.data == {"message_id": "m-000123"}


def test_offsets_are_converted_to_utc():
    event = parse_event(body(occurred_at="2026-11-25T09:00:00-03:00"))
    assert event.occurred_at == datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b"\xff\xfe{}", "invalid_encoding"),
        (b"[" * 20000 + b"]" * 20000, "invalid_json"),
        (b'{"a": "' + b"x" * MAX_BODY_BYTES + b'"}', "too_large"),
        (body(event_id=...), "missing_field"),
        (body(event_id=""), "invalid_field"),
        (body(event_id="x" * 129), "invalid_field"),
        (body(event_id=7), "invalid_field"),
        (body(type="message_exploded"), "unknown_type"),
        (body(type=...), "missing_field"),
        (body(tenant_id="Acme"), "invalid_field"),
        (body(tenant_id="-acme"), "invalid_field"),
        (body(tenant_id="a" * 65), "invalid_field"),
        (body(campaign_id="bad id"), "invalid_field"),
        (body(campaign_id="x\n"), "invalid_field"),
        (body(occurred_at="2026-11-25T12:00:00"), "invalid_field"),
        (body(occurred_at="2026-11-25"), "invalid_field"),
        (body(occurred_at="2026-13-45T12:00:00Z"), "invalid_field"),
        (body(occurred_at=1764072000), "invalid_field"),
        (body(data=[1]), "invalid_field"),
        (body(data={}), "missing_field"),
        (body(data={"message_id": 5}), "invalid_field"),
        (body(data={"message_id": "m\u0000"}), "invalid_field"),
        (body(data={"message_id": "\ud800"}), "invalid_field"),
        (body(type="message_failed", data={"message_id": "m"}), "missing_field"),
        (body(type="campaign_started", data={"name": "x"}), "invalid_field"),
        (body(type="campaign_started", data={"name": "x", "total_messages": -1}), "invalid_field"),
        (body(type="campaign_started", data={"name": "x", "total_messages": True}), "invalid_field"),
        (body(type="campaign_started", data={"name": "x", "total_messages": 1.5}), "invalid_field"),
        (body(type="campaign_started", data={"total_messages": 3}), "missing_field"),
        (body(type="campaign_failed", data={}), "missing_field"),
        (body(type="campaign_paused", data={"reason": 3}), "invalid_field"),
        (body(type="next_message_starting", data={"message_id": "m", "position": "1"}), "invalid_field"),
    ],
    ids=lambda value: value if isinstance(value, str) else repr(value)[:40],
)
def test_bad_messages_are_refused_with_a_reason(raw, code):
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw)
    assert caught.value.code == code
    assert caught.value.reason.startswith(code + ": ")


def test_routing_key_must_match_the_body():
    with pytest.raises(InvalidEvent) as caught:
        parse_event(body(), "other.message_sent")
    assert caught.value.code == "routing_key_mismatch"


@pytest.mark.parametrize(
    ("kind", "data", "expected"),
    [
        (
            "campaign_started",
            {"name": "Black Friday", "total_messages": 10, "x": 1},
            {"name": "Black Friday", "total_messages": 10},
        ),
        (
            "campaign_started",
            {"name": "N" * 300, "total_messages": 1},
            {"name": "N" * 200, "total_messages": 1},
        ),
        ("campaign_paused", {}, {}),
        ("campaign_paused", {"reason": "night"}, {"reason": "night"}),
        ("campaign_resumed", {"anything": 1}, {}),
        ("campaign_failed", {"error": "quota"}, {"error": "quota"}),
        ("message_failed", {"message_id": "m1", "error": "e" * 5000}, {"message_id": "m1", "error": "e" * 4096}),
        ("next_message_starting", {"message_id": "m2", "position": 7}, {"message_id": "m2", "position": 7}),
    ],
)
def test_data_keeps_the_fields_of_its_type(kind, data, expected):
    assert parse_event(body(type=kind, data=data)).data == expected


def test_missing_data_is_an_empty_object_for_types_without_fields():
    assert parse_event(body(type="campaign_completed", data=...)).data == {}
