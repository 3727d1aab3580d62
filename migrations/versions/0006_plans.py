"""plans: trade plans, pattern history, news events

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per plan; `revision` grows with each edit, so an evaluation made on an older
    # revision can never execute (the execute CAS names the revision it evaluated).
    op.execute(
        """
        CREATE TABLE trade_plans (
            id                  bigserial PRIMARY KEY,
            cluster             text NOT NULL,
            plan_id             text NOT NULL,
            revision            integer NOT NULL DEFAULT 1 CHECK (revision >= 1),
            status              text NOT NULL DEFAULT 'pending' CHECK (status IN (
                'pending', 'executing', 'executed', 'failed', 'cancelled', 'expired')),
            schema_version      integer NOT NULL CHECK (schema_version >= 1),
            plan                jsonb NOT NULL,
            expires_at          timestamptz,
            created_by          text NOT NULL,
            created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
            updated_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
            signal_fingerprint  text,
            executed_epoch      bigint,
            detail              text,
            reason              jsonb,
            evaluated_at        timestamptz,
            UNIQUE (cluster, plan_id),
            -- a plan has a signal exactly when it fired
            CHECK ((status IN ('executing', 'executed', 'failed')) = (signal_fingerprint IS NOT NULL))
        )
        """
    )
    # The leader loads only pending plans; a settled signal finds its plan by fingerprint.
    op.execute("CREATE INDEX trade_plans_pending ON trade_plans (cluster, id) WHERE status = 'pending'")
    op.execute(
        "CREATE INDEX trade_plans_signal ON trade_plans (cluster, signal_fingerprint) WHERE status = 'executing'"
    )
    # A plan's signal settles its plan in the settling transaction, whoever settles it (the
    # executor, an operator's `signal resolve`, the expiry in a claim): executed -> executed,
    # a final failure -> failed; in_doubt keeps the plan executing until it is resolved.
    op.execute(
        """
        CREATE FUNCTION trade_plans_settle() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE trade_plans
               SET status = CASE WHEN NEW.status = 'executed' THEN 'executed' ELSE 'failed' END,
                   detail = CASE WHEN NEW.status = 'executed' THEN NEW.broker_ref
                                 ELSE NEW.status || COALESCE(': ' || NEW.error, '') END,
                   updated_at = clock_timestamp()
             WHERE cluster = NEW.cluster AND signal_fingerprint = NEW.fingerprint AND status = 'executing';
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER trade_plans_settle AFTER UPDATE OF status ON signals
        FOR EACH ROW WHEN (NEW.source = 'plan' AND NEW.status IS DISTINCT FROM OLD.status
                           AND NEW.status IN ('executed', 'failed', 'rejected', 'expired', 'cancelled'))
        EXECUTE FUNCTION trade_plans_settle()
        """
    )
    # A confirmed pattern once per (symbol, timeframe, kind, bar): a detector that sees it
    # again (the next round, a new leader) inserts nothing.
    op.execute(
        """
        CREATE TABLE pattern_history (
            id            bigserial PRIMARY KEY,
            cluster       text NOT NULL,
            symbol        text NOT NULL,
            timeframe     text NOT NULL,
            kind          text NOT NULL,
            bar_at        timestamptz NOT NULL,
            confirmed_at  timestamptz NOT NULL CHECK (confirmed_at >= bar_at),
            params        jsonb NOT NULL DEFAULT '{}',
            recorded_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
            UNIQUE (cluster, symbol, timeframe, kind, bar_at)
        )
        """
    )
    # The retention cleanup deletes by age.
    op.execute("CREATE INDEX pattern_history_recorded ON pattern_history (cluster, recorded_at)")
    # Scheduled events for the news filter, shared by every cluster on the database.
    op.execute(
        """
        CREATE TABLE news_events (
            id           bigserial PRIMARY KEY,
            at           timestamptz NOT NULL,
            currency     text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
            impact       text NOT NULL CHECK (impact IN ('high', 'medium', 'low')),
            title        text NOT NULL,
            source       text NOT NULL,
            imported_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            UNIQUE (at, currency, title)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE news_events")
    op.execute("DROP TABLE pattern_history")
    op.execute("DROP TRIGGER trade_plans_settle ON signals")
    op.execute("DROP FUNCTION trade_plans_settle()")
    op.execute("DROP TABLE trade_plans")
