"""CLI commands of the contract (``flask --app app <command>``)."""

import logging
import sys

import click
from flask import current_app
from flask.cli import with_appcontext

from campaigns.auth import create_api_key
from campaigns.deadletters import discard_dead_letters, list_dead_letters, requeue_dead_letters
from campaigns.doctor import GUIDE, format_result, run_checks
from campaigns.events import TENANT_ID
from campaigns.models import Tenant, User
from campaigns.publisher import EventPublisher
from campaigns.queues import declare_topology_at
from campaigns.simulator import DEMO_TENANTS, CampaignSimulator
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
    if current_app.config["BROKER_URL"]:
        # A sender may publish for the new tenant before any worker or server ever ran.
        problem = declare_topology_at(current_app.config["BROKER_URL"], current_app.config["WORKER_QUEUE"])
        if problem:
            click.echo(
                f"warning: the broker's exchange and queues are not declared yet ({problem}); "
                "the first server or worker declares them",
                err=True,
            )


@click.command("delete-tenant")
@click.argument("tenant_id")
@with_appcontext
def delete_tenant(tenant_id):
    """Delete a tenant with its campaigns, history, API keys and users."""
    tenant = db.session.get(Tenant, tenant_id)
    if tenant is None:
        raise click.ClickException(f"no tenant {tenant_id!r}")
    db.session.delete(tenant)
    db.session.commit()
    click.echo(f"deleted tenant {tenant_id}")


@click.command("create-api-key")
@click.argument("tenant_id")
@with_appcontext
def create_api_key_command(tenant_id):
    """Print a new API key for a tenant (shown once, stored hashed)."""
    if db.session.get(Tenant, tenant_id) is None:
        raise click.ClickException(f"no tenant {tenant_id!r}")
    click.echo(create_api_key(tenant_id))


@click.command("create-user")
@click.argument("email")
@click.option("--tenant", "tenant_id", help="The tenant the user belongs to.")
@click.option("--admin", is_flag=True, help="A platform admin, who may look at every tenant.")
@click.option("--password", help="Asked for when omitted (twice at a terminal, one line from a pipe).")
@with_appcontext
def create_user(email, tenant_id, admin, password):
    """Create a user of the admin pages."""
    if password is None:
        interactive = sys.stdin.isatty()
        password = click.prompt("Password", hide_input=True, confirmation_prompt=interactive)
    if not tenant_id and not admin:
        raise click.UsageError("--tenant is required (only --admin users may have none)")
    if tenant_id and db.session.get(Tenant, tenant_id) is None:
        raise click.ClickException(f"no tenant {tenant_id!r}")
    if "@" not in email or len(email) > 254:
        raise click.BadParameter("not an e-mail address", param_hint="EMAIL")
    if not password:
        raise click.BadParameter("must not be empty", param_hint="--password")
    if len(password) < 8:
        click.echo("warning: a password shorter than 8 characters is easy to guess", err=True)
    email = email.strip().lower()
    if db.session.scalar(db.select(User).where(User.email == email)) is not None:
        raise click.ClickException(f"user {email} already exists")
    user = User(email=email, tenant_id=tenant_id, is_admin=admin)
    user.set_password(password)
    db.session.add(user)
    db.session.commit()
    click.echo(f"created {'admin ' if admin else ''}user {email}")


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


@click.command("doctor")
@click.option("--url", help="A running server to connect to (e.g. http://127.0.0.1:5000).")
@click.option("--tenant", "tenant_id", help="The tenant of the token for --url (default: the first tenant).")
@with_appcontext
def doctor(url, tenant_id):
    """Check this deployment: one line per check, exit 1 when one fails (docs/troubleshooting.md)."""
    results = run_checks(current_app.config, url, tenant_id)
    for result in results:
        click.echo(format_result(result))
    failed = [result.name for result in results if result.ok is False]
    if current_app.config["DEMO"]:
        click.echo("demo mode: neither DATABASE_URL nor BROKER_URL is set, so only what the demo uses was checked")
    if failed:
        click.echo(f"doctor: {len(failed)} check(s) failed ({', '.join(failed)}); see {GUIDE}")
        sys.exit(1)
    click.echo("doctor: every check passed")


@click.group("dead-letters")
def dead_letters():
    """Messages the worker refused (queue campaign.events.dead)."""


def _broker_url():
    url = current_app.config["BROKER_URL"]
    if not url:
        raise click.ClickException("set BROKER_URL")
    return url


@dead_letters.command("list")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@with_appcontext
def dead_letters_list(limit):
    """Show dead letters with their reasons (the queue is left untouched)."""
    letters = list_dead_letters(_broker_url(), limit)
    for letter in letters:
        click.echo(f"{letter['rejected_at'] or '-'}  {letter['routing_key']}  {letter['reason']}")
        click.echo(f"    {letter['size']} bytes: {letter['body'][:120]}")
    click.echo(f"{len(letters)} dead letter(s) shown")


def _dead_letters_action(action, verb, done_verb, reason, limit, yes):
    """Run a dead-letter ``action`` after a confirmation; say how many it took and kept."""
    if not yes:
        click.confirm(f"{verb} dead letters{' with reason ' + reason if reason else ''}?", abort=True)
    done, kept = action(_broker_url(), reason, limit)
    click.echo(f"{done_verb} {done}, kept {kept}")


def _dead_letters_options(function):
    """The options shared by ``requeue`` and ``discard``."""
    function = click.option("--yes", is_flag=True, help="Do not ask for confirmation.")(function)
    function = click.option("--limit", type=click.IntRange(1), default=None, help="At most this many.")(function)
    return click.option("--reason", help="Only those whose reason starts with this (e.g. unknown_tenant).")(function)


@dead_letters.command("requeue")
@_dead_letters_options
@with_appcontext
def dead_letters_requeue(reason, limit, yes):
    """Publish dead letters back to campaign.events after the cause was fixed."""
    _dead_letters_action(requeue_dead_letters, "Requeue", "requeued", reason, limit, yes)


@dead_letters.command("discard")
@_dead_letters_options
@with_appcontext
def dead_letters_discard(reason, limit, yes):
    """Delete dead letters for good (those that can never be applied)."""
    _dead_letters_action(discard_dead_letters, "Discard for good", "discarded", reason, limit, yes)


def register_commands(app):
    """Add the commands to ``flask --app app``."""
    for command in (create_tenant, delete_tenant, create_api_key_command, create_user, simulate, dead_letters, doctor):
        app.cli.add_command(command)
