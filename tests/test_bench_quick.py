"""Every benchmark works: each ``bench/*.py`` runs with ``--quick`` (exit status 0) and writes its
JSON with its key figures present and sane (nothing lost). Never its speed: that is what the
benchmarks themselves report."""

import json
import subprocess

import pytest

from tests import support


def check_ingest(result):
    assert result["exactness"]["passed"], result["exactness"]["problems"]
    assert result["worker"]["events"] == result["bare"]["events"] == 2000
    assert result["exactness"]["dead_lettered"] == 0
    assert result["worker"]["rate"] > 0 and result["bare"]["rate"] > 0


def check_latency(result):
    assert result["samples"] > 0
    assert result["missing_pairs"] == result["disconnected_clients"] == 0
    assert result["received_pairs"] == result["expected_pairs"] == result["samples"] * 10
    assert result["latency_ms"]["p99"] > 0 and result["fanout_spread_ms"]["count"] == result["samples"]


def check_polling_vs_socket(result):
    polling, socket_ = result["phases"]["polling"], result["phases"]["socket"]
    assert set(result["phases"]) == {"idle", "polling", "socket", "idle_after"}
    assert polling["delivered"] > 0 and set(polling["statuses"]) <= {"200", "304"}
    assert socket_["connected_at_start"] == socket_["connected_at_end"] == socket_["dashboards"] == 100
    # The expected count is approximate (updates in flight at the window's edges); gaps are losses.
    assert socket_["delivered"] > 0 and socket_["expected_updates"] > 0
    assert socket_["seq_gaps_in_window"] == 0 and socket_["connect"]["errors"] == 0
    assert result["ratio_polling_over_socket"] > 0


def check_soak(result):
    delivery = result["delivery"]
    assert result["ok"]
    assert result["connect"]["connected"] == 100 and delivery["disconnected"] == 0
    assert delivery["clients_missing_after_final_replay"] == 0 and delivery["reached_final_state"] == 100
    assert delivery["live"] + delivery["replayed"] >= delivery["expected_updates"] > 0
    assert delivery["duplicates"] == delivery["out_of_order"] == delivery["foreign"] == 0
    assert result["traffic"]["final_state_reached"] and len(result["samples"]) >= 2
    assert all(result["memory"][name]["last_avg_mb"] > 0 for name in ("server", "worker", "clients"))


def check_vs_peer(result):
    assert result["failed"] == []
    reports = {report["scenario"]: report for report in result["scenarios"]}
    assert set(reports) == {"idle-200", "quick-200"}
    assert [target["name"] for target in reports["idle-200"]["targets"]] == ["peer", "campaign-live"]
    # --via-nginx: the runner's scenarios get campaign-live behind deploy/nginx.conf too
    assert [target["name"] for target in reports["quick-200"]["targets"]] == [
        "peer",
        "campaign-live",
        "campaign-live.nginx",
    ]
    for report in reports.values():
        for target in report["targets"]:
            assert target["summary"]["connected"] == 200
    for target in reports["idle-200"]["targets"]:
        assert target["summary"]["rss_kb_per_conn"] > 0 and target["summary"]["cpu_rest_pct_all"] >= 0
    for target in reports["quick-200"]["targets"]:
        assert target["summary"]["probes_lost"] == 0
    # campaign-live's legs: each probe of every round (warm-up included) seen on the message queue and
    # by the websocket observer, each after its publish and no later than at the observer
    legs = reports["quick-200"]["legs"]
    assert legs["observer_failure"] is None
    # (the rounds of both campaign-live targets publish on its broker)
    probes = 10 * (result["args"]["repeat"] + result["args"]["warmup"]) * 2
    assert legs["message_queue_ms"]["count"] == legs["websocket_observer_ms"]["count"] == probes
    assert 0 < legs["message_queue_ms"]["p50"] <= legs["websocket_observer_ms"]["max"]


def check_poll_request_cost(result):
    assert set(result["rounds"]) == {"eventlet", "campaign-live"}
    for rounds in result["rounds"].values():
        assert len(rounds) == result["args"]["rounds"] == 1
        # Every request answered, by Engine.IO (an unknown session), not by a refused connection.
        assert {found["status"] for found in rounds} == {"HTTP/1.1 400 BAD REQUEST"}
        assert all(found["us_per_request"] > 0 and found["requests_per_s"] > 0 for found in rounds)


# Options of a quick run beyond --quick.
EXTRA_ARGS = {"vs_peer": ["--via-nginx"]}
CHECKS = {"ingest": check_ingest, "latency": check_latency, "polling_vs_socket": check_polling_vs_socket,
          "soak": check_soak, "vs_peer": check_vs_peer, "poll_request_cost": check_poll_request_cost}


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Every benchmark's ``--quick`` run, started together: most of a quick run is waiting (set-up,
    windows, teardown), so together they take about as long as the longest one."""
    logs = tmp_path_factory.mktemp("bench-quick")
    runs = {}
    for name in CHECKS:
        (support.REPO / "bench" / "results" / f"test-quick-{name}.json").unlink(missing_ok=True)
        with open(logs / f"{name}.log", "wb") as log:
            runs[name] = subprocess.Popen([support.PYTHON, f"bench/{name}.py", "--quick", *EXTRA_ARGS.get(name, ()),
                                           "--output", f"test-quick-{name}"], cwd=support.REPO, stdout=log,
                                          stderr=subprocess.STDOUT)
    yield {name: (process, logs / f"{name}.log") for name, process in runs.items()}
    for name, process in runs.items():
        if process.poll() is None:
            process.terminate()  # the benchmark cleans up on SIGTERM
            process.wait(60)
        (support.REPO / "bench" / "results" / f"test-quick-{name}.json").unlink(missing_ok=True)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_quick_run(quick_runs, name):
    process, log = quick_runs[name]
    assert process.wait(300) == 0, log.read_text(errors="replace")[-4000:]
    CHECKS[name](json.loads((support.REPO / "bench" / "results" / f"test-quick-{name}.json").read_text()))
