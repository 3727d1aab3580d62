"""supervised loops: restarts counted per loop

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per restart (and per loop marked failed) of a replica's supervised loop. The
    # restart budget is counted here, not in memory, so a replica restarted by its process
    # supervisor does not get a fresh budget for a loop that keeps dying.
    op.execute(
        """
        CREATE TABLE loop_restarts (
            id          bigserial PRIMARY KEY,
            cluster     text NOT NULL,
            instance_id text NOT NULL,
            loop        text NOT NULL,
            action      text NOT NULL CHECK (action IN ('restarted', 'failed')),
            reason      text NOT NULL,
            at          timestamptz NOT NULL DEFAULT clock_timestamp()
        )
        """
    )
    op.execute("CREATE INDEX loop_restarts_recent ON loop_restarts (cluster, instance_id, loop, at)")


def downgrade() -> None:
    op.execute("DROP TABLE loop_restarts")
