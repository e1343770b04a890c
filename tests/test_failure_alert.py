"""The failure alert with two workers and across a worker restart (CONTRACT.md section 2)."""

from tests import support
from tests.support import event, wait_until


def alerts_in(updates, campaign_id):
    """The ``failure_alert`` of each update of a campaign, in ``seq`` order."""
    ordered = sorted(updates, key=lambda u: u["seq"])
    return [u["campaign"]["failure_alert"] for u in ordered if u["campaign"]["id"] == campaign_id]


def test_two_workers_raise_one_alert_that_survives_a_restart_and_clears(database, vhost, tmp_path):
    settings = {"FAILURE_ALERT_MIN_MESSAGES": 20, "FAILURE_ALERT_RATE": 0.5, "WORKER_BATCH_SIZE": 5}
    with support.Stack(database, vhost, tmp_path, **settings) as stack:
        stack.start_server()
        first, _second = stack.start_worker(), stack.start_worker()
        tenant = stack.create_tenant()
        watcher = stack.client(tenant)
        try:
            with stack.publisher() as publisher:
                publisher.publish(event(tenant, "c1", "campaign_started", name="C1", total_messages=1000))
                # 12 failed of 24: 50 % over 24 messages, spread over both workers in batches of 5.
                for number in range(24):
                    kind = "message_failed" if number % 2 else "message_sent"
                    publisher.publish(event(tenant, "c1", kind, message_id=f"m{number}", error="banned"))
                watcher.wait_campaign("c1", lambda c: c["failure_alert"] is not None, timeout=10)
                raised = next(a for a in alerts_in(watcher.updates, "c1") if a)
                assert raised["rate"] >= 0.5 and raised["window_seconds"] == 60

                first.stop()  # the window lives in the campaign's row, not in a worker
                stack.start_worker()
                for number in range(24, 40):
                    publisher.publish(event(tenant, "c1", "message_failed", message_id=f"m{number}", error="banned"))
                wait_until(
                    lambda: stack.sql("SELECT failed FROM campaigns WHERE tenant_id = %s", (tenant,))[0][0] == 28,
                    10,
                    message="every failure applied",
                )
                row = stack.sql("SELECT failure_alert FROM campaigns WHERE tenant_id = %s", (tenant,))[0][0]
                assert row["since"] == raised["since"], "the alert kept its start across the restart"
                assert row["rate"] == 28 / 40

                # 120 successes: the share falls below 25 % and the alert clears, at once.
                for number in range(40, 160):
                    publisher.publish(event(tenant, "c1", "message_sent", message_id=f"m{number}"))
                watcher.wait_campaign("c1", lambda c: c["failure_alert"] is None and c["sent"] > 12, timeout=10)
            alerts = alerts_in(watcher.updates, "c1")
            transitions = [(a is None, b is None) for a, b in zip(alerts, alerts[1:]) if (a is None) != (b is None)]
            assert transitions == [(True, False), (False, True)], "raised once, cleared once"
            assert watcher.seqs() == sorted(watcher.seqs())
        finally:
            watcher.close()
