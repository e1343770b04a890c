"""What one server holds of one tenant: its campaigns, its recent updates, its ``seq`` and ``epoch``.

Plain data and rules, no I/O: ``sockets/tenants.py`` feeds it from PostgreSQL and from the
update stream, and serves connects from it.

- ``seq`` is the highest ``seq`` such that every update up to it was applied here, in order.
- ``recent`` holds the newest updates, contiguous and ending at ``seq``, at most ``ring_size``.
- ``campaigns`` keeps, per campaign, the ``<campaign>`` with the highest ``version`` seen from
  either source. Merging by version makes the two sources commute: a campaign read from the
  database may be ahead of ``seq`` (a throttled progress event not emitted yet), never behind it.
- An update that arrives ahead of ``seq + 1`` (a gap: the message queue lost one) waits in
  ``ahead`` until the missing ones are fetched; ``apply`` then releases it in order.
"""

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice

from campaigns.models import ACTIVE_STATUSES, SNAPSHOT_ENDED_WITHIN, SNAPSHOT_LIMIT
from campaigns.updates import as_replayed
from sockets.encoding import PreEncoded

# A quiet tenant's snapshot is rebuilt after this long all the same, so ended campaigns leave it.
SNAPSHOT_REUSE = timedelta(seconds=60)


def parse_time(text):
    """An RFC 3339 string of ours (``...Z``) as an aware datetime; None stays None."""
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(slots=True)
class CampaignEntry:
    """One campaign as the snapshot needs it: the payload, and what orders and filters it."""

    campaign: dict
    created_at: datetime
    # When it stopped running (None while running or paused): ended ones leave the snapshot after 24 h.
    ended_at: datetime | None
    # True until the database told its real created_at (it came from the stream first).
    provisional: bool = False


class TenantState:
    """A tenant's snapshot and recent updates, as one server holds them."""

    def __init__(self, tenant_id, epoch, seq, ring_size):
        self.tenant_id = tenant_id
        self.epoch = epoch
        self.seq = seq
        self.recent = deque(maxlen=ring_size)
        self.campaigns = {}
        self.ahead = {}
        # seq -> the replayed copy of a recent update, encoded once for every client it is replayed to.
        self._replayed = {}
        self._snapshot = None
        self._snapshot_built = None
        self._encoded = None

    # feeding -----------------------------------------------------------------------------

    def load(self, entries, recent):
        """Merge campaigns read from the database and the stored updates up to ``seq``."""
        for entry in entries:
            self.merge_entry(entry)
        self.recent.clear()
        self._replayed.clear()
        self.recent.extend(payload for payload in recent if payload["seq"] <= self.seq)
        if self.recent and self.recent[-1]["seq"] != self.seq:
            self.recent.clear()  # not contiguous up to seq: replay will ask the database instead

    def merge_entry(self, entry):
        """Keep ``entry`` unless a campaign with the same or a higher version is held already."""
        held = self.campaigns.get(entry.campaign["id"])
        if held is None or entry.campaign["version"] > held.campaign["version"]:
            self.campaigns[entry.campaign["id"]] = entry
            self._snapshot = None
        elif held.provisional and not entry.provisional:
            held.created_at, held.provisional = entry.created_at, False
            if held.ended_at is None or entry.ended_at is not None:
                held.ended_at = entry.ended_at
            self._snapshot = None

    def apply(self, payload):
        """Take one update; return those now deliverable, in ``seq`` order (maybe none).

        Older ones (``seq`` already applied) are dropped; one ahead of ``seq + 1`` waits in
        ``ahead`` for the missing ones.
        """
        seq = payload["seq"]
        if seq <= self.seq:
            return []
        if seq > self.seq + 1:
            if len(self.ahead) < self.recent.maxlen:  # beyond, catching up reads them from the database
                self.ahead[seq] = payload
            return []
        ready = [payload]
        self._take(payload)
        while self.seq + 1 in self.ahead:
            following = self.ahead.pop(self.seq + 1)
            ready.append(following)
            self._take(following)
        return ready

    def _take(self, payload):
        self.seq = payload["seq"]
        if len(self.recent) == self.recent.maxlen:
            self._replayed.pop(self.recent[0]["seq"], None)  # leaves the ring with this append
        self.recent.append(payload)
        campaign = payload["campaign"]
        held = self.campaigns.get(campaign["id"])
        if held is not None and held.campaign["version"] >= campaign["version"]:
            return
        ended_at, guessed = None, False
        if campaign["status"] not in ACTIVE_STATUSES:
            was_ended = held is not None and held.ended_at is not None
            if was_ended:
                ended_at = held.ended_at
            elif campaign.get("completed_at"):  # the completing event's occurred_at, as the database keeps it
                ended_at = parse_time(campaign["completed_at"])
            else:
                # failed or cancelled: the update does not carry its status event's occurred_at (the
                # snapshot's 24 h count from it); the reconciliation reads it (provisional entries).
                ended_at, guessed = parse_time(campaign["updated_at"]), True
        if held is None:
            created = parse_time(payload["timestamp"])
            self.campaigns[campaign["id"]] = CampaignEntry(campaign, created, ended_at, provisional=True)
        else:
            held.campaign, held.ended_at = campaign, ended_at
            held.provisional = held.provisional or guessed
        self._snapshot = None

    def missing_after(self):
        """``(after_seq, up_to_seq)`` of a gap waiting to be filled, or None."""
        if not self.ahead:
            return None
        return self.seq, min(self.ahead) - 1

    def provisional_ids(self):
        """Campaigns first seen in the stream, whose order in the snapshot is a guess so far."""
        return [entry.campaign["id"] for entry in self.campaigns.values() if entry.provisional]

    # serving -----------------------------------------------------------------------------

    def encoded_snapshot(self, now):
        """The snapshot as ``PreEncoded`` JSON: encoded once per ``seq`` for every client it goes to."""
        snapshot = self.snapshot(now)
        if self._encoded is None or self._encoded[0] is not snapshot:
            self._encoded = (snapshot, PreEncoded(snapshot))
        return self._encoded[1]

    def snapshot(self, now):
        """The ``campaign_snapshot`` payload at ``seq``, built once per ``seq`` and reused."""
        cached = self._snapshot
        if cached is not None and cached["seq"] == self.seq and now - self._snapshot_built < SNAPSHOT_REUSE:
            return cached
        ended_since = now - SNAPSHOT_ENDED_WITHIN
        shown = [
            entry
            for entry in self.campaigns.values()
            if entry.ended_at is None or entry.ended_at >= ended_since
        ]
        shown.sort(key=lambda entry: entry.campaign["id"])
        shown.sort(key=lambda entry: entry.created_at, reverse=True)
        self._forget_old(ended_since)
        self._snapshot_built = now
        self._snapshot = {
            "seq": self.seq,
            "epoch": self.epoch,
            "campaigns": [entry.campaign for entry in shown[:SNAPSHOT_LIMIT]],
        }
        return self._snapshot

    def _forget_old(self, ended_since):
        """Drop campaigns that ended more than a day ago: memory stays bounded by the live set."""
        old = [key for key, entry in self.campaigns.items() if entry.ended_at and entry.ended_at < ended_since]
        for key in old:
            del self.campaigns[key]

    def replay_from_memory(self, after_seq, not_before):
        """The updates after ``after_seq`` as replayed payloads, or None when memory lacks some.

        Updates older than ``not_before`` (the kept history) do not count as held.
        """
        if after_seq >= self.seq:
            return []
        if not self.recent or self.recent[0]["seq"] > after_seq + 1:
            return None
        wanted = list(islice(self.recent, after_seq + 1 - self.recent[0]["seq"], None))
        if parse_time(wanted[0]["timestamp"]) < not_before:
            return None
        return [self._replayed_copy(payload) for payload in wanted]

    def _replayed_copy(self, payload):
        replayed = self._replayed.get(payload["seq"])
        if replayed is None:
            replayed = self._replayed[payload["seq"]] = PreEncoded(as_replayed(payload))
        return replayed
