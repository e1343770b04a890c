"""The embedded demo of ``make run``: SQLite, in-process broker, worker and simulator.

Put together here, outside the app and the worker: ``python app.py`` calls it without
``DATABASE_URL`` and ``BROKER_URL``; nothing in campaigns/ or worker/ knows of it.
"""

import logging

from flask_migrate import upgrade

from campaigns.models import Tenant, User
from campaigns.publisher import EventPublisher
from campaigns.simulator import DEMO_TENANTS, CampaignSimulator
from campaigns.tokens import mint_token
from extensions import db, socketio
from sockets.stream import LocalUpdateStream
from sockets.tenants import tenant_states
from worker.runner import run_embedded_worker

log = logging.getLogger(__name__)


DEMO_USERS = (("admin@demo.test", None, True), ("ana@acme.test", "acme", False))
DEMO_PASSWORD = "demo-password"


def prepare_demo(app):
    """Create the schema, the demo tenants and users; return a token for the first tenant."""
    with app.app_context():
        upgrade()
        for tenant_id, name in DEMO_TENANTS:
            if db.session.get(Tenant, tenant_id) is None:
                db.session.add(Tenant(id=tenant_id, name=name, last_seq=0))
        db.session.flush()
        for email, tenant_id, is_admin in DEMO_USERS:
            if db.session.scalar(db.select(User).where(User.email == email)) is None:
                user = User(email=email, tenant_id=tenant_id, is_admin=is_admin)
                user.set_password(DEMO_PASSWORD)
                db.session.add(user)
        db.session.commit()
        return mint_token(app.config["JWT_SECRET"], DEMO_TENANTS[0][0], "demo", 24 * 3600)


def run_simulator(app):
    """Play demo campaigns on the in-process broker."""
    publisher = EventPublisher(app.config["EVENTS_BROKER_URL"], confirm=False)
    tenants = [tenant_id for tenant_id, _ in DEMO_TENANTS]
    CampaignSimulator(publisher.publish, tenants).run(sleep=socketio.sleep)


def start_demo(app):
    """Start the worker and the simulator as background tasks of the server."""
    socketio.start_background_task(run_embedded_worker, app, LocalUpdateStream(tenant_states))
    if app.config["SIMULATOR"]:
        socketio.start_background_task(run_simulator, app)
