"""Fault injection used by tests and stress runs: real network faults between one server process
and the services it depends on (Redis, PostgreSQL), without root and without touching the
machine's shared network configuration."""
