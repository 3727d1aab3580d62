"""leader_record and leadership_history

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per cluster. The epoch is the fencing token: it only ever grows, and only the
    # compare-and-set in coordinator/epoch.py changes it.
    op.execute(
        """
        CREATE TABLE leader_record (
            cluster       text PRIMARY KEY,
            epoch         bigint NOT NULL DEFAULT 0 CHECK (epoch >= 0),
            instance_id   text,
            acquired_at   timestamptz,
            heartbeat_at  timestamptz,
            released_at   timestamptz,
            handoff_to    text
        )
        """
    )
    op.execute(
        """
        CREATE TABLE leadership_history (
            id           bigserial PRIMARY KEY,
            cluster      text NOT NULL,
            instance_id  text NOT NULL,
            epoch        bigint NOT NULL,
            event        text NOT NULL,
            reason       text NOT NULL,
            at           timestamptz NOT NULL DEFAULT clock_timestamp()
        )
        """
    )
    # "Latest N per cluster" is the only query history serves.
    op.execute("CREATE INDEX leadership_history_cluster_at ON leadership_history (cluster, at DESC, id DESC)")


def downgrade() -> None:
    op.execute("DROP TABLE leadership_history")
    op.execute("DROP TABLE leader_record")
