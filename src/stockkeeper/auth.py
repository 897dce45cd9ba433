"""Bearer tokens: made random, stored hashed, verified in microseconds.

Tokens carry 256 random bits, so a slow password hash buys nothing: a keyed BLAKE2b (the key
lives in the database, made at first start) is enough to make a stolen token table useless
without that key. Verified principals are remembered for a few seconds, so a request usually
pays one dict lookup for auth.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field

from stockkeeper.domain import Principal

TOKEN_PREFIX = "sk_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str, key: bytes) -> bytes:
    return hashlib.blake2b(token.encode(), key=key, digest_size=32).digest()


@dataclass(slots=True)
class TokenCache:
    """Token → principal (or None for unknown), each for at most ttl_s; bounded in size."""

    ttl_s: float = 10.0
    unknown_ttl_s: float = 1.0
    entries_max: int = 10_000
    _entries: dict[str, tuple[Principal | None, float]] = field(
        default_factory=dict, init=False, repr=False
    )

    def get(self, token: str) -> tuple[bool, Principal | None]:
        """(found, principal): found is False when the store must be asked."""
        entry = self._entries.get(token)
        if entry is None or entry[1] < time.monotonic():
            return False, None
        return True, entry[0]

    def put(self, token: str, principal: Principal | None) -> None:
        if len(self._entries) >= self.entries_max:
            self._entries.clear()
        ttl_s = self.ttl_s if principal is not None else self.unknown_ttl_s
        self._entries[token] = (principal, time.monotonic() + ttl_s)
