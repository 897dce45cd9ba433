"""Prometheus metrics of one stockkeeper process (or of all workers, in multiprocess mode)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

CACHE_REQUESTS = Counter(
    "stockkeeper_cache_requests_total", "Item reads, by whether the cache answered.", ["result"]
)
# Bound once: a labels() lookup on every read costs a dict lookup and a lock.
CACHE_HITS = CACHE_REQUESTS.labels(result="hit")
CACHE_MISSES = CACHE_REQUESTS.labels(result="miss")
ITEM_DB_READS = Counter(
    "stockkeeper_item_database_reads_total",
    "Item reads that went to the database (cache misses, loads shared by several reads count "
    "once, early refreshes, and every read while the cache is unreachable).",
)
REQUEST_DURATION = Histogram(
    "stockkeeper_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ["route"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
STOCK_CHANGES = Counter(
    "stockkeeper_stock_changes_total",
    "Write requests, by outcome (applied, replayed, or the error code).",
    ["outcome"],
)
VISIBILITY_LAG = Histogram(
    "stockkeeper_visibility_lag_seconds",
    "From a change's commit to this server being able to serve it.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
CACHE_TRIPS = Counter(
    "stockkeeper_cache_degraded_trips_total",
    "Times this process stopped trusting Redis (unreachable, late, or answering errors): it "
    "serves no hit until it recovers, and the cluster reads from the database meanwhile.",
)
CLUSTER_REDIRECTS = Counter(
    "stockkeeper_cache_cluster_redirects_total",
    "Redis Cluster redirects followed (MOVED: the slot map was read again; ASK: a slot being "
    "migrated), by kind. Steady growth outside a reshard means a stale map.",
    ["kind"],
)
CLUSTER_FENCES = Counter(
    "stockkeeper_cache_cluster_fences_total",
    "Promoted Redis Cluster primaries whose keys this process deleted before serving them (a "
    "failover: the replica may have lacked acknowledged writes).",
)
READ_MODE_SWITCHES = Counter(
    "stockkeeper_read_mode_switches_total",
    "Cluster read mode switches this process made (docs/cache.md, One read source), by the mode "
    "switched to.",
    ["mode"],
)
READ_MODE_VOTES = Counter(
    "stockkeeper_read_mode_votes_total",
    "Votes for database reads this process wrote while it could not reach Redis.",
)
READS_REFUSED = Counter(
    "stockkeeper_reads_refused_total",
    "Reads answered 503 because no source was safe to serve within read_wait_ms_max (this "
    "process cannot reach Redis and the cluster has not yet switched to database reads, or "
    "its lease could not be renewed).",
)
LEASELESS_READ_THROUGHS = Counter(
    "stockkeeper_cache_leaseless_read_throughs_total",
    "Reads served by a database read pushed to Redis before the answer because this process "
    "held no live read-mode lease: a switch of the cluster's read mode under way, or a lease "
    "that lapsed (its renewal late: the database slow, or this process's loop starved).",
)
FEED_WAITS = Counter(
    "stockkeeper_cache_feed_waits_total",
    "Reads that waited for this process's next poll of the change feed before a hit: its last "
    "poll, pushed in full, began more than feed_fresh_ms ago (the database slow or out of reach).",
)
BUSY_REFUSALS = Counter(
    "stockkeeper_busy_refusals_total",
    "Requests answered 503 busy: no database connection free within pool_wait_ms_max, or "
    "in_flight_max requests in flight on the worker already.",
)
TRANSACTION_RETRIES = Counter(
    "stockkeeper_transaction_retries_total",
    "Transactions run again after a transient fault, by fault.",
    ["reason"],
)
TOKEN_SNAPSHOT_CHECKS = Counter(
    "stockkeeper_token_snapshot_checks_total",
    "Queries of the token change counter sent to keep this process's token snapshot current.",
)
TOKEN_SNAPSHOT_LOADS = Counter(
    "stockkeeper_token_snapshot_loads_total",
    "Loads of every live token into this process's snapshot (after the counter moved).",
)
TOKEN_SNAPSHOT_FAILURES = Counter(
    "stockkeeper_token_snapshot_failures_total",
    "Token snapshot refreshes that failed or timed out; the last snapshot kept serving.",
)
IDEMPOTENCY_KEY_PURGES = Counter(
    "stockkeeper_idempotency_key_purges_total",
    "Purge attempts of old idempotency keys, by result: ran, or skipped because another "
    "process holds the purge or the cluster purged within the interval.",
    ["result"],
)

HOLDS = Counter(
    "stockkeeper_holds_total",
    "Holds by what happened to them: created, extended, confirmed, released, or expired "
    "(recorded by the expirer, or by a request that needed the stock).",
    ["event"],
)
HOLD_EXPIRY_LAG = Histogram(
    "stockkeeper_hold_expiry_lag_seconds",
    "From a hold's expires_at to its expiry's recorded change, by the database's clock. Until "
    "it is recorded no request counts the hold's stock as held, so a long lag only delays "
    "what reads show.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0),
)


def exposition() -> tuple[bytes, str]:
    """The text to serve at /metrics: every worker's figures when multiprocess mode is on."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
