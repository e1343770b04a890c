"""Unbound extension instances; ``create_app`` binds them with ``init_app``."""

from flask_babel import Babel
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_socketio import SocketIO
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base of every model."""


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
socketio = SocketIO()
login = LoginManager()
limiter = Limiter(key_func=get_remote_address, headers_enabled=True)
csrf = CSRFProtect()
babel = Babel()
