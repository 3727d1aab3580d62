"""paper venue: order expiry and fills, deal details, account marks, the venue's tick cursor,
book change notifications, a deal for every modification

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A pending order's expiry travels with it (the venue expires it); when and at what it
    # filled, or when it was cancelled or expired.
    op.execute(
        "ALTER TABLE paper_orders ADD COLUMN expires_at timestamptz, ADD COLUMN done_at timestamptz,"
        " ADD COLUMN fill_price numeric"
    )
    # The venue loads the pending orders at every start and resync.
    op.execute("CREATE INDEX paper_orders_pending ON paper_orders (cluster) WHERE state = 'pending'")
    # Why a position closed: close (on request), sl, tp or stop_out.
    op.execute("ALTER TABLE paper_positions ADD COLUMN close_reason text")
    # A deal's balance after it (on the deals that realise P&L, written under the account's
    # row lock, so the deals are a running ledger), the stops of a modification, and the
    # market time of the tick it was matched on.
    op.execute(
        "ALTER TABLE paper_deals ADD COLUMN balance numeric, ADD COLUMN sl numeric, ADD COLUMN tp numeric,"
        " ADD COLUMN quote_ms bigint"
    )
    op.execute("CREATE INDEX paper_deals_ticket ON paper_deals (cluster, ticket)")
    # The account marked to market by the venue: what PaperBroker.account() reads for
    # equity and margin (balance stays in paper_accounts, moved only by deals). One row per
    # cluster, rewritten every HAEXEC_VENUE_MARK_MS; marked_at says how old it is.
    op.execute(
        """
        CREATE TABLE paper_marks (
            cluster       text PRIMARY KEY,
            balance       numeric NOT NULL,
            floating      numeric NOT NULL,
            equity        numeric NOT NULL,
            margin        numeric NOT NULL,
            free_margin   numeric NOT NULL,
            margin_level  numeric,
            leverage      integer NOT NULL CHECK (leverage > 0),
            positions     integer NOT NULL,
            quote_ms      bigint,
            venue         text NOT NULL,
            marked_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
            CHECK (equity = balance + floating AND free_margin = equity - margin)
        )
        """
    )
    # The last tick the venue matched per symbol, so a restart matches what it missed.
    op.execute(
        """
        CREATE TABLE paper_venue_cursor (
            cluster     text NOT NULL,
            symbol      text NOT NULL,
            tick_ms     bigint NOT NULL,
            updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (cluster, symbol)
        )
        """
    )
    # Every change to the book, whoever makes it (a replica booking, modifying, closing or
    # cancelling; the venue itself), wakes the venue with the row to reload. Delivered at
    # commit, in commit order, to a listener that loaded the book after it began to listen,
    # so the venue's copy misses nothing without polling the tables.
    op.execute(
        """
        CREATE FUNCTION paper_book_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('haexec_paper_book', NEW.cluster || '|' || TG_ARGV[0] || '|' || NEW.ticket);
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER paper_orders_notify AFTER INSERT OR UPDATE ON paper_orders"
        " FOR EACH ROW EXECUTE FUNCTION paper_book_notify('o')"
    )
    op.execute(
        "CREATE TRIGGER paper_positions_notify AFTER INSERT OR UPDATE ON paper_positions"
        " FOR EACH ROW EXECUTE FUNCTION paper_book_notify('p')"
    )
    # Every modification of an open position's stops is a deal (kind modify, no P&L), in the
    # transaction that made it, whoever made it: the replica's modify needs no code for it.
    op.execute(
        """
        CREATE FUNCTION paper_modify_deal() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO paper_deals (cluster, ticket, kind, volume, price, pnl, sl, tp)
            VALUES (NEW.cluster, NEW.ticket, 'modify', NEW.volume, NEW.price, 0, NEW.sl, NEW.tp);
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER paper_positions_modify_deal AFTER UPDATE OF sl, tp ON paper_positions FOR EACH ROW"
        " WHEN (OLD.closed_at IS NULL AND NEW.closed_at IS NULL"
        " AND (OLD.sl IS DISTINCT FROM NEW.sl OR OLD.tp IS DISTINCT FROM NEW.tp))"
        " EXECUTE FUNCTION paper_modify_deal()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER paper_positions_modify_deal ON paper_positions")
    op.execute("DROP FUNCTION paper_modify_deal()")
    op.execute("DROP TRIGGER paper_positions_notify ON paper_positions")
    op.execute("DROP TRIGGER paper_orders_notify ON paper_orders")
    op.execute("DROP FUNCTION paper_book_notify()")
    op.execute("DROP TABLE paper_venue_cursor")
    op.execute("DROP TABLE paper_marks")
    op.execute("DROP INDEX paper_deals_ticket")
    op.execute("ALTER TABLE paper_deals DROP COLUMN balance, DROP COLUMN sl, DROP COLUMN tp, DROP COLUMN quote_ms")
    op.execute("ALTER TABLE paper_positions DROP COLUMN close_reason")
    op.execute("DROP INDEX paper_orders_pending")
    op.execute("ALTER TABLE paper_orders DROP COLUMN expires_at, DROP COLUMN done_at, DROP COLUMN fill_price")
