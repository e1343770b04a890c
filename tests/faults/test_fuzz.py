"""Thousands of hostile messages, mixed with valid ones, published raw at a running worker.

Hypothesis generates the messages (collected first, then published once with publisher
confirms, since publishing per example would be slow). Each generated message says what
it must become: applied (valid, possibly with hostile but ignorable content) or
dead-lettered with a given reason code (the expectations are written from the contract,
not computed by the product's validator). The worker must never stop.
"""

import json
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from campaigns.queues import DEAD_LETTER_QUEUE, REJECTION_HEADER, dead_letter_queue
from tests import support
from tests.faults.helpers import (
    applied_count,
    queue_ready,
    queue_state,
    report,
)
from tests.support import wait_until

MESSAGES = 2000
VARIANTS = 2  # messages built from each Hypothesis example (Hypothesis's own cost is per example)
MAX_BODY = 64 * 1024
QUEUE = "campaign.events.worker"
# The contract's types and what their data needs (CONTRACT.md section 1).
STATUS_TYPES = ["campaign_started", "campaign_paused", "campaign_resumed", "campaign_completed"]
STATUS_TYPES += ["campaign_failed", "campaign_cancelled"]
PROGRESS_TYPES = ["message_sent", "message_failed", "next_message_starting"]
TYPES = STATUS_TYPES + PROGRESS_TYPES
CAMPAIGNS = ["fz-a", "fz-b", "fz.c:1", "FZ_d-2"]

# Text PostgreSQL can store: no NUL, no lone surrogate.
clean_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40)
timestamps = st.sampled_from(
    [
        "2026-11-25T12:00:00Z",
        "2026-11-25T12:00:00.123Z",
        "2026-11-25t12:00:00.123456789z",
        "2026-11-25 12:00:00+05:30",
        "2026-11-25T12:00:00.5-03:00",
    ]
)


@st.composite
def valid_event(draw, tenants):
    """A valid event of any type (its ``event_id`` is made unique when the batch is built)."""
    kind = draw(st.sampled_from(TYPES))
    data = {}
    if kind == "campaign_started":
        data = {"name": draw(clean_text), "total_messages": draw(st.integers(0, 2**31 - 1))}
    elif kind == "campaign_paused" and draw(st.booleans()):
        data = {"reason": draw(clean_text)}
    elif kind == "campaign_failed":
        data = {"error": draw(clean_text)}
    elif kind in PROGRESS_TYPES:
        data = {"message_id": draw(clean_text)}
        if kind == "message_failed":
            data["error"] = draw(clean_text)
        if kind == "next_message_starting" and draw(st.booleans()):
            data["position"] = draw(st.integers(0, 10**9))
    return {
        "event_id": draw(clean_text),
        "type": kind,
        "tenant_id": draw(st.sampled_from(tenants)),
        "campaign_id": draw(st.sampled_from(CAMPAIGNS)),
        "occurred_at": draw(timestamps),
        "data": data,
    }


def nested(depth):
    """JSON text of a list nested ``depth`` deep."""
    return "[" * depth + "]" * depth


@st.composite
def good_message(draw, tenants):
    """A valid event, sometimes with hostile content the contract lets a worker ignore."""
    document = draw(valid_event(tenants))
    extras = draw(st.sampled_from(["none", "unknown_fields", "padding", "shallow_nesting", "nul_and_surrogate"]))
    spacing = draw(st.sampled_from(["", " \n\t"]))
    if document["type"] in ("campaign_resumed", "campaign_completed", "campaign_cancelled") and draw(st.booleans()):
        document["data"] = draw(st.sampled_from([None, "absent"]))
        if document["data"] == "absent":
            del document["data"]
    return {"good": True, "document": document, "extras": extras, "spacing": spacing, "size": draw(st.integers(1, 50))}


BAD_KINDS = {
    "not_json": "invalid_json",
    "empty_body": "invalid_json",
    "bom": "invalid_json",
    "non_object": "invalid_json",
    "too_deep": "invalid_json",
    "invalid_utf8": "invalid_encoding",
    "too_large": "too_large",
    "huge_event_id": "too_large",
    "missing_field": "missing_field",
    "null_field": "missing_field",
    "wrong_type": "invalid_field",
    "long_event_id": "invalid_field",
    "data_not_object": "invalid_field",
    "bad_tenant_pattern": "invalid_field",
    "bad_campaign_pattern": "invalid_field",
    "no_zone": "invalid_field",
    "impossible_date": "invalid_field",
    "nul_in_field": "invalid_field",
    "surrogate_in_field": "invalid_field",
    "bad_data_field": "invalid_field",
    "missing_data_field": "missing_field",
    "unknown_type": "unknown_type",
    "unknown_tenant": "unknown_tenant",
    "wrong_routing_key": "routing_key_mismatch",
}


@st.composite
def bad_message(draw, tenants):
    """A message that breaks one rule of the contract, with the reason code it must get."""
    kind = draw(st.sampled_from(sorted(BAD_KINDS)))
    return {
        "good": False,
        "kind": kind,
        "code": BAD_KINDS[kind],
        "document": draw(valid_event(tenants)),
        "text": draw(st.text(max_size=30)),
        "other": draw(st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.lists(st.integers()))),
        "size": draw(st.integers(0, 40_000)),
        "pick": draw(st.integers(0, 1000)),
    }


def messages(tenants):
    """Two bad messages for one good one."""
    return st.integers(0, 2).flatmap(lambda n: good_message(tenants) if n == 0 else bad_message(tenants))


def collect(tenants, count):
    """``count`` messages from Hypothesis (generation only: they are published afterwards)."""
    drawn = []

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(messages(tenants))
    def gather(message):
        drawn.append(message)

    gather()
    variants = []
    for message in drawn:
        for variant in range(VARIANTS):
            # Another event of the same recipe; for a bad one, another way to break the same rule.
            variants.append({**message, "pick": message.get("pick", 0) + variant} if not message["good"] else message)
    return variants


def dumps(document, ascii_only=True):
    return json.dumps(document, ensure_ascii=ascii_only)


def build_good(number, message):
    """``(body, routing_key, document)`` of a valid message."""
    document = dict(message["document"])
    document["event_id"] = f"{number}:{document['event_id']}"[:128]
    extras = message["extras"]
    if extras == "unknown_fields":
        document["x-extra"] = {"nested": [1, 2.5, None, True], "text": "ça va 🚀"}
        if isinstance(document.get("data"), dict):
            document["data"] = {**document["data"], "unused": list(range(message["size"]))}
    elif extras == "padding":
        document["padding"] = "p" * (MAX_BODY - 2048)  # close to the limit, still under it
    elif extras == "shallow_nesting":
        document["deep"] = json.loads(nested(message["size"]))
    body = dumps(document)
    if extras == "nul_and_surrogate":
        # Ignored fields may hold what PostgreSQL could not store: the worker drops them.
        body = body[:-1] + ', "ignored": "nul \\u0000 and lone \\ud800 surrogate"}'
    body = message["spacing"] + body + message["spacing"]
    return body.encode("utf-8"), f"{document['tenant_id']}.{document['type']}", document


def build_bad(number, message, tenants):
    """``(body, routing_key)`` of a message that breaks the rule ``message["kind"]``."""
    kind = message["kind"]
    document = dict(message["document"])
    document["event_id"] = f"bad-{number}-{document['event_id']}"[:128]
    routing_key = f"{document['tenant_id']}.{document['type']}"
    required = ["event_id", "type", "tenant_id", "campaign_id", "occurred_at"]
    field = required[message["pick"] % len(required)]
    if kind == "not_json":
        return f"not json {number} {message['text']}".encode(), routing_key
    if kind == "empty_body":
        return b"", routing_key
    if kind == "bom":
        return "\ufeff".encode() + dumps(document).encode(), routing_key
    if kind == "non_object":
        value = [message["other"], None, "[]", message["text"]][message["pick"] % 4]
        return dumps(value).encode(), routing_key
    if kind == "too_deep":
        document["data"] = "DEEP"
        return dumps(document).replace('"DEEP"', nested(3000 + message["size"] % 20_000)).encode(), routing_key
    if kind == "invalid_utf8":
        raw = dumps(document).encode()
        invalid = [b"\xff", b"\xc3\x28", b"\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"][message["pick"] % 5]
        cut = raw.index(b'"event_id"')
        return raw[:cut] + b'"junk": "' + invalid + b'", ' + raw[cut:], routing_key
    if kind == "too_large":
        document["padding"] = "x" * (MAX_BODY + 1 + message["size"])
    elif kind == "huge_event_id":
        document["event_id"] = "e" * (MAX_BODY + 1 + message["size"])
    elif kind == "missing_field":
        del document[field]
    elif kind == "null_field":
        document[field] = None
    elif kind == "wrong_type":
        document[field] = message["other"]
    elif kind == "long_event_id":
        document["event_id"] = f"{number}-" + "L" * (129 + message["size"] % 50_000)
    elif kind == "data_not_object":
        document["data"] = [message["other"], "data must be an object"][message["pick"] % 2]
    elif kind == "bad_tenant_pattern":
        document["tenant_id"] = ["UPPER", "has space", "-lead", "é", "a" * 65, "semi;colon"][message["pick"] % 6]
        routing_key = f"{document['tenant_id']}.{document['type']}"
    elif kind == "bad_campaign_pattern":
        document["campaign_id"] = ["-lead", "has space", "slash/", ".dot", "c" * 129, "ü"][message["pick"] % 6]
    elif kind == "no_zone":
        document["occurred_at"] = ["2026-11-25T12:00:00", "2026-11-25T12:00:00.123", "2026-11-25", "12:00:00Z"][
            message["pick"] % 4
        ]
    elif kind == "impossible_date":
        document["occurred_at"] = ["2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-11-25T25:00:00Z"][
            message["pick"] % 3
        ]
    elif kind in ("nul_in_field", "surrogate_in_field"):
        poison = "\x00" if kind == "nul_in_field" else "\ud800"
        target = ["event_id", "occurred_at"][message["pick"] % 2]
        document[target] = f"{document[target]}{poison}"
        # json.dumps writes both as \u escapes: the body itself is valid UTF-8.
    elif kind == "bad_data_field":
        return _bad_data(document, message)
    elif kind == "missing_data_field":
        return _missing_data(document, message)
    elif kind == "unknown_type":
        document["type"] = f"x_{message['pick']}_{''.join(c for c in message['text'] if c.isalnum())}"[:40]
        routing_key = f"{document['tenant_id']}.{document['type']}"
    elif kind == "unknown_tenant":
        document["tenant_id"] = f"ghost-{message['pick']}"
        routing_key = f"{document['tenant_id']}.{document['type']}"
    elif kind == "wrong_routing_key":
        routing_key = [
            f"{document['tenant_id']}.{'message_sent' if document['type'] != 'message_sent' else 'message_failed'}",
            f"{tenants[0] if document['tenant_id'] != tenants[0] else tenants[1]}.{document['type']}",
            "",
            "#",
            f"{document['tenant_id']}.{document['type']}.extra",
        ][message["pick"] % 5]
    return dumps(document).encode(), routing_key


def _bad_data(document, message):
    """A data field of the wrong type or size (with a ``type`` that checks that field)."""
    pick = message["pick"]
    choice = pick % 5
    if choice == 0:
        document.update(
            type="campaign_started", data={"name": "n", "total_messages": ["-1", -1, True, 1.5, 2**31][pick % 5]}
        )
    elif choice == 1:
        document.update(
            type="next_message_starting", data={"message_id": "m", "position": ["3", -1, False, 2.5][pick % 4]}
        )
    elif choice == 2:
        document.update(type="message_sent", data={"message_id": [1, {}, [], "m" * 129][pick % 4]})
    elif choice == 3:
        # An empty or non-string name (a long one is cut to 200 characters, not refused).
        document.update(type="campaign_started", data={"name": ["", 7, {}][pick % 3], "total_messages": 1})
    else:
        document.update(type="campaign_paused", data={"reason": ["x\x00", 5][pick % 2]})
    return dumps(document).encode(), f"{document['tenant_id']}.{document['type']}"


def _missing_data(document, message):
    """A data field the type needs is missing."""
    choice = message["pick"] % 4
    if choice == 0:
        document.update(type="message_sent", data={})
    elif choice == 1:
        document.update(type="message_failed", data={"message_id": "m"})
    elif choice == 2:
        document.update(type="campaign_failed", data={})
    else:
        document.update(type="campaign_started", data={"total_messages": 3})
    return dumps(document).encode(), f"{document['tenant_id']}.{document['type']}"


@pytest.fixture
def stack(database, vhost, tmp_path):
    with support.Stack(database, vhost, tmp_path, LOG_LEVEL="WARNING") as stack:
        yield stack


def test_hostile_messages_are_dead_lettered_and_valid_ones_applied_without_stopping_the_worker(stack):
    tenants = [stack.create_tenant() for _ in range(2)]
    worker = stack.start_worker(wait=False)
    wait_until(lambda: _consumers(stack) == 1, 30, 0.05, f"the worker to consume\n{worker.log()[-2000:]}")
    generated_at = time.monotonic()
    drawn = collect(tenants, MESSAGES // VARIANTS)
    generate_seconds = time.monotonic() - generated_at

    good, bad, expected, order = [], [], {}, []
    for number, message in enumerate(drawn):
        if message["good"]:
            body, routing_key, document = build_good(number, message)
            good.append((body, routing_key))
            order.append((body, routing_key))
            counts = expected.setdefault(
                (document["tenant_id"], document["campaign_id"]), {"sent": 0, "failed": 0, "version": 0}
            )
            counts["version"] += 1
            counts["sent"] += document["type"] == "message_sent"
            counts["failed"] += document["type"] == "message_failed"
        else:
            body, routing_key = build_bad(number, message, tenants)
            bad.append((body, routing_key, message["code"], message["kind"]))
            order.append((body, routing_key))
    published_at = time.monotonic()
    with stack.publisher() as publisher:
        for body, routing_key in order:  # as drawn: good and bad mixed
            publisher.publish_raw(body, routing_key, content_type="application/json")
    publish_seconds = time.monotonic() - published_at

    wait_until(lambda: applied_count(stack) >= len(good), 120, 0.1, f"{len(good)} valid events applied")
    wait_until(
        lambda: queue_ready(stack.broker_url, DEAD_LETTER_QUEUE) >= len(bad), 120, 0.1, f"{len(bad)} dead letters"
    )
    wait_until(lambda: queue_state(stack.broker_url, QUEUE)[0] == 0, 30, 0.1, "an empty worker queue")
    dead_count = queue_ready(stack.broker_url, DEAD_LETTER_QUEUE)
    letters = support.consume(stack.broker_url, dead_letter_queue, dead_count, 30)
    processed_seconds = time.monotonic() - published_at
    found = Counter((body, str(headers.get(REJECTION_HEADER, "")).split(":")[0]) for headers, body in letters)
    wanted = Counter((body, code) for body, _, code, _ in bad)
    campaigns = {
        (tenant, campaign): {"sent": sent, "failed": failed, "version": version}
        for tenant, campaign, sent, failed, version in stack.sql(
            "SELECT tenant_id, id, sent, failed, version FROM campaigns"
        )
    }
    report(
        "fuzz: hostile messages",
        published=len(good) + len(bad),
        applied=applied_count(stack),
        lost=max(len(good) - applied_count(stack), 0) + sum((wanted - found).values()),
        duplicated=sum(max(c["version"] - expected.get(k, {"version": 0})["version"], 0) for k, c in campaigns.items()),
        recovery_seconds=None,
        good=len(good),
        bad=len(bad),
        dead_lettered=len(letters),
        bad_kinds=dict(Counter(kind for _, _, _, kind in bad)),
        generate_seconds=generate_seconds,
        publish_seconds=publish_seconds,
        processed_seconds=processed_seconds,
    )
    assert worker.alive(), worker.log()[-3000:]
    assert stack.workers == [worker]
    assert all(REJECTION_HEADER in headers for headers, _ in letters)
    mismatched = [(kind, code, body[:120]) for body, _, code, kind in bad if found[(body, code)] < wanted[(body, code)]]
    assert not mismatched, f"{len(mismatched)} bad messages without their dead letter: {mismatched[:10]}"
    assert len(letters) == len(bad), f"{len(letters)} dead letters for {len(bad)} bad messages"
    assert applied_count(stack) == len(good)
    assert campaigns == expected


def _consumers(stack):
    try:
        return queue_state(stack.broker_url, QUEUE)[1]
    except Exception:  # noqa: BLE001 - the queue is declared by the worker when it starts
        return 0
