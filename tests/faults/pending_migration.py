"""A database one migration behind the code, whatever the project's newest migration is.

Deployments run the new code before (or without) ``flask db upgrade`` now and then. To get
there without depending on what the real newest migration changes, the test works on a copy
of ``migrations/`` with one more revision on top of the real head: it adds a column the
worker reads and writes on every batch (``campaigns.last_error``). The database is stamped at
that revision and downgraded by one with ``flask db downgrade``, which drops the column: the
code now needs a migration the database has not had. ``upgrade()`` is the operator's
``flask db upgrade``.
"""

import os
import shutil
import subprocess
import uuid

from alembic.script import ScriptDirectory

from tests import support

TABLE, COLUMN = "campaigns", "last_error"

REVISION = '''"""fault test: the column that the code's newest migration adds"""
from alembic import op
import sqlalchemy as sa

revision = "{revision}"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("{table}", sa.Column("{column}", sa.Text(), nullable=True))


def downgrade():
    op.drop_column("{table}", "{column}")
'''


class PendingMigration:
    """A copy of ``migrations/`` with one revision more; see the module docstring."""

    def __init__(self, base_dir, database_url):
        self.directory = base_dir / "migrations"
        shutil.copytree(support.REPO / "migrations", self.directory, ignore=shutil.ignore_patterns("__pycache__"))
        self.head = ScriptDirectory(str(self.directory)).get_current_head()
        self.revision = f"fault_{uuid.uuid4().hex[:8]}"
        text = REVISION.format(revision=self.revision, head=self.head, table=TABLE, column=COLUMN)
        (self.directory / "versions" / f"{self.revision}.py").write_text(text)
        self.database_url = database_url

    def flask_db(self, *args):
        """``flask --app app db <args> -d <the copy>`` against the database, as an operator runs it."""
        env = {**os.environ, "DATABASE_URL": self.database_url, "BROKER_URL": "memory://"}
        subprocess.run(
            [support.PYTHON, "-m", "flask", "--app", "app", "db", *args, "-d", str(self.directory)],
            cwd=support.REPO,
            env=env,
            check=True,
            capture_output=True,
        )

    def fall_behind(self):
        """Stamp the database at the extra revision, then ``db downgrade`` one revision (drops the column)."""
        self.flask_db("stamp", self.revision)
        self.flask_db("downgrade")

    def upgrade(self):
        """``flask db upgrade``: the column is back."""
        self.flask_db("upgrade")
