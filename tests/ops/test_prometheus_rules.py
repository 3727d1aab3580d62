"""ops/prometheus (alert rules, their promtool unit tests, the scrape example) and the Grafana
dashboard in ops/grafana."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO

PROM = REPO / "ops" / "prometheus"
RULES = PROM / "alerts.yml"
RULE_TESTS = (PROM / "alerts.test.yml", PROM / "alerts.hour.test.yml")
DASHBOARD = REPO / "ops" / "grafana" / "haexec.json"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found on PATH: `apt-get install prometheus` (Debian/Ubuntu; it ships "
    "/usr/bin/promtool) or take promtool from a release at https://prometheus.io/download/",
)

# What the replicas expose (README, coordinator and engine metrics).
METRICS = {
    "haexec_is_leader",
    "haexec_leader_epoch",
    "haexec_leadership_changes_total",
    "haexec_split_brain_total",
    "haexec_db_sync_attempts_total",
    "haexec_db_sync_failures_total",
    "haexec_last_heartbeat_timestamp_seconds",
    "haexec_lease_renew_seconds",
    "haexec_signals_total",
    "haexec_signal_latency_seconds",
    "haexec_in_doubt",
    "haexec_broker_circuit_open",
}
HISTOGRAMS = {"haexec_lease_renew_seconds", "haexec_signal_latency_seconds"}
SERIES = (METRICS - HISTOGRAMS) | {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}

# Panels the dashboard must have (by title).
PANELS = {
    "Leader per instance",
    "Leader epoch",
    "Leadership changes",
    "DB sync failure rate",
    "Leader heartbeat age",
    "Lease renew latency",
    "Signal outcomes",
    "Signal latency p50 / p99",
    "Signals in doubt",
    "Broker circuit",
}

# Grafana variables and what they stand for when a query is checked as PromQL.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$cluster": ".*"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=str(REPO))


# ---- alert rules ----


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_prometheus_example_config_is_valid_and_loads_the_rules() -> None:
    result = promtool("check", "config", str(PROM / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alerts.yml" in result.stdout


def alert_blocks() -> dict[str, str]:
    """Alert name -> the text of its rule in alerts.yml."""
    text = RULES.read_text()
    starts = list(re.finditer(r"^\s*- alert: (\S+)\s*$", text, re.M))
    assert starts, "no alerts in alerts.yml"
    blocks = {}
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        blocks[m.group(1)] = text[m.start() : end]
    return blocks


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    for name, block in alert_blocks().items():
        assert re.search(r"^\s+severity: (critical|warning)\s*$", block, re.M), f"{name}: severity"
        for annotation in ("summary", "description", "runbook"):
            assert re.search(rf"^\s+{annotation}: \S", block, re.M), f"{name}: {annotation}"
        anchor = re.search(r"ops/README\.md#([a-z]+)", block)
        assert anchor, f"{name}: runbook must point at a section of ops/README.md"
        headings = {h.strip().lower() for h in re.findall(r"^#+ (.+)$", (REPO / "ops" / "README.md").read_text(), re.M)}
        assert anchor.group(1) in headings, f"{name}: ops/README.md has no section {anchor.group(1)}"


def rule_test_cases() -> list[tuple[str, bool]]:
    """(alertname, fires?) for every alert_rule_test entry of the rule test files. Their
    entries start with `- eval_time:` or `- {eval_time:`; one that expects alerts lists
    exp_labels, one that expects none says `exp_alerts: []`."""
    cases = []
    entries = [e for t in RULE_TESTS for e in re.split(r"^\s*- \{?eval_time:", t.read_text(), flags=re.M)[1:]]
    for entry in entries:
        entry = re.split(r"^\s*- (?:name|interval|series):", entry, flags=re.M)[0]
        name = re.search(r"alertname: (\w+)", entry)
        assert name, f"entry without alertname: {entry[:200]}"
        fires = "exp_labels" in entry
        assert fires != bool(re.search(r"exp_alerts: \[\]", entry)), f"unclear entry: {entry[:200]}"
        cases.append((name.group(1), fires))
    return cases


def test_every_alert_has_firing_and_silent_unit_tests() -> None:
    cases = set(rule_test_cases())
    for name in alert_blocks():
        assert (name, True) in cases, f"{name}: no promtool test where it fires"
        assert (name, False) in cases, f"{name}: no promtool test where it must stay silent"
    unknown = {name for name, _ in cases} - set(alert_blocks())
    assert not unknown, f"tests for alerts that do not exist: {unknown}"


# ---- Grafana dashboard ----

PROMQL_WORDS = {
    # aggregations and binary operators
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: identifiers that are neither functions,
    keywords, label names (in braces and by/on/... lists) nor durations."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w:.$])[A-Za-z_:][\w:]*", e):
        if e[m.end() :].lstrip().startswith("("):
            continue  # function or aggregation
        if m.group(0).lower() in PROMQL_WORDS:
            continue
        names.add(m.group(0))
    return names


def test_metric_name_extraction() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(haexec_signal_latency_seconds_bucket{cluster=~"$cluster"}'
        "[$__rate_interval])))"
    ) == {"haexec_signal_latency_seconds_bucket"}
    assert metric_names(
        "time() - haexec_last_heartbeat_timestamp_seconds and on (job, instance) haexec_is_leader == 1"
    ) == {"haexec_last_heartbeat_timestamp_seconds", "haexec_is_leader"}
    assert metric_names("sum(x offset 1h) or vector(0) > bool 1e3") == {"x"}


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows hold their panels
    return out


def test_dashboard_is_a_grafana_model_with_a_datasource_variable() -> None:
    d = load_dashboard()
    assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(d):
        grid = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid) and grid["x"] + grid["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], f"{p['title']}: no targets"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            assert t["expr"].strip() and t["refId"], p["title"]
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${datasource}", v["name"]


def test_dashboard_has_the_panels_and_queries_only_haexec_metrics() -> None:
    d = load_dashboard()
    titles = {p["title"] for p in panels(d)}
    assert PANELS <= titles, f"missing panels: {PANELS - titles}"
    used: set[str] = set()
    for p in panels(d):
        for t in p.get("targets", []):
            names = metric_names(t["expr"])
            assert names, f"{p['title']}: {t['expr']} selects no metric"
            assert names <= SERIES, f"{p['title']}: unknown metric(s) {names - SERIES} in {t['expr']}"
            used |= names
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+)\s*,\s*\w+\)", v["definition"])
            assert m and m.group(1) in SERIES, f"variable {v['name']}: {v['definition']}"
    unused = {m for m in METRICS if m not in used and not {f"{m}_bucket"} & used}
    assert not unused, f"metrics without a panel: {unused}"


@needs_promtool
def test_dashboard_queries_are_valid_promql() -> None:
    """Every query, with Grafana's variables substituted, as a recording rule that promtool
    parses (JSON is YAML)."""
    rules = []
    for p in panels(load_dashboard()):
        for t in p.get("targets", []):
            expr = t["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"{p['title']}: unknown variable in {t['expr']}"
            rules.append({"record": f"dashboard:panel_{p['id']}_{t['refId']}", "expr": expr})
    workdir = Path(tempfile.mkdtemp(prefix="haexec-dashboard-"))
    try:
        path = workdir / "dashboard_rules.yml"
        path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
        result = promtool("check", "rules", str(path))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SUCCESS: {len(rules)} rules found" in result.stdout
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
