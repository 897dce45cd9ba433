"""HTTP messages over raw ASGI: the request's body, query and headers; the response."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson

from stockkeeper.domain import Checks, FieldError, InvalidRequest
from stockkeeper.http.problems import HttpProblem

BODY_BYTES_MAX = 64 * 1024
JSON = b"application/json"
NO_CONTENT = 204

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(slots=True)
class Request:
    scope: Scope
    receive: Receive
    params: dict[str, str]
    principal_name: str = ""
    headers: dict[bytes, bytes] = field(default_factory=dict)

    def query(self) -> dict[str, str]:
        return dict(self.query_pairs())

    def query_pairs(self) -> list[tuple[str, str]]:
        """Every name=value pair in order, repeats included (`?sku=A&sku=B`)."""
        return parse_qsl(self.scope["query_string"].decode("latin-1"), keep_blank_values=True)

    async def json_object(
        self, fields: set[str], *, optional: bool = False
    ) -> tuple[dict[str, Any], Checks]:
        """The body as a JSON object, with a Checks naming any field outside `fields`: the
        service adds its own findings, so the caller learns every error at once. An
        `optional` body may also be empty (then it is {})."""
        declared = self.headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > BODY_BYTES_MAX:
            raise HttpProblem("body_too_large", f"the body may be at most {BODY_BYTES_MAX} bytes")
        chunks, size = [], 0
        while True:
            message = await self.receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > BODY_BYTES_MAX:
                raise HttpProblem(
                    "body_too_large", f"the body may be at most {BODY_BYTES_MAX} bytes"
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        if optional and not raw.strip():
            return {}, Checks()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise HttpProblem("malformed_json", f"the body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise HttpProblem("malformed_json", "the body must be a JSON object")
        checks = Checks()
        for name in sorted(set(body) - fields):
            checks.fail(name, "unknown field")
        return body, checks


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


INTEGER = re.compile(r"-?[0-9]{1,19}")


def query_int(query: dict[str, str], name: str, default: int | None) -> int | None:
    raw = query.get(name)
    if raw is None:
        return default
    if not INTEGER.fullmatch(raw):
        raise InvalidRequest([FieldError(name, "must be an integer written in ASCII digits")])
    return int(raw)


def json_response(
    status: int, data: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> Response:
    return Response(status, orjson.dumps(data), headers=headers or [])


async def send_response(send: Send, response: Response) -> None:
    if response.status == NO_CONTENT:  # no content headers (RFC 9110: no Content-Length)
        headers = list(response.headers)
    else:  # every other answer, on the read path: one list, as before 204s existed
        headers = [
            (b"content-type", response.content_type),
            (b"content-length", b"%d" % len(response.body)),
            *response.headers,
        ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
