"""signals, signal events, executions, paper broker, controls, reconciliations

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE signals (
            id            bigserial PRIMARY KEY,
            cluster       text NOT NULL,
            fingerprint   text NOT NULL,
            intent_digest text NOT NULL,
            tag           text NOT NULL,
            source        text NOT NULL,
            signal_id     text,
            payload       jsonb NOT NULL,
            status        text NOT NULL DEFAULT 'received' CHECK (status IN (
                'received', 'executing', 'executed', 'failed', 'rejected', 'in_doubt',
                'expired', 'cancelled')),
            received_by   text NOT NULL,
            received_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
            expires_at    timestamptz,
            epoch         bigint,
            attempt_at    timestamptz,
            executed_by   text,
            broker_ref    text,
            volume        numeric,
            fill_price    numeric,
            error         text,
            updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
            UNIQUE (cluster, fingerprint),
            UNIQUE (cluster, tag)
        )
        """
    )
    # The executor's sweep and the in-doubt scan read only the open statuses.
    op.execute(
        "CREATE INDEX signals_open ON signals (cluster, id) WHERE status IN ('received', 'executing', 'in_doubt')"
    )
    op.execute("CREATE INDEX signals_recent ON signals (cluster, received_at DESC)")
    op.execute(
        """
        CREATE TABLE signal_events (
            id           bigserial PRIMARY KEY,
            signal       bigint NOT NULL REFERENCES signals (id) ON DELETE CASCADE,
            status       text NOT NULL,
            instance_id  text NOT NULL,
            epoch        bigint,
            actor        text,
            detail       text,
            at           timestamptz NOT NULL DEFAULT clock_timestamp()
        )
        """
    )
    op.execute("CREATE INDEX signal_events_signal ON signal_events (signal, id)")
    # Insert-only: every attempt's outcome, even one recorded by a demoted replica.
    op.execute(
        """
        CREATE TABLE executions (
            id           bigserial PRIMARY KEY,
            signal       bigint NOT NULL REFERENCES signals (id) ON DELETE CASCADE,
            epoch        bigint NOT NULL,
            instance_id  text NOT NULL,
            outcome      text NOT NULL,
            broker_ref   text,
            detail       text,
            at           timestamptz NOT NULL DEFAULT clock_timestamp()
        )
        """
    )
    op.execute("CREATE INDEX executions_signal ON executions (signal)")
    op.execute(
        """
        CREATE TABLE paper_accounts (
            cluster   text PRIMARY KEY,
            balance   numeric NOT NULL,
            currency  text NOT NULL DEFAULT 'USD'
        )
        """
    )
    op.execute(
        """
        CREATE TABLE paper_orders (
            ticket      bigserial PRIMARY KEY,
            cluster     text NOT NULL,
            tag         text NOT NULL,
            symbol      text NOT NULL,
            side        text NOT NULL,
            type        text NOT NULL,
            volume      numeric NOT NULL,
            price       numeric NOT NULL,
            sl          numeric,
            tp          numeric,
            epoch       bigint NOT NULL,
            instance_id text NOT NULL,
            state       text NOT NULL,
            placed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
            UNIQUE (cluster, tag)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE paper_positions (
            ticket       bigint PRIMARY KEY REFERENCES paper_orders (ticket),
            cluster      text NOT NULL,
            symbol       text NOT NULL,
            side         text NOT NULL,
            volume       numeric NOT NULL,
            price        numeric NOT NULL,
            sl           numeric,
            tp           numeric,
            tag          text,
            opened_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
            closed_at    timestamptz,
            close_price  numeric,
            pnl          numeric
        )
        """
    )
    op.execute("CREATE INDEX paper_positions_open ON paper_positions (cluster) WHERE closed_at IS NULL")
    op.execute(
        """
        CREATE TABLE paper_deals (
            id        bigserial PRIMARY KEY,
            cluster   text NOT NULL,
            ticket    bigint NOT NULL,
            kind      text NOT NULL,
            volume    numeric NOT NULL,
            price     numeric NOT NULL,
            pnl       numeric NOT NULL DEFAULT 0,
            at        timestamptz NOT NULL DEFAULT clock_timestamp()
        )
        """
    )
    # Today's realised P&L (the daily-loss rule) is read per claim batch.
    op.execute("CREATE INDEX paper_deals_day ON paper_deals (cluster, at)")
    op.execute(
        """
        CREATE TABLE controls (
            cluster   text PRIMARY KEY,
            halted    boolean NOT NULL DEFAULT false,
            reason    text,
            actor     text,
            at        timestamptz NOT NULL DEFAULT clock_timestamp()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE reconciliations (
            id           bigserial PRIMARY KEY,
            cluster      text NOT NULL,
            instance_id  text NOT NULL,
            epoch        bigint,
            ok           boolean NOT NULL,
            report       jsonb NOT NULL,
            at           timestamptz NOT NULL DEFAULT clock_timestamp()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE broker_positions (
            cluster     text NOT NULL,
            broker      text NOT NULL,
            ticket      text NOT NULL,
            symbol      text NOT NULL,
            side        text NOT NULL,
            volume      numeric NOT NULL,
            tag         text,
            origin      text NOT NULL,
            state       text NOT NULL DEFAULT 'open',
            seen_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (cluster, broker, ticket)
        )
        """
    )


def downgrade() -> None:
    for table in (
        "broker_positions",
        "reconciliations",
        "controls",
        "paper_deals",
        "paper_positions",
        "paper_orders",
        "paper_accounts",
        "executions",
        "signal_events",
        "signals",
    ):
        op.execute(f"DROP TABLE {table}")
