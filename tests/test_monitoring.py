"""The Grafana dashboard and the Prometheus alerts name only metrics the code exports.

Every PromQL expression of ``deploy/grafana/campaign-live.json`` and
``deploy/prometheus/alerts.yml`` is parsed for metric names, which are compared with the
samples ``campaigns/metrics.py`` produces (with their ``_total``, ``_bucket``, ``_count`` and
``_sum`` suffixes, as Prometheus scrapes them). A renamed metric fails here, by name.
"""

import inspect
import json
import re
from types import SimpleNamespace

import pytest
import yaml

from campaigns import metrics
from tests.support import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "campaign-live.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
# Not a metric name where they stand: PromQL's operators and modifiers.
KEYWORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left", "group_right", "offset"}
# Series Prometheus makes itself for every scrape target.
PROMETHEUS_OWN = {"up"}
# The series a metric of each type is scraped as (OpenMetrics' _created left out: nobody graphs it).
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expression):
    """The metric names a PromQL expression selects (not functions, keywords, labels or strings)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges ([5m], [$__rate_interval])
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)
    names = set()
    for found in IDENTIFIER.finditer(text):
        if text[found.end() :].lstrip().startswith("(") or found.group() in KEYWORDS:
            continue  # a function call or an operator
        if re.fullmatch(r"\d", text[found.start() - 1 : found.start()] or "x"):
            continue  # the exponent or unit of a number (1e3)
        names.add(found.group())
    return names


def exported_samples():
    """Names of every sample ``campaigns/metrics.py`` exports, collectors included."""
    collectors = [value for value in vars(metrics).values() if hasattr(value, "collect") and not inspect.isclass(value)]
    custom = {
        metrics.ConnectionsCollector: metrics.ConnectionsCollector([], lambda sid: "websocket"),
        metrics.PacketWritesCollector: metrics.PacketWritesCollector(SimpleNamespace(direct=0, queued=0)),
        metrics.WorkerReadyCollector: metrics.WorkerReadyCollector(SimpleNamespace(readiness=lambda: (True, {}))),
    }
    declared = {
        value for value in vars(metrics).values() if inspect.isclass(value) and value.__name__.endswith("Collector")
    }
    assert declared == set(custom), f"a collector of campaigns/metrics.py is not listed here: {declared - set(custom)}"
    names = set()
    for collector in [*collectors, *custom.values()]:
        for family in collector.collect():
            # A labelled metric has no sample before its first use: its type says what it will scrape as.
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
            names.update(sample.name for sample in family.samples)
    return names


def expressions():
    """``(file, expression)`` of every PromQL expression in the dashboard and the alerts."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    found.append((DASHBOARD.name, value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text()))
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        found += [(ALERTS.name, rule["expr"]) for rule in group["rules"]]
    return found


def unknown_metrics(pairs, exported):
    """``[(file, name, expression)]`` for each metric name no code exports."""
    return [
        (where, name, expression)
        for where, expression in pairs
        for name in sorted(metric_names(expression))
        if name not in exported and name not in PROMETHEUS_OWN
    ]


def test_every_dashboard_and_alert_expression_names_an_exported_metric():
    pairs = expressions()
    assert (
        len([p for p in pairs if p[0] == DASHBOARD.name]) >= 16 and len([p for p in pairs if p[0] == ALERTS.name]) >= 6
    )
    unknown = unknown_metrics(pairs, exported_samples())
    assert not unknown, "metrics no code exports: " + "; ".join(
        f"{name} in {where}: {expr}" for where, name, expr in unknown
    )


def test_every_alert_says_how_bad_and_what_to_do():
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    assert {"CampaignLiveWorkerDown", "CampaignLiveLagHigh", "CampaignLiveDeadLettersRising"} <= names
    assert "CampaignLiveFailureAlerts" in names and len(names) == len(rules)
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_the_dashboard_covers_what_operators_look_at():
    used = set().union(*(metric_names(expression) for _, expression in expressions()))
    for name in (
        "campaign_live_connected_clients",
        "campaign_live_updates_emitted_total",
        "campaign_live_updates_merged_total",
        "campaign_live_receive_to_emit_seconds_bucket",
        "campaign_live_dead_lettered_total",
        "campaign_live_http_requests_total",
        "campaign_live_failure_alerts_raised_total",
        "campaign_live_worker_retries_total",
        "campaign_live_worker_ready",
        "campaign_live_event_loop_lag_seconds_bucket",
    ):
        assert name in used, name


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ('sum by (le) (rate(a_bucket{job="x", le!="1"}[5m])) or vector(0)', {"a_bucket"}),
        ("histogram_quantile(0.99, sum without (instance) (rate(b_sum[$__rate_interval]))) > 1e3", {"b_sum"}),
        ('absent(up{job="w"} == 1) and on(job) c_total offset 5m', {"up", "c_total"}),
        ("d / ignoring(reason) group_left e", {"d", "e"}),
    ],
)
def test_the_expression_parser_finds_metric_names_only(expression, names):
    assert metric_names(expression) == names


def test_an_unknown_metric_is_reported_by_name():
    unknown = unknown_metrics([("alerts.yml", "rate(campaign_live_events_applyed_total[5m])")], exported_samples())
    assert [name for _, name, _ in unknown] == ["campaign_live_events_applyed_total"]
    assert "campaign_live_receive_to_emit_seconds_bucket" in exported_samples()
    assert "campaign_live_socketio_packets_sent_total" in exported_samples()
