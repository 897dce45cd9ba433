"""Bearer tokens: made random, stored hashed, verified in microseconds.

Tokens carry 256 random bits, so a slow password hash buys nothing: a keyed BLAKE2b (the key
lives in the database, made at first start) is enough to make a stolen token table useless
without that key. Each process holds a snapshot of every live token's hash (kept fresh by
`live_tokens.LiveTokens`), so verifying a token is one hash and one dict lookup.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from stockkeeper.domain import Principal

TOKEN_PREFIX = "sk_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str, key: bytes) -> bytes:
    return hashlib.blake2b(token.encode(), key=key, digest_size=32).digest()


@dataclass(frozen=True, slots=True)
class TokenSnapshot:
    """Every live token's hash → principal, as of the store's token change counter
    `generation` (None: never loaded). Immutable, so a refresh swaps it whole under readers."""

    generation: int | None = None
    principals: Mapping[bytes, Principal] = field(default_factory=dict)

    def find(self, token_hash: bytes) -> Principal | None:
        return self.principals.get(token_hash)

    def with_token(self, token_hash: bytes, principal: Principal) -> TokenSnapshot:
        """This snapshot plus one token; the generation stays, so the next check reloads."""
        return TokenSnapshot(self.generation, {**self.principals, token_hash: principal})
