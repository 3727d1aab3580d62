"""operator audit: an append-only, hash-chained record of operator actions

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Who did what to the cluster and why (halt, resume, resolve, switchover, register,
    # unregister), written in the transaction of the action (engine/audit.py). Each row's
    # hash is sha256 over the previous row's hash and the row's canonical encoding, so a
    # rewritten, removed or inserted row breaks the chain at that row (`haexec audit verify`).
    # One chain per cluster: the writer serialises on a transaction-scoped advisory lock per
    # cluster, and UNIQUE (cluster, prev_hash) makes a fork impossible even without it (two
    # rows after the same head cannot both commit; the first row's prev_hash is 64 zeros).
    op.execute(
        """
        CREATE TABLE operator_audit (
            id         bigserial PRIMARY KEY,
            cluster    text NOT NULL,
            at         timestamptz NOT NULL,
            actor      text NOT NULL CHECK (actor <> ''),
            action     text NOT NULL CHECK (action ~ '^[a-z][a-z_]*$'),
            reason     text,
            detail     jsonb NOT NULL DEFAULT '{}'::jsonb,
            prev_hash  text NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
            hash       text NOT NULL UNIQUE CHECK (hash ~ '^[0-9a-f]{64}$'),
            UNIQUE (cluster, prev_hash)
        )
        """
    )
    op.execute("CREATE INDEX operator_audit_chain ON operator_audit (cluster, id)")
    op.execute(
        """
        CREATE FUNCTION operator_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'operator_audit is append-only';
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER operator_audit_append_only BEFORE UPDATE OR DELETE ON operator_audit"
        " FOR EACH ROW EXECUTE FUNCTION operator_audit_append_only()"
    )
    op.execute(
        "CREATE TRIGGER operator_audit_no_truncate BEFORE TRUNCATE ON operator_audit"
        " FOR EACH STATEMENT EXECUTE FUNCTION operator_audit_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER operator_audit_no_truncate ON operator_audit")
    op.execute("DROP TRIGGER operator_audit_append_only ON operator_audit")
    op.execute("DROP FUNCTION operator_audit_append_only()")
    op.execute("DROP TABLE operator_audit")
