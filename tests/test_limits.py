"""Client budgets (sockets/limits.py): client events per connection, connect attempts per credential."""

from sockets.limits import ConnectThrottle, EventBudget
from tests.support import wait_until


def test_the_event_budget_refuses_beyond_its_burst_until_its_window_is_over():
    budget = EventBudget(burst=2, rate=2.0)  # 2 events within any 1 s
    assert [budget.take() for _ in range(3)] == [True, True, False]
    assert budget.refusals == 1
    assert EventBudget(burst=2, rate=2.0).take(), "another connection's budget is its own"
    assert wait_until(budget.take, 3, 0.05, "the budget's window to be over")


def test_the_connect_throttle_slows_then_refuses_and_forgets_refilled_credentials(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("sockets.limits.time.monotonic", lambda: clock[0])
    throttle = ConnectThrottle(burst=2, rate=1.0, max_wait=1.5)
    assert [throttle.reserve("t") for _ in range(2)] == [0.0, 0.0]
    assert throttle.reserve("t") == 1.0  # held one second
    assert throttle.reserve("t") is None  # would wait 2 s: refused
    assert throttle.reserve("other") == 0.0
    clock[0] += 10
    throttle.prune()
    assert throttle._tokens == {}


def test_a_cleared_budget_leaves_nothing_in_the_storage():
    """limits' in-memory storage keeps an expired key (empty) and walks every key on each expiry
    pass: a connection's budget is cleared when it ends, or every past connection would stay."""
    from sockets.limits import moving_window

    budgets = [EventBudget(burst=2, rate=2.0) for _ in range(50)]
    for budget in budgets:
        budget.take()
    storage = moving_window().storage
    keys = {budget.limit.key_for("socket-events", budget.key) for budget in budgets}
    assert keys <= set(storage.events)
    for budget in budgets:
        budget.clear()
    assert not keys & set(storage.events)
