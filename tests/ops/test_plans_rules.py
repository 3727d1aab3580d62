"""ops/prometheus/plans.yml: promtool's check and unit tests, and every metric the rules read
is one the replica exposes."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, generate_latest

from engine.market.metrics import MarketMetrics
from engine.plans.metrics import PlanMetrics
from tests.ops.test_prometheus_rules import PROM, needs_promtool, promtool

RULES = PROM / "plans.yml"


@needs_promtool
def test_rules_check_and_their_unit_tests_pass() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(PROM / "plans.test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_rules_read_only_exposed_metrics() -> None:
    registry = CollectorRegistry()
    plans = PlanMetrics(registry)
    market = MarketMetrics(registry)
    plans.failures.labels("crosses").inc()
    market.up.labels("sim").set(1)
    market.cache.labels("hit").inc()
    exposed = set(re.findall(r"^(haexec_\w+?)(?:\{| )", generate_latest(registry).decode(), re.M))
    used = set(re.findall(r"haexec_\w+", RULES.read_text())) - {
        "haexec_plans"  # the group's name
    }
    assert used <= exposed, used - exposed


def test_every_alert_has_its_runbook_section() -> None:
    readme = (PROM.parent / "README.md").read_text()
    headings = {h.lower() for h in re.findall(r"^### (\w+)", readme, re.M)}
    for name, anchor in re.findall(r"- alert: (\w+).*?ops/README\.md#([a-z]+)", RULES.read_text(), re.S):
        assert anchor == name.lower() and anchor in headings, name
