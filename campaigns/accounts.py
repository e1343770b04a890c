"""Login and logout of the admin pages (Flask-Login, CSRF-protected forms)."""

import hashlib
import logging
import time

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import login_required, login_user, logout_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from campaigns import passwords
from campaigns.models import User
from campaigns.passwords import ChecksBusy, login_matches
from extensions import db, limiter

log = logging.getLogger(__name__)
bp = Blueprint("accounts", __name__)


class LoginForm(FlaskForm):
    """E-mail and password."""

    email = EmailField(_l("E-mail"), validators=[DataRequired(), Length(max=254)])
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(max=200)])


class LogoutForm(FlaskForm):
    """Only the CSRF token."""


def safe_next(target):
    """A local path to go back to after logging in, never another site."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("pages.dashboard")


def login_address_key():
    """Login attempts count per client address (``TRUSTED_PROXIES`` makes it the real one)."""
    return "login-address:" + (request.remote_addr or "")


def login_email_key():
    """Login attempts count per e-mail tried, from any address (stored hashed, not in clear)."""
    email = (request.form.get("email") or "").strip().lower()
    return "login-email:" + hashlib.sha256(email.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["LOGIN_RATE_LIMIT_PER_ADDRESS"], key_func=login_address_key, methods=["POST"])
@limiter.limit(lambda: current_app.config["LOGIN_RATE_LIMIT_PER_EMAIL"], key_func=login_email_key, methods=["POST"])
def login():
    """Show the form; log the user in when the password matches."""
    form = LoginForm()
    error = None
    if form.validate_on_submit():
        user = db.session.scalar(select(User).where(User.email == form.email.data.strip().lower()))
        # Give the connection back before the check: logins queued for scrypt must not hold the
        # pool's connections, or a flood of them would stall every request that needs one.
        db.session.close()
        try:
            matches = login_matches(user, form.password.data)
        except ChecksBusy:
            error = _("The server is busy checking logins. Try again in a few seconds.")
            page = render_template("campaigns/login.html", form=form, error=error)
            return page, 429, {"Retry-After": str(max(1, round(passwords.CHECK_WAIT_SECONDS)))}
        if matches:
            session.clear()
            login_user(user)
            log.info("user %s logged in", user.id)
            return redirect(safe_next(request.args.get("next")))
        error = _("Wrong e-mail or password.")
    return render_template("campaigns/login.html", form=form, error=error), 401 if error else 200


@bp.errorhandler(429)
def too_many_logins(exc):
    """The login page again, saying why and for how long (``Retry-After`` is added by the limiter)."""
    breached = limiter.current_limit
    seconds = max(1, int(breached.reset_at - time.time())) if breached is not None else 60
    error = _("Too many login attempts. Try again in %(seconds)d s.", seconds=seconds)
    return render_template("campaigns/login.html", form=LoginForm(), error=error), 429


@bp.post("/logout")
@login_required
def logout():
    """Log out (POST with a CSRF token, so no other site can log a user out)."""
    if LogoutForm().validate_on_submit():
        logout_user()
        session.clear()
    return redirect(url_for("accounts.login"))
