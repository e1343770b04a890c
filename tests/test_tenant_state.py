"""The per-tenant state a server keeps (sockets/tenant_state.py): plain rules, no database."""

import json
from datetime import timedelta
from types import SimpleNamespace

import pytest

from campaigns.timeutil import isoformat, utcnow
from sockets.encoding import PacketJSON
from sockets.tenant_state import CampaignEntry, TenantState

NOW = utcnow()


def campaign(campaign_id, version, status="running", sent=0, updated_at=NOW):
    """A ``<campaign>`` dict with what the state looks at."""
    return {
        "id": campaign_id,
        "tenant_id": "acme",
        "status": status,
        "sent": sent,
        "version": version,
        "updated_at": isoformat(updated_at),
    }


def update(seq, campaign_dict, at=NOW):
    """A stored ``campaign_update`` payload."""
    return {
        "seq": seq,
        "type": "message_sent",
        "campaign": campaign_dict,
        "timestamp": isoformat(at),
        "replayed": False,
    }


def loaded(seq=0, ring_size=8, entries=(), recent=()):
    """A state as loaded from the database."""
    state = TenantState("acme", "e1", seq, ring_size)
    state.load(list(entries), list(recent))
    return state


def test_updates_are_applied_in_seq_order_and_a_gap_waits_for_the_missing_ones():
    state = loaded()
    assert [u["seq"] for u in state.apply(update(1, campaign("a", 1)))] == [1]
    assert state.apply(update(3, campaign("a", 3))) == []
    assert state.apply(update(4, campaign("a", 4))) == []
    assert state.missing_after() == (1, 2)
    assert [u["seq"] for u in state.apply(update(2, campaign("a", 2)))] == [2, 3, 4]
    assert state.seq == 4 and state.missing_after() is None
    assert state.apply(update(3, campaign("a", 3))) == []  # a duplicate changes nothing
    assert state.campaigns["a"].campaign["version"] == 4


def test_the_ring_keeps_the_newest_updates_and_replays_only_what_it_holds_contiguously():
    state = loaded(ring_size=3)
    for seq in range(1, 6):
        state.apply(update(seq, campaign("a", seq)))
    not_before = NOW - timedelta(hours=1)
    assert [u["seq"] for u in state.replay_from_memory(2, not_before)] == [3, 4, 5]
    assert all(u["replayed"] for u in state.replay_from_memory(2, not_before))
    assert state.replay_from_memory(1, not_before) is None  # seq 2 is gone from memory
    assert state.replay_from_memory(5, not_before) == []
    assert state.replay_from_memory(2, NOW + timedelta(seconds=1)) is None  # older than the kept history


def test_a_campaign_keeps_its_highest_version_whichever_source_comes_first():
    entry = CampaignEntry(campaign("a", 7, sent=7), NOW, None)
    state = loaded(seq=5, entries=[entry])
    state.apply(update(6, campaign("a", 6, sent=6)))  # older than what the database said
    assert state.campaigns["a"].campaign["sent"] == 7
    state.apply(update(7, campaign("a", 8, sent=8)))
    assert state.campaigns["a"].campaign["sent"] == 8
    state.merge_entry(CampaignEntry(campaign("a", 7, sent=7), NOW, None))
    assert state.campaigns["a"].campaign["sent"] == 8


def test_the_snapshot_is_built_once_per_seq_newest_first_without_campaigns_ended_a_day_ago():
    old = CampaignEntry(campaign("old", 2, status="completed"), NOW - timedelta(days=3), NOW - timedelta(hours=25))
    first = CampaignEntry(campaign("first", 1), NOW - timedelta(hours=2), None)
    second = CampaignEntry(campaign("second", 1, status="failed"), NOW - timedelta(hours=1), NOW - timedelta(hours=1))
    state = loaded(seq=3, entries=[old, first, second])
    snapshot = state.snapshot(NOW)
    assert snapshot["seq"] == 3 and snapshot["epoch"] == "e1"
    assert [c["id"] for c in snapshot["campaigns"]] == ["second", "first"]
    assert state.snapshot(NOW) is snapshot
    state.apply(update(4, campaign("third", 1), at=NOW))
    rebuilt = state.snapshot(NOW)
    assert rebuilt is not snapshot
    assert rebuilt["seq"] == 4 and [c["id"] for c in rebuilt["campaigns"]] == ["third", "second", "first"]


def test_a_campaign_first_seen_in_the_stream_takes_its_real_place_once_the_database_tells_it():
    state = loaded(seq=0, entries=[CampaignEntry(campaign("a", 1), NOW - timedelta(minutes=5), None)])
    state.apply(update(1, campaign("b", 1), at=NOW))
    assert state.provisional_ids() == ["b"]
    state.merge_entry(CampaignEntry(campaign("b", 1), NOW - timedelta(minutes=10), None))
    assert state.provisional_ids() == []
    assert [c["id"] for c in state.snapshot(NOW)["campaigns"]] == ["a", "b"]


def test_a_campaign_that_ended_days_ago_by_its_event_leaves_the_snapshot_whenever_it_was_applied():
    # Events of a past campaign applied today (a sender's backlog): the 24 h count from the ending
    # event's occurred_at, as in the database (campaigns/models.py ended_at), not from the apply time.
    running = [CampaignEntry(campaign(name, 1), NOW - timedelta(days=3), None) for name in ("done", "gave-up")]
    state = loaded(seq=0, entries=running)
    completed = {**campaign("done", 2, status="completed"), "completed_at": isoformat(NOW - timedelta(days=2))}
    state.apply(update(1, completed))
    assert [c["id"] for c in state.snapshot(NOW)["campaigns"]] == ["gave-up"]
    # A failure carries no time of its event: kept until the reconciliation reads it (a provisional entry).
    state.apply(update(2, {**campaign("gave-up", 2, status="failed"), "completed_at": None}))
    assert state.provisional_ids() == ["gave-up"]
    state.merge_entry(
        CampaignEntry(campaign("gave-up", 2, status="failed"), NOW - timedelta(days=3), NOW - timedelta(days=2))
    )
    assert state.provisional_ids() == [] and state.snapshot(NOW)["campaigns"] == []


def test_loading_keeps_the_recent_updates_only_when_they_end_at_the_loaded_seq():
    recent = [update(seq, campaign("a", seq)) for seq in (3, 4, 5)]
    assert [u["seq"] for u in loaded(seq=5, recent=recent).recent] == [3, 4, 5]
    assert list(loaded(seq=6, recent=recent).recent) == []


def test_the_snapshot_is_encoded_once_per_seq_and_sent_as_that_json():
    state = loaded(seq=1, entries=[CampaignEntry(campaign("a", 1), NOW, None)])
    encoded = state.encoded_snapshot(NOW)
    assert state.encoded_snapshot(NOW) is encoded
    packet = PacketJSON.dumps(["campaign_snapshot", encoded], separators=(",", ":"))
    assert json.loads(packet) == ["campaign_snapshot", state.snapshot(NOW)]
    state.apply(update(2, campaign("a", 2)))
    assert json.loads(state.encoded_snapshot(NOW).text)["seq"] == 2


def test_a_replayed_update_is_encoded_once_for_every_client_it_is_replayed_to():
    state = loaded(ring_size=3)
    for seq in range(1, 6):
        state.apply(update(seq, campaign("a", seq)))
    kept_since = NOW - timedelta(hours=1)
    first, second = state.replay_from_memory(3, kept_since), state.replay_from_memory(3, kept_since)
    assert [u["seq"] for u in first] == [4, 5] and all(a is b for a, b in zip(first, second))
    assert json.loads(first[0].text) == {**update(4, campaign("a", 4)), "replayed": True}
    state.apply(update(6, campaign("a", 6)))
    assert set(state._replayed) <= {4, 5, 6}  # what left the ring leaves the cache


def test_an_update_that_cannot_be_applied_costs_no_other_update(monkeypatch):
    """A burst handed over together: the updates applied before and after a bad one are delivered;
    another tenant's burst is untouched. (The stream drops such a payload before it gets here,
    see test_message_queue.py; this is the defence behind that check.)"""
    from sockets import tenants

    delivered = []
    monkeypatch.setattr(tenants, "emit_in_order", lambda server, event, payloads, room: delivered.append(
        (room, [payload["seq"] for payload in payloads])
    ))
    states = tenants.TenantStates()
    states.states["acme"] = loaded()
    other = TenantState("beta", "e1", 0, 8)
    other.load([], [])
    states.states["beta"] = other
    broken = update(2, campaign("a", 2))
    del broken["campaign"]["version"]  # what a worker of another version might send
    beta = update(1, {**campaign("b", 1), "tenant_id": "beta"})
    states.receive_many([update(1, campaign("a", 1)), broken, update(3, campaign("a", 3)), beta])
    assert ("tenant:acme", [1, 3]) in delivered  # clients ask for 2 themselves (a seq jump)
    assert ("tenant:beta", [1]) in delivered


@pytest.mark.parametrize(("reconcile_seconds", "grace"), [(5.0, 0.5), (2.0, 0.5), (1.0, 0.25), (0.4, 0.1)])
def test_a_tenant_behind_postgresql_is_caught_up_within_reconcile_seconds(monkeypatch, reconcile_seconds, grace):
    """A look every RECONCILE_SECONDS / 2, then a grace for updates in flight: both within R."""
    from sockets import tenants

    states = tenants.TenantStates()
    states.reconcile_seconds = reconcile_seconds
    states.states["acme"] = loaded()  # at seq 0 here; PostgreSQL says 3
    slept, caught_up = [], []
    monkeypatch.setattr(tenants.socketio, "sleep", slept.append)
    monkeypatch.setattr(states, "_read", lambda read, background=False: {"acme": (3, states.states["acme"].epoch)})
    monkeypatch.setattr(states, "start_catch_up", lambda tenant_id, cause: caught_up.append((tenant_id, cause)))
    states.reconcile_once()
    assert caught_up == [("acme", "behind")]
    assert slept == [grace]
    assert reconcile_seconds / 2 + slept[0] <= reconcile_seconds * 0.75


class StopLoop(BaseException):
    """Ends a reconciliation loop in a test (the loop outlives every ``Exception``)."""


class ClockedEvent:
    """An event nobody sets, on a fake clock: waiting moves the clock on by the timeout."""

    def __init__(self, clock):
        self.clock = clock

    def wait(self, timeout):
        self.clock[0] += timeout
        return False

    def clear(self):
        pass


def states_on_a_fake_clock(monkeypatch, reconcile_seconds=0.6):
    """A ``TenantStates`` whose reconciliation loop runs on a fake clock: ``(states, clock)``."""
    from sockets import tenants

    clock = [100.0]
    states = tenants.TenantStates()
    states.reconcile_seconds = reconcile_seconds
    eio = SimpleNamespace(create_event=lambda: ClockedEvent(clock))
    monkeypatch.setattr(tenants, "socketio", SimpleNamespace(server=SimpleNamespace(eio=eio)))
    monkeypatch.setattr(tenants, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    return states, clock


def test_looks_start_every_half_reconcile_seconds_however_long_a_look_waits(monkeypatch):
    states, clock = states_on_a_fake_clock(monkeypatch)
    starts = []

    def look():
        starts.append(clock[0])
        if len(starts) == 4:
            raise StopLoop
        clock[0] += 0.2  # what a look spends in its grace when a tenant is behind

    monkeypatch.setattr(states, "reconcile_once", look)
    with pytest.raises(StopLoop):
        states.run_reconciliation()
    intervals = [round(later - earlier, 6) for earlier, later in zip(starts, starts[1:])]
    assert intervals == [0.3, 0.3, 0.3]  # a look every R/2 from the last start, not R/2 + 0.2


@pytest.mark.parametrize(
    "outcome, rest",
    [("slow", 0.075), ("failed", 0.3)],  # R/8 after a look longer than R/2; R/2 after a failure
)
def test_looks_never_run_back_to_back(monkeypatch, outcome, rest):
    states, clock = states_on_a_fake_clock(monkeypatch)
    monkeypatch.setattr("sockets.tenants.log.exception", lambda *args: None)
    spans = []

    def look():
        if len(spans) == 3:
            raise StopLoop
        start = clock[0]
        clock[0] += 0.5  # longer than R/2: a slow database, or one that times out
        spans.append((start, clock[0]))
        if outcome == "failed":
            raise OSError("database unreachable")

    monkeypatch.setattr(states, "reconcile_once", look)
    with pytest.raises(StopLoop):
        states.run_reconciliation()
    rests = [round(later[0] - earlier[1], 6) for earlier, later in zip(spans, spans[1:])]
    assert rests == [rest, rest]
