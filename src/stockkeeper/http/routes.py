"""The route table: every path, its method, the role it needs and its handler."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from stockkeeper import metrics
from stockkeeper.domain import Role


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    template: str
    role: Role | None
    handler_name: str
    pattern: re.Pattern[str] = field(init=False, compare=False)
    timer: Any = field(init=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.template)
        object.__setattr__(self, "pattern", re.compile(f"^{regex}$"))
        object.__setattr__(self, "timer", metrics.REQUEST_DURATION.labels(route=self.template))


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/items", Role.READER, "get_items"),
    Route("GET", "/v1/items/{sku}", Role.READER, "get_item"),
    Route("PUT", "/v1/items/{sku}", Role.ADMIN, "put_item"),
    Route("POST", "/v1/items/{sku}/purchase", Role.CLERK, "purchase"),
    Route("POST", "/v1/items/{sku}/restock", Role.ADMIN, "restock"),
    Route("GET", "/v1/items/{sku}/audit", Role.ADMIN, "audit"),
    Route("POST", "/v1/orders", Role.CLERK, "order"),
    Route("POST", "/v1/holds", Role.CLERK, "create_hold"),
    Route("GET", "/v1/holds/{hold_id}", Role.CLERK, "get_hold"),
    Route("DELETE", "/v1/holds/{hold_id}", Role.CLERK, "release_hold"),
    Route("POST", "/v1/holds/{hold_id}/confirm", Role.CLERK, "confirm_hold"),
    Route("POST", "/v1/holds/{hold_id}/extend", Role.CLERK, "extend_hold"),
    Route("GET", "/healthz", None, "healthz"),
    Route("GET", "/readyz", None, "readyz"),
    Route("GET", "/metrics", None, "metrics"),
    Route("GET", "/openapi.json", None, "openapi"),
    Route("OPTIONS", "/openapi.json", None, "openapi_preflight"),
)
