"""`python -m bench.plans` in short form: 50 plans on the replayed 20-symbol feed for a few
minutes, every triggered plan executed once and every figure measured."""

from __future__ import annotations

from bench.plans import run


def test_bench_plans_short_form(database_url: str) -> None:
    r = run(n_plans=50, minutes=7, database_url=database_url, seed=3)
    assert len(r.signal_ms) == 3  # FLIP crosses at the close of every odd minute's bar
    assert len(r.round_ms) == 7 and len(r.evaluation_ms) == 350 and len(r.mtf_ms) == 7
    assert r.shared_ratio > 0.5 and 0 < r.hit_ratio <= 1
    assert r.rss_plans_mb < 100
