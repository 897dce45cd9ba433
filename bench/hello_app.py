"""A bare ASGI app answering every request with a small JSON body: the ceiling of granian plus
Python on this machine, for bench/hello_ceiling.sh (never part of the product)."""

from __future__ import annotations

from typing import Any

BODY = b'{"sku":"A-1","on_hand":7,"version":12}'
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))],
}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(START)
    await send({"type": "http.response.body", "body": BODY})
