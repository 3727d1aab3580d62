"""positions: managed positions, their rules and state, the trade journal

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per position the leader manages: what defines it (entry, initial stop: R), its
    # rules, the state a new leader resumes from, and the stop desired, sent and verified at
    # the venue. The ticket is the venue's (text: MT5 tickets are integers, a gateway's may
    # not be). A position is registered once per (cluster, account, ticket): the constraint,
    # not a lock in a process, makes concurrent registrations one row.
    op.execute(
        """
        CREATE TABLE plan_execution_state (
            id                     bigserial PRIMARY KEY,
            cluster                text NOT NULL,
            account                text NOT NULL,
            ticket                 text NOT NULL,
            symbol                 text NOT NULL,
            side                   text NOT NULL CHECK (side IN ('buy', 'sell')),
            entry                  numeric NOT NULL,
            initial_sl             numeric NOT NULL,
            volume                 numeric NOT NULL CHECK (volume > 0),
            source                 text NOT NULL CHECK (source IN ('signal', 'api')),
            fingerprint            text,
            plan_id                bigint,
            rules                  jsonb NOT NULL DEFAULT '{}'::jsonb,
            trailing_mode_enabled  boolean NOT NULL DEFAULT false,
            trailing_activation_rr numeric,
            current_rr             numeric NOT NULL DEFAULT 0,
            high_water             numeric,
            desired_sl             numeric,
            sent_sl                numeric,
            verified_sl            numeric,
            state                  jsonb NOT NULL DEFAULT '{}'::jsonb,
            managed                boolean NOT NULL DEFAULT true,
            naked_since            timestamptz,
            closed_at              timestamptz,
            created_at             timestamptz NOT NULL DEFAULT clock_timestamp(),
            updated_at             timestamptz NOT NULL DEFAULT clock_timestamp(),
            UNIQUE (cluster, account, ticket)
        )
        """
    )
    # The manager loads the open, managed book every loop.
    op.execute(
        "CREATE INDEX plan_execution_state_open ON plan_execution_state (cluster, account)"
        " WHERE managed AND closed_at IS NULL"
    )
    # updated_at by the database, so it is the database's clock whoever writes.
    op.execute(
        """
        CREATE FUNCTION plan_execution_state_touch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.updated_at := clock_timestamp();
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER plan_execution_state_touch BEFORE UPDATE ON plan_execution_state"
        " FOR EACH ROW EXECUTE FUNCTION plan_execution_state_touch()"
    )
    # Every change haexec makes to a position, written in the transaction of the change.
    # Append-only: a trigger refuses UPDATE and DELETE, so history cannot be rewritten.
    op.execute(
        """
        CREATE TABLE trade_journal (
            id        bigserial PRIMARY KEY,
            cluster   text NOT NULL,
            ticket    text NOT NULL,
            kind      text NOT NULL CHECK (kind IN ('fill', 'stop_set', 'stop_moved', 'breakeven', 'lock',
                                                    'trailing', 'partial', 'close', 'registered',
                                                    'unregistered', 'adopted', 'naked', 'operator',
                                                    'refused')),
            epoch     bigint,
            instance  text NOT NULL,
            detail    jsonb NOT NULL DEFAULT '{}'::jsonb,
            at        timestamptz NOT NULL DEFAULT clock_timestamp()
        )
        """
    )
    op.execute("CREATE INDEX trade_journal_ticket ON trade_journal (cluster, ticket, id)")
    op.execute("CREATE INDEX trade_journal_at ON trade_journal (cluster, at)")
    op.execute(
        """
        CREATE FUNCTION trade_journal_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'trade_journal is append-only';
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER trade_journal_append_only BEFORE UPDATE OR DELETE ON trade_journal"
        " FOR EACH ROW EXECUTE FUNCTION trade_journal_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER trade_journal_append_only ON trade_journal")
    op.execute("DROP FUNCTION trade_journal_append_only()")
    op.execute("DROP TABLE trade_journal")
    op.execute("DROP TRIGGER plan_execution_state_touch ON plan_execution_state")
    op.execute("DROP FUNCTION plan_execution_state_touch()")
    op.execute("DROP TABLE plan_execution_state")
