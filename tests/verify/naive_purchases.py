"""The real server with the bug the product is built to avoid: a purchase reads on_hand in one
transaction, checks it, and writes the new absolute value in a later one (the read-check-write
oversell). Two purchases that read the same on_hand both succeed and one decrement is lost. Kept
in the tests, never in the product; served like a baseline (stockkeeper.bench.baselines), so
the launcher starts it in place of `stockkeeper serve`:

    python -m tests.verify.naive_purchases --port P --database URL --cache URL

Everything else is stockkeeper's: the coherent cache, idempotency keys (claimed before the
write, so a repeat still replays), the audit entry in the write's transaction, restocks, sets
and orders. `store.write.before_change=sleep(ms)` in STOCKKEEPER_FAILPOINTS widens the gap
between the read and the write, so the race is hit on every run.
"""

from __future__ import annotations

import click

from stockkeeper.cache import open_cache
from stockkeeper.domain import Item, Reason, Receipt, Write
from stockkeeper.http.app import App, configure_worker_logging, settings_from_environment
from stockkeeper.service import Inventory
from stockkeeper.serving import Limits, serve_app, serve_options
from stockkeeper.store.postgres import PostgresStore, _PgStatements, _PgTx
from stockkeeper.store.sql_tx import Statements
from stockkeeper.store.writes import apply_write

APP_FACTORY = "tests.verify.naive_purchases:create_app"


class _WriteWhatWasRead(_PgTx):
    """The write step of a naive purchase: the check and the new on_hand come from `seen`, the
    item as an earlier transaction read it, not from the row as it is now."""

    def __init__(self, db: Statements, seen: Item | None) -> None:
        super().__init__(db)
        self._seen = seen

    async def take(self, sku: str, quantity: int) -> Item | None:
        if self._seen is None or self._seen.on_hand < quantity:
            return None
        return await self.set_on_hand(sku, self._seen.on_hand - quantity)


class NaivePurchaseStore(PostgresStore):
    """PostgreSQL with purchases split into a read and a later write; every other write is the
    product's. The narrowest seam: one step of the product's own write algorithm (`take`) is
    replaced, and the service above sees an ordinary Store. It reaches into postgres.py's
    private transaction helpers on purpose: the product offers no way to swap them, and
    should not."""

    async def write(self, write: Write) -> Receipt:
        if write.reason is not Reason.PURCHASE:
            return await super().write(write)
        (line,) = write.lines
        seen = await self.get_item(line.sku)
        return await self._in_tx(
            lambda conn: apply_write(_WriteWhatWasRead(_PgStatements(conn), seen), write)
        )


def create_app() -> App:
    """The real app, configured like `create_app` by the environment, over NaivePurchaseStore
    (PostgreSQL only). `serve_app` has already made the schema and the first admin token."""
    configure_worker_logging()
    settings = settings_from_environment()

    async def open_inventory() -> Inventory:
        store = await NaivePurchaseStore.connect(settings.database_url, settings.store_options)
        return Inventory(store, await open_cache(settings.cache_url, store, settings.redis_options))

    return App(open_inventory, settings.in_flight_max)


@click.command()
@serve_options
def main(
    host: str, port: int, workers: int, database_url: str, cache_url: str, limits: Limits
) -> None:
    """Serve the naive-purchase app as `stockkeeper serve` serves the real one."""
    serve_app(APP_FACTORY, host, port, workers, database_url, cache_url, limits)


if __name__ == "__main__":
    main()
