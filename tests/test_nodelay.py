"""TCP_NODELAY on the eventlet server's connections (sockets/nodelay.py)."""

import json
import subprocess

from tests import support


def test_every_accepted_connection_has_nagle_off():
    """Also fails loudly when an eventlet upgrade stops honouring ``protocol=`` or ``setup``."""
    result = subprocess.run(
        [support.PYTHON, "-m", "tests.nodelay_child"], capture_output=True, text=True, timeout=60, cwd=support.REPO
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == dict.fromkeys(found, True), found
