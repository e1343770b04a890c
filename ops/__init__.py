"""The operations page for platform admins (``/ops``): workers, dead letters, servers, errors."""

from flask import Blueprint

bp = Blueprint("ops", __name__)

from ops import views  # registers the routes on bp
