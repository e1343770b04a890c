"""CLI commands of the contract (``flask --app app <command>``)."""

import logging

import click
from flask import current_app
from flask.cli import with_appcontext

from campaigns.models import Tenant
from campaigns.publisher import EventPublisher
from campaigns.simulator import DEMO_TENANTS, CampaignSimulator
from campaigns.events import TENANT_ID
from extensions import db

log = logging.getLogger(__name__)


@click.command("create-tenant")
@click.argument("tenant_id")
@click.option("--name", required=True, help="Display name of the tenant.")
@with_appcontext
def create_tenant(tenant_id, name):
    """Create a tenant."""
    if not TENANT_ID.fullmatch(tenant_id):
        raise click.BadParameter("must match [a-z0-9][a-z0-9_-]{0,63}", param_hint="TENANT_ID")
    if db.session.get(Tenant, tenant_id) is not None:
        raise click.ClickException(f"tenant {tenant_id!r} already exists")
    db.session.add(Tenant(id=tenant_id, name=name, last_seq=0))
    db.session.commit()
    click.echo(f"created tenant {tenant_id}")


@click.command("simulate")
@click.option("--duration", type=float, default=None, help="Seconds to run (default: until Ctrl-C).")
@click.option("--tenant", "tenants", multiple=True, help="Tenant to play (repeatable; default: the demo tenants).")
@click.option("--campaigns", type=int, default=2, show_default=True, help="Concurrent campaigns per tenant.")
@with_appcontext
def simulate(duration, tenants, campaigns):
    """Publish simulated campaign traffic to BROKER_URL."""
    url = current_app.config["BROKER_URL"]
    if not url:
        raise click.ClickException("set BROKER_URL (the demo of `make run` has its own simulator)")
    tenants = tenants or [tenant_id for tenant_id, _ in DEMO_TENANTS]
    with EventPublisher(url) as publisher:
        CampaignSimulator(publisher.publish, tenants, campaigns_per_tenant=campaigns).run(duration=duration)


def register_commands(app):
    """Add the commands to ``flask --app app``."""
    for command in (create_tenant, simulate):
        app.cli.add_command(command)
