"""The dead-letter CLI: list refused messages with reasons, requeue them after a fix."""

import json
import subprocess

from tests import support
from tests.support import event, wait_until


def flask_cli(stack, *args):
    result = subprocess.run(
        [support.PYTHON, "-m", "flask", "--app", "app", *args],
        cwd=support.REPO, env=stack.env(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_dead_letters_are_listed_and_requeued_after_the_fix(stack, publisher):
    late_tenant = f"late{support.uuid.uuid4().hex[:8]}"
    early = event(late_tenant, "c1", "campaign_started", name="Too early", total_messages=2)
    publisher.publish(early)
    publisher.publish_raw(b"{broken", f"{late_tenant}.message_sent")
    listing = wait_until(
        lambda: (out := flask_cli(stack, "dead-letters", "list")) and out.count(late_tenant) >= 2 and out, 15
    )
    assert f"unknown_tenant: {late_tenant}" in listing and "invalid_json" in listing
    assert flask_cli(stack, "dead-letters", "list").count(late_tenant) >= 2, "listing must not consume"
    stack.create_tenant(late_tenant)
    out = flask_cli(stack, "dead-letters", "requeue", "--reason", "unknown_tenant", "--yes")
    assert out.strip().startswith("requeued ") and "requeued 0" not in out
    state = wait_until(lambda: stack.campaign(late_tenant, "c1"), 15, message="the requeued event applied")
    assert (state["name"], state["total"], state["version"]) == ("Too early", 2, 1)
    remaining = flask_cli(stack, "dead-letters", "list")
    assert f"unknown_tenant: {late_tenant}" not in remaining
    assert "invalid_json" in remaining and json.dumps(early)[:20] not in remaining
