"""Institutional signatures on hand-made bars, with the patterns each sequence holds written
out (kind, the bar it belongs to, the bar that confirmed it), and the causality replay for
every detector: the patterns found on the bars up to T are exactly the full series'
patterns confirmed by T, and every condition's reading on the prefix is the full series'."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from engine.market.base import Bars, Timeframe
from engine.plans.conditions import structure
from engine.plans.conditions.base import Pattern, Truth
from engine.plans.conditions.structure import Settings, scan, to_pattern
from tests.conditions_support import T0, bars_of, close_of, parse, refused, replay, snapshot_at

M5 = {"symbol": "EURUSD", "timeframe": "M5"}

# up to a swing high (bar 2), down to a swing low (bar 4), a break up (7), back down through
# the low (10: a change of character), a retest of the failed block (12), a break down (13)
STRUCTURE = bars_of(
    [
        (100, 105, 95, 100),
        (100, 110, 98, 108),
        (108, 120, 105, 115),
        (115, 116, 100, 102),
        (102, 104, 90, 92),
        (92, 100, 91, 99),
        (99, 118, 97, 117),
        (117, 125, 116, 124),
        (124, 124, 110, 112),
        (112, 113, 95, 96),
        (96, 97, 85, 86),
        (86, 100, 84, 99),
        (99, 103, 88, 89),
        (89, 90, 80, 81),
    ]
)
STRUCTURE_FOUND = [
    ("swing_high", 2, 3),
    ("fvg_down", 3, 4),
    ("swing_low", 4, 5),
    ("bos_up", 7, 7),  # close 124 over the swing high 120, no trend before: a break of structure
    ("order_block_up", 4, 7),  # the last down bar before the break: zone 90-104
    ("fvg_up", 6, 7),  # bar 7's low 116 over bar 5's high 100
    ("swing_high", 7, 8),
    ("mitigation_up", 4, 9),  # bar 9's low 95 back inside the block
    ("fvg_down", 8, 9),
    ("breaker_down", 4, 10),  # bar 10 closes 86 under the block's low 90: it failed
    ("choch_down", 10, 10),  # and under the swing low 90 against the up trend
    ("order_block_down", 7, 10),
    ("fvg_down", 9, 10),
    ("breaker_retest_down", 12, 12),  # up into the breaker (high 103 >= 90), closes 89 under it
    ("swing_low", 11, 12),
    ("bos_down", 13, 13),  # under the swing low 84, with the trend
    ("order_block_down", 11, 13),
    ("swing_high", 12, 13),
]

# a high swept (wick 123 over 120, close 118 under it), then a low swept (wick 97, close 101)
SWEEPS = bars_of(
    [
        (100, 105, 95, 100),
        (100, 110, 98, 108),
        (108, 120, 105, 115),
        (115, 116, 100, 102),
        (102, 123, 101, 118),
        (118, 119, 97, 101),
    ]
)
SWEEPS_FOUND = [
    ("swing_high", 2, 3),
    ("liquidity_sweep_high", 4, 4),
    ("swing_low", 3, 4),
    ("liquidity_sweep_low", 5, 5),
    ("swing_high", 4, 5),
]

# two breaks up leave two up blocks (bars 2 and 5); the fall mitigates both within 2 bars
CASCADE = bars_of(
    [
        (100, 104, 99, 103),
        (103, 110, 102, 108),
        (108, 109, 100, 101),
        (101, 112, 100, 111),
        (111, 120, 110, 118),
        (118, 119, 112, 113),
        (113, 125, 112, 124),
        (124, 126, 121, 122),
        (122, 123, 115, 116),
        (116, 117, 105, 106),
    ]
)
CASCADE_FOUND = [
    ("swing_high", 1, 2),
    ("bos_up", 3, 3),
    ("order_block_up", 2, 3),
    ("fvg_up", 3, 4),
    ("swing_high", 4, 5),
    ("bos_up", 6, 6),
    ("order_block_up", 5, 6),
    ("fvg_up", 6, 7),
    ("mitigation_up", 5, 8),
    ("swing_high", 7, 8),
    ("mitigation_up", 2, 9),
    ("mitigation_cascade_up", 9, 9),
    ("breaker_down", 5, 9),
    ("fvg_down", 8, 9),
]


def found(bars: Bars, s: Settings) -> list[tuple[str, int, int]]:
    return [(f.kind, f.bar, f.confirmed) for f in scan(bars, s)]


@pytest.mark.parametrize(
    ("bars", "expected"),
    [(STRUCTURE, STRUCTURE_FOUND), (SWEEPS, SWEEPS_FOUND), (CASCADE, CASCADE_FOUND)],
    ids=["structure", "sweeps", "cascade"],
)
def test_scan_finds_the_patterns_written_out(bars: Bars, expected: list[tuple[str, int, int]]) -> None:
    assert found(bars, Settings(k=1)) == expected


def test_swings_wait_k_bars_to_the_right() -> None:
    # with k = 2 the swing high at bar 2 needs bars 3 and 4 under it: confirmed at bar 4
    assert ("swing_high", 2, 4) in found(STRUCTURE, Settings(k=2))
    assert ("swing_high", 2, 3) not in found(STRUCTURE, Settings(k=2))


def test_fair_value_gap_size_filter() -> None:
    gaps = [f for f in found(STRUCTURE, Settings(k=1, min_gap=Decimal("0.10"))) if f[0].startswith("fvg")]
    # gaps in points: bar 3's 1, bar 6's 16, bar 8's 3, bar 9's 13; 0.10 is 10 points
    assert gaps == [("fvg_up", 6, 7), ("fvg_down", 9, 10)]


def at(obj: dict[str, object], bars: Bars, i: int) -> Truth:
    return parse({**M5, "k": 1, **obj}).evaluate(snapshot_at(bars, i)).truth


def test_break_conditions_and_their_patterns() -> None:
    bos = parse({"type": "break_of_structure", **M5, "direction": "up", "k": 1, "within": 1, "lookback": 8})
    reading = bos.evaluate(snapshot_at(STRUCTURE, 7))
    assert reading.truth is Truth.TRUE and reading.value == "1.20"
    assert reading.patterns == (
        Pattern("EURUSD", Timeframe.M5, "bos_up", T0 + 7 * 300_000, close_of(STRUCTURE, 7), {"k": 1, "level": "1.20"}),
    )
    assert bos.evaluate(snapshot_at(STRUCTURE, 6)).truth is Truth.UNKNOWN  # 7 bars, 8 needed
    later = bos.evaluate(snapshot_at(STRUCTURE, 8))
    assert (later.truth, later.patterns) == (Truth.FALSE, ())
    assert at({**bos.to_json(), "within": 2}, STRUCTURE, 8) is Truth.TRUE
    choch = {"type": "change_of_character", "direction": "down", "within": 1, "lookback": 10}
    assert (at(choch, STRUCTURE, 10), at(choch, STRUCTURE, 9)) == (Truth.TRUE, Truth.FALSE)
    assert [p.kind for p in parse({**M5, "k": 1, **choch}).evaluate(snapshot_at(STRUCTURE, 10)).patterns] == [
        "choch_down"
    ]
    bos_down = {"type": "break_of_structure", "direction": "down", "within": 4, "lookback": 13}
    assert at(bos_down, STRUCTURE, 13) is Truth.TRUE
    assert at(bos_down, STRUCTURE, 12) is Truth.FALSE  # the break at 10 went against the trend: a CHOCH


def test_blocks_breakers_retests_sweeps_gaps_cascades() -> None:
    block = {"type": "order_block", "direction": "up", "within": 3, "lookback": 10}
    assert at(block, STRUCTURE, 9) is Truth.TRUE  # confirmed at 7
    assert at({**block, "within": 2}, STRUCTURE, 9) is Truth.FALSE
    assert at({**block, "lookback": 11}, STRUCTURE, 10) is Truth.FALSE  # broken at 10: a breaker now
    assert at({"type": "breaker_block", "direction": "down", "within": 1, "lookback": 11}, STRUCTURE, 10) is Truth.TRUE
    retest = {"type": "breaker_retest", "direction": "down", "within": 1, "lookback": 13}
    assert (at(retest, STRUCTURE, 12), at({**retest, "lookback": 12}, STRUCTURE, 11)) == (Truth.TRUE, Truth.FALSE)
    sweep = {"type": "liquidity_sweep", "side": "high", "within": 1, "lookback": 5}
    assert (at(sweep, SWEEPS, 4), at(sweep, SWEEPS, 5)) == (Truth.TRUE, Truth.FALSE)
    assert at({**sweep, "side": "low"}, SWEEPS, 5) is Truth.TRUE
    cascade = {"type": "mitigation_cascade", "direction": "up", "within": 1, "lookback": 10, "count": 2}
    assert at(cascade, CASCADE, 9) is Truth.TRUE
    assert at({**cascade, "count": 3}, CASCADE, 9) is Truth.FALSE
    fvg = {"type": "fair_value_gap", **M5, "direction": "up", "within": 1, "lookback": 8}
    assert [parse(fvg).evaluate(snapshot_at(CASCADE, i)).truth for i in (7, 8)] == [Truth.TRUE, Truth.FALSE]
    gap = parse(fvg).evaluate(snapshot_at(CASCADE, 7)).patterns[0]
    assert (gap.kind, gap.bar_ms, gap.params) == (
        "fvg_up",
        T0 + 6 * 300_000,
        {"min_gap": "0", "low": "1.19", "high": "1.21"},
    )


def test_swing_structure_reads_higher_highs_and_lows() -> None:
    # swing highs 110 (bar 1), 120 (5), 130 (9); swing lows 90 (3), 95 (7), 100 (11)
    highs = [102, 110, 104, 100, 106, 120, 112, 108, 115, 130, 118, 112, 116]
    lows = [98, 104, 96, 90, 98, 110, 100, 95, 105, 118, 108, 100, 106]
    rising = bars_of([((h + lo) // 2, h, lo, (h + lo) // 2) for h, lo in zip(highs, lows, strict=True)])
    up = {"type": "swing_structure", "trend": "up", "lookback": 13}
    assert at(up, rising, 12) is Truth.TRUE
    assert at({**up, "trend": "down"}, rising, 12) is Truth.FALSE
    assert at({**up, "lookback": 7}, rising, 6) is Truth.FALSE  # one swing low so far
    reading = parse({**M5, "k": 1, **up}).evaluate(snapshot_at(rising, 12))
    assert reading.value == "swing highs 1.20 -> 1.30, lows 0.95 -> 1.00"
    assert [p.kind for p in reading.patterns] == ["swing_low"]  # bar 11's, confirmed by bar 12


def walk(n: int, seed: int) -> Bars:
    """Bars trending up, down or sideways in stretches of 15, with random wicks."""
    rnd = random.Random(seed)
    rows, close, trend = [], 10000, 0
    for i in range(n):
        if i % 15 == 0:
            trend = rnd.choice((-12, 0, 12))
        open_, close = close, close + trend + rnd.randint(-40, 40)
        rows.append((open_, max(open_, close) + rnd.randint(0, 25), min(open_, close) - rnd.randint(0, 25), close))
    return bars_of(rows)


EVERY_KIND = {"swing", "bos", "choch", "order_block", "fvg", "mitigation", "breaker", "breaker_retest"} | {
    "liquidity_sweep",
    "mitigation_cascade",
}


@pytest.mark.parametrize("settings", [Settings(k=1), Settings(k=2, ob_bars=5, span=20)], ids=["k1", "k2"])
def test_every_detector_is_causal(settings: Settings) -> None:
    bars = walk(160, seed=11)
    full = [to_pattern(bars, f, settings) for f in scan(bars, settings)]
    kinds = {p.kind.rsplit("_", 1)[0] for p in full}
    assert kinds == EVERY_KIND  # the walk holds every kind, so the replay covers every detector
    for t in range(len(bars)):
        prefix = bars.slice(0, t + 1, forming=False)
        seen = [to_pattern(prefix, f, settings) for f in scan(prefix, settings)]
        assert seen == [p for p in full if p.confirmed_ms <= close_of(bars, t)], f"bar {t}"


def test_every_structure_condition_replays_bar_by_bar() -> None:
    bars = walk(120, seed=5)
    common = {**M5, "k": 1, "lookback": 40, "within": 3}
    for obj in (
        {"type": "swing_structure", **M5, "trend": "up", "k": 1, "lookback": 40},
        {"type": "break_of_structure", **common, "direction": "up"},
        {"type": "change_of_character", **common, "direction": "down"},
        {"type": "order_block", **common, "direction": "up"},
        {"type": "fair_value_gap", **M5, "lookback": 40, "within": 3, "direction": "down"},
        {"type": "breaker_block", **common, "direction": "down"},
        {"type": "breaker_retest", **common, "direction": "up"},
        {"type": "liquidity_sweep", **common, "side": "low"},
        {"type": "mitigation_cascade", **common, "direction": "up", "span": 30},
    ):
        readings = replay(parse(obj), [bars])
        assert readings[10].truth is Truth.UNKNOWN  # 11 bars of the 40 needed
        assert Truth.TRUE in {r.truth for r in readings}, obj


def test_bad_structure_parameters_are_refused_by_name() -> None:
    errors = "; ".join(
        refused(
            {
                "type": "break_of_structure",
                **M5,
                "direction": "left",
                "k": 0,
                "within": 300,
                "lookback": 200,
                "ob_bars": 3,
            }
        )
    )
    for name in ("direction", "k", "within", "ob_bars"):
        assert f"conditions.{name}" in errors, name
    assert "conditions.side" in "; ".join(refused({"type": "liquidity_sweep", **M5, "direction": "up"}))
    assert "conditions.min_gap" in "; ".join(
        refused({"type": "fair_value_gap", **M5, "direction": "up", "min_gap": "-1"})
    )
    assert "conditions.trend" in "; ".join(refused({"type": "swing_structure", **M5}))


def test_stale_bars_are_unknown_and_json_round_trips() -> None:
    bos = parse({"type": "break_of_structure", **M5, "direction": "up", "k": 1, "lookback": 14, "max_age_ms": 1000})
    snapshot = snapshot_at(STRUCTURE, 13)
    snapshot.now_ms += 2000
    assert bos.evaluate(snapshot).truth is Truth.UNKNOWN
    for type_name in ("order_block", "mitigation_cascade", "fair_value_gap", "liquidity_sweep"):
        extra = {"side": "high"} if type_name == "liquidity_sweep" else {"direction": "down"}
        c = parse({"type": type_name, **M5, **extra})
        assert parse(c.to_json()).to_json() == c.to_json()


def test_the_scan_is_shared_by_content_never_by_time() -> None:
    # CASCADE and STRUCTURE open at the same times: each still gets its own patterns
    assert found(CASCADE, Settings(k=1)) == CASCADE_FOUND and found(STRUCTURE, Settings(k=1)) == STRUCTURE_FOUND
    before = structure._scan.cache_info().hits
    for type_name in ("break_of_structure", "order_block", "liquidity_sweep"):
        extra = {"side": "high"} if type_name == "liquidity_sweep" else {"direction": "up"}
        parse({"type": type_name, **M5, **extra, "k": 1, "lookback": 14}).evaluate(snapshot_at(STRUCTURE, 13))
    assert structure._scan.cache_info().hits == before + 3  # the same 14 bars and settings: one scan
