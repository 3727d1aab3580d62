"""`haexec trades register|list|show|unregister` against real PostgreSQL and the paper
venue: idempotent registration, one line and exit 1 for what cannot be done, --json.
In-process (haexec.cli.main: the path a process takes, without its start-up cost)."""

from __future__ import annotations

import json

import pytest

from engine.brokers.paper import PaperBroker
from haexec.cli import main
from tests.integration.test_executor import Rig, rig  # noqa: F401 (rig is a fixture)
from tests.integration.test_paper import lead
from tests.positions_support import open_buy


def test_trades_commands(
    rig: Rig,  # noqa: F811
    database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    broker = PaperBroker(rig.pool, rig.cluster, "leader")
    broker.connect()
    ticket = open_buy(broker, lead(rig.pool, rig.cluster, "leader"), "HXCLI1", sl="1.09000")
    env = {"HAEXEC_DATABASE_URL": database_url, "HAEXEC_REDIS_URL": redis_url, "HAEXEC_CLUSTER": rig.cluster}
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    def cli(*argv: str) -> tuple[int, str, str]:
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    manage = '{"breakeven": {"at_rr": 1}}'
    status, out, _ = cli("trades", "register", ticket, "--manage", manage, "--json")
    assert status == 0 and json.loads(out)["created"] is True
    status, out, _ = cli("trades", "register", ticket, "--manage", manage)
    assert status == 0 and "registered already" in out
    status, _, err = cli("trades", "register", ticket, "--manage", '{"nope": 1}')
    assert status == 1 and "manage.nope" in err
    status, out, _ = cli("trades", "list", "--json")
    assert [t["ticket"] for t in json.loads(out)] == [ticket]
    status, out, _ = cli("trades", "show", ticket, "--json")
    assert [j["kind"] for j in json.loads(out)["journal"]] == ["registered"]
    status, _, err = cli("trades", "register", ticket, "--manage", '{"breakeven": {"at_rr": 2}}')
    assert status == 1 and err.splitlines() == [
        f"haexec trades: ticket {ticket} is registered already with other rules"
    ]
    assert cli("trades", "unregister", ticket)[0] == 0
    status, _, err = cli("trades", "unregister", ticket)
    assert status == 1 and "not managed" in err
    # The journal: both changes, oldest first, as JSON and as CSV; a bad --since is exit 2.
    status, out, _ = cli("journal", "--json", "--since", "2000-01-01T00:00:00Z")
    assert status == 0 and [(j["ticket"], j["kind"]) for j in json.loads(out)] == [
        (ticket, "registered"),
        (ticket, "unregistered"),
    ]
    status, out, _ = cli("journal", "--csv", "--since", "2000-01-01T00:00:00Z")
    lines = out.splitlines()
    assert status == 0 and lines[0] == "id,at,ticket,kind,epoch,instance,detail" and len(lines) == 3
    with pytest.raises(SystemExit) as bad:
        cli("journal", "--since", "yesterday")
    assert bad.value.code == 2 and "must be an ISO 8601 time" in capsys.readouterr().err
