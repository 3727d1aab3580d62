"""Intake on any replica: validate, fingerprint, store durably (and wake the leader)."""

from __future__ import annotations

from psycopg_pool import ConnectionPool

from engine import store
from engine.signal import canonical_payload, fingerprint, intent_digest, order_tag, parse_signal


def submit(pool: ConnectionPool, cluster: str, instance_id: str, body: object) -> store.Accepted:
    """Raises SignalValidationError for a bad signal; psycopg errors when the database is away
    (then nothing was written)."""
    intent = parse_signal(body)
    fp = fingerprint(intent)
    with pool.connection() as conn:
        return store.accept(
            conn,
            cluster,
            instance_id,
            fp,
            intent_digest(intent),
            order_tag(fp),
            canonical_payload(intent),
            intent.source,
            intent.signal_id,
            intent.expires_at,
        )
