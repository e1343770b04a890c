"""Fixtures on real PostgreSQL and RabbitMQ: databases, vhosts, app, stacks of processes."""

import pytest

from tests import support


@pytest.fixture(scope="session")
def services():
    """PostgreSQL and RabbitMQ must answer; the test fails with what to start otherwise."""
    support.require_services()


@pytest.fixture(scope="session")
def template_database(services):
    """A migrated database, cloned for each test database."""
    name = support.create_template_database()
    yield name
    support.drop_database(name)


@pytest.fixture
def database(template_database):
    """A fresh migrated database for one test."""
    name = support.create_database(template_database)
    yield name
    support.drop_database(name)


@pytest.fixture(scope="module")
def module_database(template_database):
    """A fresh migrated database shared by one test module."""
    name = support.create_database(template_database)
    yield name
    support.drop_database(name)


@pytest.fixture(scope="module")
def module_vhost(services):
    """A RabbitMQ vhost shared by one test module."""
    name = support.create_vhost()
    yield name
    support.delete_vhost(name)


@pytest.fixture
def vhost(services):
    """A RabbitMQ vhost for one test."""
    name = support.create_vhost()
    yield name
    support.delete_vhost(name)


@pytest.fixture
def make_app(database):
    """``make_app(**settings)``: an app on the test's database, without a message queue (handlers
    run in-process), with settings of the test's choosing; disposed of afterwards."""
    from config import Config
    from extensions import db
    from factory import create_app

    made = []

    def build(**settings):
        config = Config().update(
            DATABASE_URL=support.pg_url(database),
            SQLALCHEMY_DATABASE_URI=support.pg_url(database),
            BROKER_URL="",
            SOCKETIO_MESSAGE_QUEUE_URL="",
            EVENTS_BROKER_URL="memory://",
            DEMO=False,
            SIMULATOR=False,
            JWT_SECRET=support.JWT_SECRET,
            SECRET_KEY=support.SECRET_KEY,
            ASYNC_MODE="threading",
            TESTING=True,
        )
        made.append(create_app(config.update(**settings)))
        return made[-1]

    yield build
    for app in made:
        with app.app_context():
            db.engine.dispose()


@pytest.fixture
def app(make_app):
    """An app on its own database, without a message queue (handlers run in-process)."""
    return make_app()


@pytest.fixture
def db_session(app):
    """The app's scoped session, inside an app context held for the test (no requests here)."""
    from extensions import db

    with app.app_context():
        yield db.session
        db.session.remove()


@pytest.fixture
def store(app):
    """A plain session on the app's database, for tests that also make requests.

    Requests must not run inside an app context the test holds: ``g`` (and the logged-in
    user with it) would be shared between requests.
    """
    from sqlalchemy.orm import Session

    from extensions import db

    with app.app_context():
        engine = db.engine
    with Session(engine) as session:
        yield session


@pytest.fixture(scope="module")
def stack(module_database, module_vhost, tmp_path_factory):
    """One server and one worker on the module's database and vhost (THROTTLE_SECONDS=2)."""
    with support.Stack(module_database, module_vhost, tmp_path_factory.mktemp("logs")) as stack:
        stack.start_server()
        stack.start_worker()
        yield stack


@pytest.fixture
def tenant(stack):
    """A fresh tenant on the module's stack."""
    return stack.create_tenant()


@pytest.fixture
def publisher(stack):
    """A confirming publisher on the module's stack."""
    publisher = stack.publisher()
    yield publisher
    publisher.close()


@pytest.fixture
def clients():
    """Collects ``LiveClient``s and disconnects them after the test."""
    made = []
    yield made
    for client in made:
        client.close()
