"""A campaign simulator: tenants whose campaigns start, send, fail, pause, resume and end.

Used by the embedded demo (``make run``) and by ``flask --app app simulate`` against a
real RabbitMQ. It only publishes events, exactly as a real sender would.
"""

import itertools
import logging
import random
import time
from dataclasses import dataclass

from campaigns.publisher import make_event

log = logging.getLogger(__name__)

DEMO_TENANTS = (("acme", "Acme Retail"), ("globex", "Globex Bank"), ("initech", "Initech Telecom"))
CAMPAIGN_NAMES = (
    "Black Friday",
    "Cyber Monday",
    "Christmas Sale",
    "Welcome Series",
    "Cart Reminder",
    "Payment Due",
    "Loyalty Points",
    "New Year Promo",
    "Survey Invite",
    "Flash Sale",
)
MESSAGE_ERRORS = (
    "recipient number is not on WhatsApp",
    "provider timeout after 30s",
    "invalid phone number",
    "rate limited by provider",
)
TICK_SECONDS = 0.25


@dataclass
class SimulatedCampaign:
    """What the simulator knows of one campaign it plays."""

    tenant_id: str
    campaign_id: str
    name: str
    total: int
    rate: float
    done: int = 0
    paused_until: float = 0.0
    message_number: int = 0


class CampaignSimulator:
    """Publishes realistic campaign traffic through ``publish(event)``."""

    def __init__(self, publish, tenants, campaigns_per_tenant=2, rate=(4.0, 15.0), seed=None):
        self.publish = publish
        self.tenants = list(tenants)
        self.campaigns_per_tenant = campaigns_per_tenant
        self.rate = rate
        self.random = random.Random(seed)
        self.active = []
        self.counter = itertools.count(1)

    def start_campaign(self, tenant_id, now):
        """Start a new campaign for a tenant."""
        number = next(self.counter)
        name = f"{self.random.choice(CAMPAIGN_NAMES)} #{number}"
        campaign = SimulatedCampaign(
            tenant_id=tenant_id,
            campaign_id=f"sim-{int(now)}-{number}",
            name=name,
            total=self.random.randint(150, 1500),
            rate=self.random.uniform(*self.rate),
        )
        self.active.append(campaign)
        self.send(campaign, "campaign_started", {"name": name, "total_messages": campaign.total})

    def send(self, campaign, kind, data=None):
        """Publish one event of a campaign."""
        self.publish(make_event(campaign.tenant_id, campaign.campaign_id, kind, data))

    def tick(self, now, seconds):
        """Advance every campaign by ``seconds``."""
        for tenant_id in self.tenants:
            running = sum(1 for c in self.active if c.tenant_id == tenant_id)
            if running < self.campaigns_per_tenant and self.random.random() < 0.3:
                self.start_campaign(tenant_id, now)
        for campaign in list(self.active):
            self.advance(campaign, now, seconds)

    def advance(self, campaign, now, seconds):
        """Send a campaign's messages for one tick, with the odd pause, failure or end."""
        if campaign.paused_until:
            if now >= campaign.paused_until:
                campaign.paused_until = 0.0
                self.send(campaign, "campaign_resumed")
            return
        roll = self.random.random()
        if roll < 0.004:
            campaign.paused_until = now + self.random.uniform(3, 10)
            self.send(campaign, "campaign_paused", {"reason": "paused by operator"})
            return
        if roll < 0.0045:
            self.active.remove(campaign)
            self.send(campaign, "campaign_failed", {"error": "provider account suspended"})
            return
        count = min(int(campaign.rate * seconds + self.random.random()), campaign.total - campaign.done)
        for _ in range(count):
            campaign.message_number += 1
            message_id = f"m-{campaign.message_number:06d}"
            self.send(
                campaign, "next_message_starting", {"message_id": message_id, "position": campaign.message_number}
            )
            if self.random.random() < 0.04:
                self.send(
                    campaign, "message_failed", {"message_id": message_id, "error": self.random.choice(MESSAGE_ERRORS)}
                )
            else:
                self.send(campaign, "message_sent", {"message_id": message_id})
        campaign.done += count
        if campaign.done >= campaign.total:
            self.active.remove(campaign)
            self.send(campaign, "campaign_completed")

    def run(self, sleep=time.sleep, should_stop=lambda: False, duration=None):
        """Play until ``should_stop()`` or ``duration`` seconds have passed."""
        started = last = time.monotonic()
        log.info("[WORKER] simulator playing campaigns for %s", ", ".join(self.tenants))
        while not should_stop() and (duration is None or time.monotonic() - started < duration):
            sleep(TICK_SECONDS)
            now = time.monotonic()
            self.tick(time.time(), now - last)
            last = now
