"""Admin pages: the live dashboard and the campaign page (HTML, login required)."""

from pathlib import Path

from flask import Blueprint, abort, redirect, render_template, request, send_file, session, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required
from sqlalchemy import select

from campaigns.auth import active_tenant_of
from campaigns.models import Campaign, Tenant
from campaigns.reason_counts import failure_reasons
from campaigns.stats import campaign_history, messages_last_minute, messages_per_minute
from campaigns.timeutil import utcnow
from extensions import db

bp = Blueprint("pages", __name__)
TROUBLESHOOTING = Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md"
STATUSES = ("running", "paused", "completed", "failed", "cancelled")
STATUS_ORDER = {status: rank for rank, status in enumerate(STATUSES)}


def status_labels():
    """Status names for people, in the page's language."""
    return {
        "running": _("Running"),
        "paused": _("Paused"),
        "completed": _("Completed"),
        "failed": _("Failed"),
        "cancelled": _("Cancelled"),
    }


def event_labels():
    """Timeline names of the status events, in the page's language."""
    return {
        "campaign_started": _("Started"),
        "campaign_paused": _("Paused"),
        "campaign_resumed": _("Resumed"),
        "campaign_completed": _("Completed"),
        "campaign_failed": _("Failed"),
        "campaign_cancelled": _("Cancelled"),
    }


def client_strings():
    """The strings the live client shows, translated (passed to JavaScript as JSON)."""
    return {
        "status": status_labels(),
        "live": _("Live"),
        "connecting": _("Connecting"),
        "error": _("Error — polling"),
        "disconnected": _("Disconnected — polling"),
        "reconnect": _("Reconnect"),
        "started": _("%(name)s started"),
        "paused": _("%(name)s paused"),
        "resumed": _("%(name)s resumed"),
        "completed": _("%(name)s completed"),
        "failed": _("%(name)s failed: %(error)s"),
        "cancelled": _("%(name)s cancelled"),
        "messages_failed": _("%(count)s messages failed in %(name)s"),
        "message_failed": _("1 message failed in %(name)s"),
        "away": _("While you were away: %(summary)s"),
        "away_started": _("%(count)s started"),
        "away_completed": _("%(count)s completed"),
        "away_paused": _("%(count)s paused"),
        "away_failed": _("%(count)s failed"),
        "away_messages": _("%(count)s messages sent"),
        "away_message_failures": _("%(count)s messages failed"),
        "events": event_labels(),
        "no_failures": _("No failures."),
        "other_reasons": _("Other reasons"),
        "per_minute": _("/min"),
        "eta_done": _("done"),
        "sent": _("sent"),
        "failed_label": _("failed"),
        "failure_alert": _("Failing: %(rate)s of the messages of the last %(window)s s, since %(since)s"),
        "failure_alert_toast": _("%(name)s is failing: %(rate)s of its recent messages"),
    }


def tenant_context():
    """The tenant shown, and the tenants a platform admin may switch to."""
    tenant_id = active_tenant_of(current_user)
    if tenant_id is None:
        abort(404)
    tenant = db.session.get(Tenant, tenant_id)
    tenants = db.session.scalars(select(Tenant).order_by(Tenant.id)).all() if current_user.is_admin else []
    return tenant, tenants


def page(template, **context):
    """Render an admin page with what every page needs."""
    tenant, tenants = tenant_context()
    return render_template(
        template,
        tenant=tenant,
        tenants=tenants,
        status_labels=status_labels(),
        event_labels=event_labels(),
        js_strings=client_strings(),
        **context,
    )


@bp.get("/")
@login_required
def dashboard():
    """Every campaign of the tenant, running ones first, complete on the server then live."""
    tenant, _tenants = tenant_context()
    status = request.args.get("status")
    if status not in STATUSES:
        status = None
    snapshot = Campaign.snapshot(tenant.id)
    snapshot["epoch"] = Tenant.positions([tenant.id])[tenant.id][1]
    rates = messages_last_minute(tenant.id, utcnow())
    for campaign in snapshot["campaigns"]:
        campaign["rate"] = rates.get(campaign["id"], 0)
    snapshot["campaigns"].sort(key=lambda c: (STATUS_ORDER[c["status"]], c["name"].lower()))
    shown = [c for c in snapshot["campaigns"] if status is None or c["status"] == status]
    return page("campaigns/dashboard.html", snapshot=snapshot, campaigns=shown, status=status, statuses=STATUSES)


@bp.get("/campaigns/<campaign_id>")
@login_required
def campaign_page(campaign_id):
    """One campaign live: figures, messages per minute, recent failures, timeline."""
    tenant, _tenants = tenant_context()
    campaign = db.session.get(Campaign, (tenant.id, campaign_id))
    if campaign is None:
        abort(404)
    now = utcnow()
    state = campaign.to_dict()
    state["rate"] = messages_last_minute(tenant.id, now).get(campaign_id, 0)
    return page(
        "campaigns/campaign.html",
        campaign=state,
        chart=messages_per_minute(tenant.id, campaign_id, now),
        seq=tenant.last_seq,
        epoch=Tenant.positions([tenant.id])[tenant.id][1],
        history=campaign_history(tenant.id, campaign_id),
        reasons=failure_reasons(tenant.id, campaign_id),
    )


@bp.post("/tenant")
@login_required
def switch_tenant():
    """A platform admin picks the tenant to look at."""
    if not current_user.is_admin:
        abort(403)
    tenant_id = request.form.get("tenant_id", "")
    if db.session.get(Tenant, tenant_id) is None:
        abort(400)
    session["tenant_id"] = tenant_id
    return redirect(url_for("pages.dashboard"))


@bp.get("/help/troubleshooting")
def troubleshooting():
    """docs/troubleshooting.md as plain text: the guide the connection indicator links to.

    Served by the app itself, so it is reachable from any deployment (no repository host to
    know, none to reach) and always matches the running version; no login, it holds nothing secret.
    """
    return send_file(TROUBLESHOOTING, mimetype="text/plain; charset=utf-8", max_age=300)
