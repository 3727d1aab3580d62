"""The paper venue: the broker side of the paper account, run as its own process
(`haexec venue`, engine/venue/process.py) so its stops trigger whether or not a replica
leads. Replicas book, modify, close and cancel (engine/brokers/paper.py); the venue
matches: it fills pending orders, triggers stop losses and take profits on the correct side
of the book, expires orders, stops out an account short of margin, marks the account to
market and publishes the feed on Redis Streams.

| module | holds |
| --- | --- |
| `model.py` | quotes, positions, orders, matches (values) |
| `pnl.py` | profit, marking, margin in Decimal from the market spec |
| `matching.py` | the pure matching core and the in-memory book |
| `rules.py` | the broker rules a request must pass (pure) |
| `hours.py`, `settings.py` | market hours, HAEXEC_VENUE_* |
| `ledger.py` | the book in PostgreSQL: loads, fenced-by-lock matches, marks, cursor |
| `streams.py` | ticks and bar closes on Redis Streams |
| `process.py` | the loop |

engine.venue imports engine.market and engine.model only, never a broker, so the paper
broker can use its rules and ledger (the hooks, README "The paper venue").
"""
