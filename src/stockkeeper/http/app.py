"""The ASGI app: routing, auth, body limits and problem errors over the service layer.

Bare ASGI rather than a framework: measured here, a framework's per-request cost (Starlette
≈25k req/s, FastAPI ≈9k, bare ≈39k on granian) would eat most of the read path's budget.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from stockkeeper import failpoints, metrics
from stockkeeper.cache import DEFAULT_CACHE_URL, RedisCacheOptions
from stockkeeper.cache.read_mode import ReadModeOptions
from stockkeeper.domain import (
    MISSING,
    Busy,
    FieldError,
    Forbidden,
    InvalidRequest,
    Receipt,
    Role,
    StockkeeperError,
    Unauthenticated,
    Unavailable,
)
from stockkeeper.hold_expirer import ExpirerOptions
from stockkeeper.holds import HoldReceipt
from stockkeeper.http.cors import DOCS_CORS_ENV_VAR, DOCS_CORS_OFF, DocsCors, parse_origins
from stockkeeper.http.messages import (
    NO_CONTENT,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    json_response,
    query_int,
    send_response,
)
from stockkeeper.http.problems import PROBLEM_CONTENT_TYPE, HttpProblem, problem_body
from stockkeeper.http.routes import ROUTES, Route
from stockkeeper.outage_log import OutageLog
from stockkeeper.service import Inventory
from stockkeeper.store import DEFAULT_DATABASE_URL, StoreOptions
from stockkeeper.tasks import cancel_and_wait

log = logging.getLogger("stockkeeper.http")

IDEMPOTENCY_KEYS_KEPT_S = 25 * 3600  # API.md promises at least 24 hours
IDEMPOTENCY_PURGE_EVERY_S = 3600  # per cluster: the store lets one process purge per interval
IDEMPOTENCY_PURGE_WAKE_S_MAX = 300  # each process asks at jittered times up to this far apart
# Requests a worker serves at once; past it, 503 busy at once. A worker serves about 6,000 cached
# reads a second here, so a full queue is under 200 ms of work: waits stay bounded under overload,
# and a stampede of a few hundred concurrent readers per worker is still served.
IN_FLIGHT_MAX = 1024
CONNECTION_CLOSE = (b"connection", b"close")
Handler = Callable[[Request], Awaitable[Response]]


def _change_response(receipt: Receipt, body: dict[str, Any], status: int = 200) -> Response:
    headers = (
        [(b"etag", b'"%d"' % receipt.changes[-1].version)] if len(receipt.changes) == 1 else []
    )
    if receipt.replayed:
        headers.append((b"idempotent-replayed", b"true"))
    return json_response(status, body, headers)


def _hold_response(receipt: HoldReceipt, status: int = 200) -> Response:
    headers = [(b"idempotent-replayed", b"true")] if receipt.replayed else []
    return json_response(status, receipt.hold.to_json(), headers)


class App:
    """ASGI application. Opens its Inventory at lifespan startup, or is handed one."""

    def __init__(
        self,
        open_inventory: Callable[[], Awaitable[Inventory]],
        in_flight_max: int = IN_FLIGHT_MAX,
        docs_cors: DocsCors = DOCS_CORS_OFF,
    ) -> None:
        assert in_flight_max >= 1
        self._open_inventory = open_inventory
        self._in_flight_max = in_flight_max
        self._docs_cors = docs_cors
        self._in_flight = 0
        self._draining = False
        self._inventory: Inventory | None = None
        self._purger: asyncio.Task[None] | None = None
        self._failpoints: asyncio.Task[None] | None = None  # tests only: follows a file
        self._handlers: dict[str, Handler] = {
            route.handler_name: getattr(self, route.handler_name) for route in ROUTES
        }

    @classmethod
    def for_inventory(
        cls,
        inventory: Inventory,
        in_flight_max: int = IN_FLIGHT_MAX,
        docs_cors: DocsCors = DOCS_CORS_OFF,
    ) -> App:
        """An app over an Inventory its caller opened and will close (tests, embedding)."""

        async def given() -> Inventory:
            return inventory

        app = cls(given, in_flight_max, docs_cors)
        app._inventory = inventory
        return app

    def drain(self) -> None:
        """This server is shutting down (stockkeeper.serving): /readyz fails from now on, so a
        load balancer sends elsewhere, and each keep-alive connection closes after its next
        answer, so its client reconnects elsewhere too; every request is still served."""
        self._draining = True

    @property
    def inventory(self) -> Inventory:
        if self._inventory is None:
            raise Unavailable("the service is starting")
        return self._inventory

    # --- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as error:
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        failpoints.arm_from_env()
        if self._inventory is None:
            self._inventory = await self._open_inventory()
        await self._inventory.start()
        self._purger = asyncio.create_task(self._purge_idempotency_keys())
        if failpoints_file := os.environ.get(failpoints.FILE_ENV_VAR):
            self._failpoints = asyncio.create_task(failpoints.follow_file(failpoints_file))

    async def shutdown(self) -> None:
        await cancel_and_wait(self._purger, self._failpoints)
        if self._inventory is not None:
            await self._inventory.close()
            self._inventory = None

    async def _purge_idempotency_keys(self) -> None:
        outage = OutageLog("idempotency key purge", log)
        while True:
            try:
                await self.inventory.purge_idempotency_keys(
                    IDEMPOTENCY_KEYS_KEPT_S, every_s=IDEMPOTENCY_PURGE_EVERY_S
                )
            except Exception as error:
                # Keys only pile up while this fails; the service itself is unaffected.
                outage.failed(error)
            else:
                outage.recovered()
            # Jittered, so the workers of a cluster do not all ask at the same moment.
            await asyncio.sleep(random.uniform(0.5, 1.0) * IDEMPOTENCY_PURGE_WAKE_S_MAX)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        route: Route | None = None
        self._in_flight += 1
        try:
            route, params = self._route(scope["method"], scope["path"])
            if route.role is not None and self._in_flight > self._in_flight_max:
                # Health and metrics stay answerable: they are how an operator sees this.
                metrics.BUSY_REFUSALS.inc()
                raise Busy(f"busy: {self._in_flight_max} requests in flight on this worker already")
            request = Request(scope, receive, params, headers=dict(scope["headers"]))
            if route.role is not None:
                await self._authorize(request, route.role)
            response = await self._handlers[route.handler_name](request)
        except StockkeeperError as error:
            response = _problem(error)
        except Exception:
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            response = _problem(
                HttpProblem("internal_error", "an unexpected error; see the server log")
            )
        finally:
            self._in_flight -= 1
        if self._draining:
            response = replace(response, headers=[*response.headers, CONNECTION_CLOSE])
        await send_response(send, response)
        if route is not None:
            route.timer.observe(time.perf_counter() - started)

    @staticmethod
    def _route(method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route and its path parameters; a problem when nothing (or no method) matches."""
        allowed: list[str] = []
        for route in ROUTES:
            match = route.pattern.match(path)
            if match is None:
                continue
            if route.method == method:
                return route, match.groupdict()
            allowed.append(route.method)
        if allowed:
            raise HttpProblem(
                "method_not_allowed", f"{method} is not allowed on {path}", allowed=allowed
            )
        raise HttpProblem("not_found", f"no resource at {path}")

    async def _authorize(self, request: Request, role: Role) -> None:
        header = request.headers.get(b"authorization", b"")
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("send Authorization: Bearer <token>")
        principal = await self.inventory.authenticate(token.strip())
        if principal.role < role:
            raise Forbidden(
                f"{principal.name} is {principal.role.name.lower()}; this needs {role.name.lower()}"
            )
        request.principal_name = principal.name

    # --- handlers ---------------------------------------------------------------------------

    async def get_item(self, request: Request) -> Response:
        min_version = None
        if request.scope["query_string"]:
            min_version = query_int(request.query(), "min_version", None)
        read = await self.inventory.read(request.params["sku"], min_version=min_version)
        headers = [
            (b"etag", b'"%d"' % read.item.version),
            (b"x-cache", b"hit" if read.cache_hit else b"miss"),
        ]
        return json_response(200, read.item.to_json(), headers)

    async def get_items(self, request: Request) -> Response:
        pairs = request.query_pairs()
        names = {name for name, _ in pairs}
        if names - {"sku"}:
            raise InvalidRequest(
                [FieldError(name, "unknown parameter") for name in sorted(names - {"sku"})]
            )
        skus = [value for _, value in pairs]
        found, unknown = await self.inventory.read_many(skus)
        hit = not unknown and all(read.cache_hit for read in found)
        body = {"items": [read.item.to_json() for read in found], "unknown": unknown}
        return json_response(200, body, [(b"x-cache", b"hit" if hit else b"miss")])

    async def put_item(self, request: Request) -> Response:
        body, checks = await request.json_object({"on_hand"})
        receipt = await self.inventory.set_stock(
            request.params["sku"],
            body.get("on_hand", MISSING),
            user=request.principal_name,
            checks=checks,
        )
        return _change_response(receipt, receipt.change.to_json(), 201 if receipt.created else 200)

    async def purchase(self, request: Request) -> Response:
        body, checks = await request.json_object({"quantity", "on_behalf_of"})
        receipt = await self.inventory.decrement_stock(
            request.params["sku"],
            body.get("quantity", MISSING),
            user=request.principal_name,
            on_behalf_of=body.get("on_behalf_of"),
            idempotency_key=_idempotency_key(request),
            checks=checks,
        )
        return _change_response(receipt, receipt.change.to_json())

    async def restock(self, request: Request) -> Response:
        body, checks = await request.json_object({"quantity"})
        receipt = await self.inventory.increment_stock(
            request.params["sku"],
            body.get("quantity", MISSING),
            user=request.principal_name,
            idempotency_key=_idempotency_key(request),
            checks=checks,
        )
        return _change_response(receipt, receipt.change.to_json())

    async def order(self, request: Request) -> Response:
        body, checks = await request.json_object({"lines", "on_behalf_of"})
        receipt = await self.inventory.place_order(
            body.get("lines", MISSING),
            user=request.principal_name,
            on_behalf_of=body.get("on_behalf_of"),
            idempotency_key=_idempotency_key(request),
            checks=checks,
        )
        return _change_response(receipt, {"lines": [c.to_json() for c in receipt.changes]})

    async def create_hold(self, request: Request) -> Response:
        body, checks = await request.json_object({"lines", "ttl_s", "on_behalf_of"})
        receipt = await self.inventory.hold(
            body.get("lines", MISSING),
            body.get("ttl_s", MISSING),
            user=request.principal_name,
            on_behalf_of=body.get("on_behalf_of"),
            idempotency_key=_idempotency_key(request),
            checks=checks,
        )
        return _hold_response(receipt, 201)

    async def get_hold(self, request: Request) -> Response:
        hold = await self.inventory.get_hold(request.params["hold_id"])
        return json_response(200, hold.to_json())

    async def confirm_hold(self, request: Request) -> Response:
        body, checks = await request.json_object({"lines"}, optional=True)
        receipt = await self.inventory.confirm(
            request.params["hold_id"],
            body.get("lines"),
            user=request.principal_name,
            idempotency_key=_idempotency_key(request),
            checks=checks,
        )
        return _hold_response(receipt)

    async def extend_hold(self, request: Request) -> Response:
        body, checks = await request.json_object({"ttl_s"})
        receipt = await self.inventory.extend(
            request.params["hold_id"],
            body.get("ttl_s", MISSING),
            user=request.principal_name,
            idempotency_key=_idempotency_key(request),
            checks=checks,
        )
        return _hold_response(receipt)

    async def release_hold(self, request: Request) -> Response:
        receipt = await self.inventory.release(
            request.params["hold_id"],
            user=request.principal_name,
            idempotency_key=_idempotency_key(request),
        )
        return _hold_response(receipt)

    async def audit(self, request: Request) -> Response:
        query = request.query()
        after_version = query_int(query, "after_version", 0)
        limit = query_int(query, "limit", 100)
        assert after_version is not None and limit is not None
        page = await self.inventory.audit(
            request.params["sku"], after_version=after_version, limit=limit
        )
        return json_response(
            200,
            {
                "entries": [entry.to_json() for entry in page.entries],
                "next_after_version": page.next_after_version,
            },
        )

    async def healthz(self, request: Request) -> Response:
        return json_response(200, {"status": "up"})

    async def readyz(self, request: Request) -> Response:
        if self._draining:
            problem = HttpProblem("unavailable", "not ready: draining", down={"server": "draining"})
            return _problem(problem)
        probes = {"database": self.inventory.ping, "cache": self.inventory.cache.ping}
        down: dict[str, str] = {}
        for name, probe in probes.items():
            try:
                async with asyncio.timeout(2):
                    await probe()
            except Exception as error:
                down[name] = str(error) or type(error).__name__
        if down:
            names = ", ".join(sorted(down))
            problem = HttpProblem("unavailable", f"not ready: {names} down", down=down)
            return _problem(problem)
        return json_response(200, {"status": "ready", "checked": sorted(probes)})

    async def metrics(self, request: Request) -> Response:
        body, content_type = metrics.exposition()
        return Response(200, body, content_type=content_type.encode())

    async def openapi(self, request: Request) -> Response:
        from stockkeeper.http.openapi import SPEC

        return json_response(200, SPEC, self._docs_cors.get_headers(request.headers))

    async def openapi_preflight(self, request: Request) -> Response:
        return Response(NO_CONTENT, b"", headers=self._docs_cors.preflight_headers(request.headers))


def _idempotency_key(request: Request) -> str | None:
    raw = request.headers.get(b"idempotency-key")
    return None if raw is None else raw.decode("latin-1")


def _problem(error: StockkeeperError) -> Response:
    status, body = problem_body(error)
    headers = [(b"www-authenticate", b"Bearer")] if status == 401 else []
    if isinstance(error, Unavailable) and error.retry_after_s is not None:
        headers.append((b"retry-after", b"%d" % error.retry_after_s))
    if error.code == "method_not_allowed":
        headers.append((b"allow", ", ".join(error.details()["allowed"]).encode()))
    return Response(status, body, content_type=PROBLEM_CONTENT_TYPE, headers=headers)


@dataclass(frozen=True)
class Settings:
    """What a worker is configured with: `serve` passes it through the environment."""

    database_url: str
    store_options: StoreOptions
    cache_url: str
    redis_options: RedisCacheOptions
    in_flight_max: int = IN_FLIGHT_MAX
    docs_cors: DocsCors = DOCS_CORS_OFF
    expirer: ExpirerOptions = field(default_factory=ExpirerOptions)


def settings_from_environment() -> Settings:
    """The settings `create_app` (and the benchmark's baseline apps) read from the environment."""
    return Settings(
        database_url=os.environ.get("STOCKKEEPER_DATABASE_URL", DEFAULT_DATABASE_URL),
        store_options=StoreOptions(
            pool_size=int(os.environ.get("STOCKKEEPER_POOL_SIZE", "10")),
            lock_wait_ms_max=int(os.environ.get("STOCKKEEPER_LOCK_WAIT_MS_MAX", "5000")),
            pool_wait_ms_max=int(os.environ.get("STOCKKEEPER_POOL_WAIT_MS_MAX", "3000")),
        ),
        cache_url=os.environ.get("STOCKKEEPER_CACHE_URL", DEFAULT_CACHE_URL),
        redis_options=RedisCacheOptions(
            timeout_ms=float(os.environ.get("STOCKKEEPER_CACHE_TIMEOUT_MS", "100")),
            feed_poll_ms=float(os.environ.get("STOCKKEEPER_FEED_POLL_MS", "10")),
            feed_fresh_ms=float(os.environ.get("STOCKKEEPER_FEED_FRESH_MS", "80")),
            read_mode=ReadModeOptions(
                lease_ms=float(os.environ.get("STOCKKEEPER_READ_MODE_LEASE_MS", "500")),
                poll_ms=float(os.environ.get("STOCKKEEPER_READ_MODE_POLL_MS", "100")),
            ),
        ),
        in_flight_max=int(os.environ.get("STOCKKEEPER_IN_FLIGHT_MAX", str(IN_FLIGHT_MAX))),
        docs_cors=DocsCors(parse_origins(os.environ.get(DOCS_CORS_ENV_VAR, ""))),
        expirer=ExpirerOptions(
            poll_ms=float(os.environ.get("STOCKKEEPER_HOLD_EXPIRY_POLL_MS", "200")),
        ),
    )


def configure_worker_logging() -> None:
    """Each worker's own stderr lines, with time and level: a trip to degraded mode needs both."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
    )


def create_app() -> App:
    """The app `stockkeeper serve` runs in each worker: configured by the environment."""
    configure_worker_logging()
    settings = settings_from_environment()

    async def open_inventory() -> Inventory:
        return await Inventory.open(
            settings.database_url,
            settings.store_options,
            cache_url=settings.cache_url,
            redis_options=settings.redis_options,
            expirer=settings.expirer,
        )

    return App(open_inventory, settings.in_flight_max, settings.docs_cors)
