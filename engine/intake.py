"""Intake on any replica: validate, fingerprint, store durably (and wake the leader)."""

from __future__ import annotations

import psycopg
from psycopg_pool import ConnectionPool

from engine import store
from engine.model import SignalIntent
from engine.signal import canonical_payload, fingerprint, intent_digest, order_tag, parse_signal


def submit(pool: ConnectionPool, cluster: str, instance_id: str, body: object) -> store.Accepted:
    """Raises SignalValidationError for a bad signal; psycopg errors when the database is away
    (then nothing was written)."""
    intent = parse_signal(body)
    with pool.connection() as conn:
        return accept_intent(conn, cluster, instance_id, intent)


def accept_intent(conn: psycopg.Connection, cluster: str, instance_id: str, intent: SignalIntent) -> store.Accepted:
    """Store a validated intent, fingerprinted and tagged as every signal is (a plan's signal
    comes this way too, inside its fenced transaction, so dedupe applies unchanged)."""
    fp = fingerprint(intent)
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
