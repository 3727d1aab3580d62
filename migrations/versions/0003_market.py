"""market data: the replay cursor

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Where a replay stopped, per cluster and file (feed = sha256 of its bytes).
    op.execute(
        """
        CREATE TABLE market_replay_cursor (
            cluster     text NOT NULL,
            feed        text NOT NULL CHECK (feed ~ '^[0-9a-f]{64}$'),
            path        text NOT NULL,
            position    bigint NOT NULL CHECK (position >= 0),
            data_ms     bigint NOT NULL,
            updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (cluster, feed)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE market_replay_cursor")
