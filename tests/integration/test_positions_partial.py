"""The rules' partial close, executed by the position manager at the paper venue on real
PostgreSQL: once at its target, its intent committed before the venue is asked (a new leader
never closes the part again), a refusal due again a minute later, an unknown answer never
sent again."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry

from common.clock import FakeClock
from engine.brokers.base import BrokerError, OrderResult, Outcome, Refusal
from engine.brokers.paper import PaperBroker
from engine.positions.manager import PARTIAL_RETRY_MS, ManagerConfig, PositionManager
from engine.positions.metrics import PositionMetrics
from engine.positions.registration import Registrar
from engine.risk import RiskLimits
from tests.integration.test_executor import Rig, rig  # noqa: F401 (rig is a fixture)
from tests.integration.test_paper import lead
from tests.positions_support import D, EpochFencing, Prices, journal_kinds, open_buy

MANAGE = {"partial": {"at_rr": 1, "fraction": 0.5}}  # half the lot off at +1 R


class Answering(PaperBroker):
    """The paper broker whose partial closes answer from a script first (a BrokerError is
    raised), then as the venue does; every call counted."""

    script: list[OrderResult | BrokerError]
    calls: int = 0

    def close_partial(self, ticket: str, volume: Decimal, epoch: int | None = None) -> OrderResult:
        self.calls += 1
        if self.script:
            answer = self.script.pop(0)
            if isinstance(answer, BrokerError):
                raise answer
            return answer
        return super().close_partial(ticket, volume, epoch)


@pytest.fixture
def prices() -> Prices:
    p = Prices()
    p.set("EURUSD", "1.10000")
    return p


@pytest.fixture
def paper(rig: Rig, prices: Prices) -> Iterator[Answering]:  # noqa: F811
    broker = Answering(rig.pool, rig.cluster, "leader", market=prices)  # type: ignore[arg-type]
    broker.script = []
    broker.connect()
    yield broker


def manager(rig: Rig, broker: PaperBroker, prices: Prices, epoch: int, clock: FakeClock) -> PositionManager:  # noqa: F811
    return PositionManager(
        ManagerConfig(rig.cluster, "leader", "paper", max_in_flight=1),
        EpochFencing(rig.cluster, epoch),
        rig.pool,
        broker,
        prices,  # type: ignore[arg-type]
        RiskLimits(),
        clock=clock,
        metrics=PositionMetrics(CollectorRegistry()),
    )


def managed(rig: Rig, broker: PaperBroker, epoch: int) -> str:  # noqa: F811
    """A bought 0.10 lot at 1.10000, stop 1.09000 (R = 100 pips), registered with MANAGE."""
    ticket = open_buy(broker, epoch, "HXPARTIAL", sl="1.09000")
    _, created = Registrar(rig.pool, broker, rig.cluster, "paper", "leader", {}).register(
        {"ticket": ticket, "manage": MANAGE}, "test:operator"
    )
    assert created
    return ticket


def volume_of(broker: PaperBroker, ticket: str) -> Decimal:
    return next(p.volume for p in broker.positions() if p.ticket == ticket)


def test_the_partial_closes_once_at_its_target_and_a_new_leader_does_not_close_it_again(
    rig: Rig,  # noqa: F811
    paper: Answering,
    prices: Prices,
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    ticket = managed(rig, paper, epoch)
    m = manager(rig, paper, prices, epoch, FakeClock())
    prices.set("EURUSD", "1.10900")  # +0.9 R: not yet
    assert m.run_once().partials == 0 and paper.calls == 0
    prices.set("EURUSD", "1.11000")  # +1 R
    assert m.run_once().partials == 1
    assert volume_of(paper, ticket) == D("0.05") and paper.calls == 1
    for _ in range(2):
        assert m.run_once().partials == 0
    assert m.metrics.partials.labels("done")._value.get() == 1
    # the next leader resumes from the stored state: the part is not closed again
    assert manager(rig, paper, prices, epoch, FakeClock()).run_once().partials == 0
    assert paper.calls == 1 and volume_of(paper, ticket) == D("0.05")
    kinds = journal_kinds(paper, rig.cluster, ticket)
    assert kinds.count("partial") == 1  # the manager's own close, not seen again as a change at the venue
    with rig.pool.connection() as conn:
        row = conn.execute(
            "SELECT volume, state ->> 'partial_done' FROM plan_execution_state WHERE cluster = %s AND ticket = %s",
            (rig.cluster, ticket),
        ).fetchone()
        detail = conn.execute(
            "SELECT detail FROM trade_journal WHERE cluster = %s AND ticket = %s AND kind = 'partial'",
            (rig.cluster, ticket),
        ).fetchone()
    assert row == (D("0.05"), "true")
    assert detail is not None and (D(detail[0]["closed"]), D(detail[0]["price"])) == (D("0.05"), D("1.11000"))


def test_a_refused_partial_is_due_again_a_minute_later(
    rig: Rig,  # noqa: F811
    paper: Answering,
    prices: Prices,
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    ticket = managed(rig, paper, epoch)
    paper.script = [OrderResult(Outcome.REJECTED, detail="market closed", refusal=Refusal.OTHER)]
    clock = FakeClock()
    m = manager(rig, paper, prices, epoch, clock)
    prices.set("EURUSD", "1.11000")
    assert m.run_once().partials == 0 and paper.calls == 1
    clock.advance(PARTIAL_RETRY_MS - 1)
    assert m.run_once().partials == 0 and paper.calls == 1  # not yet
    clock.advance(1)
    assert m.run_once().partials == 1 and paper.calls == 2
    assert volume_of(paper, ticket) == D("0.05")


def test_an_unknown_answer_is_never_sent_again(
    rig: Rig,  # noqa: F811
    paper: Answering,
    prices: Prices,
) -> None:
    epoch = lead(rig.pool, rig.cluster, "leader")
    ticket = managed(rig, paper, epoch)
    paper.script = [BrokerError("no answer from the venue")]
    clock = FakeClock()
    m = manager(rig, paper, prices, epoch, clock)
    prices.set("EURUSD", "1.11000")
    assert m.run_once().partials == 0 and paper.calls == 1
    clock.advance(10 * PARTIAL_RETRY_MS)
    for _ in range(2):
        m.run_once()
    assert manager(rig, paper, prices, epoch, FakeClock()).run_once().partials == 0  # nor by a new leader
    assert paper.calls == 1 and volume_of(paper, ticket) == D("0.10")
    assert m.metrics.partials.labels("unknown")._value.get() == 1
