"""Routes of the ops page. For anyone but a platform admin they do not exist (404, never 403)."""

import logging

from flask import Blueprint, abort, current_app, render_template, request
from flask_babel import gettext as _
from flask_login import current_user
from flask_wtf.csrf import CSRFError, validate_csrf
from wtforms.validators import ValidationError

from campaigns.deadletters import discard_dead_letters, requeue_dead_letters
from campaigns.errors import error_response
from extensions import csrf
from ops.status import forget_dead_letters, ops_status

log = logging.getLogger(__name__)
bp = Blueprint("ops", __name__)
ACTIONS = {"requeue": requeue_dead_letters, "discard": discard_dead_letters}


def client_strings():
    """The strings ops.js shows, translated (``%(name)s`` placeholders filled in by the script)."""
    return {
        "requeue": _("Requeue"),
        "discard": _("Discard"),
        "confirm_requeue": _("Requeue %(what)s to campaign.events?"),
        "confirm_discard": _("Discard %(what)s for good?"),
        "all_of": _("every dead letter with reason %(reason)s"),
        "this_one": _("this dead letter"),
        "done": _("%(action)s: %(done)s done, %(kept)s left"),
        "none": _("None."),
        "scanned": _("Looked at the oldest %(scanned)s of %(total)s."),
        "this_server": _("this server"),
        "updated": _("Updated %(time)s"),
        "failed": _("Could not refresh: %(error)s"),
        "sample": _("Rate and lag from the newest %(n)s events applied in the last minute."),
        "idle": _("No event applied in the last minute."),
    }


@bp.before_request
def admins_only():
    """Hide the whole blueprint from everyone but platform admins (and check CSRF only then).

    The very 404 of a URL that does not exist (an HTML page, or JSON through error_response
    for clients that ask for it), so nothing tells the two apart.
    """
    if not (current_user.is_authenticated and current_user.is_admin):
        abort(404)


@bp.get("")
def page():
    """The ops page; its figures come from ``GET /ops/status``, polled."""
    return render_template("ops/ops.html", status=ops_status(), js_strings=client_strings(), tenant=None, tenants=[])


@bp.get("/status")
def status():
    """Workers, dead letters, servers and recent errors as JSON."""
    return ops_status()


@bp.post("/dead-letters/<action>")
@csrf.exempt  # checked in the view, after admins_only: for others this route must not exist
def dead_letters(action):
    """Requeue or discard one dead letter (``id``) or those of a reason code (``reason``)."""
    try:
        validate_csrf(request.headers.get("X-CSRFToken") or request.form.get("csrf_token"))
    except (ValidationError, CSRFError) as exc:
        return error_response(400, "bad_request", f"CSRF check failed: {exc}")
    if action not in ACTIONS:
        return error_response(404, "not_found", "no such action")
    letter, reason = request.form.get("id"), request.form.get("reason")
    if not letter and not reason:
        return error_response(400, "bad_request", "give the id of a dead letter or a reason")
    url = current_app.config["EVENTS_BROKER_URL"]
    try:
        done, kept = ACTIONS[action](url, reason=reason or None, ids={letter} if letter else None)
    except Exception as exc:  # noqa: BLE001 - the broker's failure, told to the admin
        log.warning("[WORKER] %s of dead letters failed: %s", action, exc)
        return error_response(503, "unavailable", f"the broker did not answer: {exc.__class__.__name__}")
    finally:
        forget_dead_letters()
    log.info("[WORKER] admin %s: %s %d dead letters (id=%s reason=%s)", current_user.id, action, done, letter, reason)
    return {"action": action, "done": done, "kept": kept}
