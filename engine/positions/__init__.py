"""Open positions owned by the leader until they close: the rules each one is managed by
(`rules.py`), the fail-safe every stop change passes (`failsafe.py`), the manager that
reconciles desired stops with the venue's, registration, recovery and the journal."""
