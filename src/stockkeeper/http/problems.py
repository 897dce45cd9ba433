"""RFC 9457 problem details for every error of API.md, with its stable `code`."""

from __future__ import annotations

from typing import Any

import orjson

from stockkeeper.domain import StockkeeperError

PROBLEM_CONTENT_TYPE = b"application/problem+json"

# code -> (status, title)
PROBLEMS: dict[str, tuple[int, str]] = {
    "malformed_json": (400, "Body is not a JSON object"),
    "unauthenticated": (401, "Authentication required"),
    "forbidden": (403, "Role too low"),
    "unknown_sku": (404, "Unknown SKU"),
    "unknown_hold": (404, "Unknown hold"),
    "not_found": (404, "No such resource"),
    "method_not_allowed": (405, "Method not allowed"),
    "insufficient_stock": (409, "Insufficient stock"),
    "hold_expired": (409, "Hold expired"),
    "hold_closed": (409, "Hold closed"),
    "body_too_large": (413, "Body too large"),
    "invalid_request": (422, "Invalid request"),
    "idempotency_key_reused": (422, "Idempotency key reused"),
    "internal_error": (500, "Internal error"),
    "unavailable": (503, "Service unavailable"),
}


class HttpProblem(StockkeeperError):
    """An error that exists only at the HTTP layer (bad JSON, size, routing)."""

    def __init__(self, code: str, detail: str, **extra: Any) -> None:
        assert code in PROBLEMS, f"unknown problem code {code}"
        self.code = code
        self.extra = extra
        super().__init__(detail)

    def details(self) -> dict[str, Any]:
        return self.extra


def problem_body(error: StockkeeperError) -> tuple[int, bytes]:
    status, title = PROBLEMS[error.code]
    body = {
        "type": f"urn:stockkeeper:problem:{error.code}",
        "title": title,
        "status": status,
        "detail": str(error),
        "code": error.code,
        **error.details(),
    }
    return status, orjson.dumps(body)
