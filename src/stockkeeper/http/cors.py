"""Opt-in CORS for the API's description alone, so Swagger UI (or any tool) served from another
origin can load `/openapi.json`.

Only the document gets it: it is public and needs no token. The API itself never answers a
cross-origin browser request, so a page on another origin cannot drive stock changes with a
token the browser holds. No `Access-Control-Allow-Credentials` is sent for the same reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ANY_ORIGIN = "*"
DOCS_CORS_ENV_VAR = "STOCKKEEPER_DOCS_CORS_ORIGINS"
ORIGIN = re.compile(r"https?://[^/?#\s,]+")
PREFLIGHT_MAX_AGE_S = 600  # browsers cap it lower anyway (Chromium: 2 hours, Firefox: 1 day)
ALLOWED_METHODS = b"GET"
ALLOW = b"GET, OPTIONS"  # the document's methods, for any OPTIONS request

Headers = list[tuple[bytes, bytes]]


def parse_origin(value: str) -> str:
    """An origin as browsers send it (`scheme://host[:port]`, lower case), or `*` for any."""
    origin = value.strip().lower()
    if origin != ANY_ORIGIN and not ORIGIN.fullmatch(origin):
        raise ValueError(f"{value!r} is not an origin: give scheme://host[:port], or *")
    return origin


def parse_origins(listed: str) -> frozenset[str]:
    """The origins of a comma-separated list (the environment's form)."""
    return frozenset(parse_origin(origin) for origin in listed.split(",") if origin.strip())


@dataclass(frozen=True)
class DocsCors:
    """The origins allowed to read the document; none (the default) turns CORS off."""

    origins: frozenset[str] = frozenset()

    @classmethod
    def of(cls, origins: Iterable[str]) -> DocsCors:
        return cls(frozenset(parse_origin(origin) for origin in origins))

    def _allowed_origin(self, request_headers: Mapping[bytes, bytes]) -> bytes | None:
        origin = request_headers.get(b"origin")
        if origin is None:
            return None
        if ANY_ORIGIN in self.origins:
            return ANY_ORIGIN.encode()
        return origin if origin.decode("latin-1").lower() in self.origins else None

    def get_headers(self, request_headers: Mapping[bytes, bytes]) -> Headers:
        """For the document itself. Vary whenever CORS is on: the answer then depends on the
        Origin, and a shared cache must not hand one origin's answer to another."""
        if not self.origins:
            return []
        headers = [(b"vary", b"Origin")]
        origin = self._allowed_origin(request_headers)
        if origin is not None:
            headers.append((b"access-control-allow-origin", origin))
        return headers

    def preflight_headers(self, request_headers: Mapping[bytes, bytes]) -> Headers:
        """For OPTIONS: `Allow` always; the grant only to an allowed origin's preflight (one
        naming Access-Control-Request-Method). Anything else gets no grant, and the browser
        refuses the page its request."""
        headers = [(b"allow", ALLOW), *self.get_headers(request_headers)]
        preflight = b"access-control-request-method" in request_headers
        if not preflight or self._allowed_origin(request_headers) is None:
            return headers
        headers += [
            (b"access-control-allow-methods", ALLOWED_METHODS),
            (b"access-control-max-age", b"%d" % PREFLIGHT_MAX_AGE_S),
        ]
        requested = request_headers.get(b"access-control-request-headers")
        if requested:
            # The document needs no header, and grants no credentials: asking costs nothing.
            headers.append((b"access-control-allow-headers", requested))
        return headers


DOCS_CORS_OFF = DocsCors()
