"""Benchmarks run against real replica processes, Redis and PostgreSQL (`python -m bench.failover`)."""
