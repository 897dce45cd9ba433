"""The Lua scripts of the Redis cache protocol (docs/cache.md): each one key, one round trip.

A SKU's hash `sk:{SKU}` holds i (incarnation), v (version of the value, or floor when there is
no value), q (on_hand at v), h (held at v), t (install time, µs, as a string: no float
rounding), l/le (fill lease holder and expiry in ms). q and h are always written together, with
v. Versions are compared as Lua numbers: exact below 2^53.
"""

from __future__ import annotations

import enum
import hashlib

from stockkeeper.cache.resp import Script


class Keys:
    """Key names of one database's cache: `sk:<namespace>:{SKU}`.

    The namespace is derived from the database's secret token key, so two deployments (or a
    test database and a production one) sharing one Redis never read each other's items, and
    the key itself is not revealed. The braces are a Redis Cluster hash tag: everything of one
    SKU lives in one slot.
    """

    def __init__(self, namespace: str) -> None:
        self._prefix = f"sk:{namespace}:{{"
        self.pattern = f"sk:{namespace}:*"

    @classmethod
    def for_database(cls, token_key: bytes) -> Keys:
        # The person string names the hash's layout too (2: with `h`): servers of an older
        # layout, still running during an upgrade, write keys these never read.
        digest = hashlib.blake2b(token_key, digest_size=6, person=b"sk-cache-2")
        return cls(digest.hexdigest())

    def item(self, sku: str) -> str:
        return self._prefix + sku + "}"


# Redis TIME as microseconds, in a string: 16 digits do not survive Lua's number formatting.
_NOW_US = "local now = redis.call('TIME')\nlocal t = now[1] .. string.format('%06d', now[2])\n"


class ReadReply(enum.IntEnum):
    HIT = 1  # v, q, pttl_ms, i, h
    LEASE = 2  # i: load it, you hold the fill lease
    WAIT = 3  # i: another filler holds the lease


# KEYS[1]; ARGV: token, lease_ms, registration_ttl_ms
READ = Script(
    """
local h = redis.call('HMGET', KEYS[1], 'i', 'v', 'q', 'l', 'le', 'h')
if h[3] then
  return {1, h[2], h[3], redis.call('PTTL', KEYS[1]), h[1], h[6]}
end
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
if not h[1] then
  redis.call('HSET', KEYS[1], 'i', ARGV[1], 'v', '0', 'l', ARGV[1], 'le', now_ms + ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {2, ARGV[1]}
end
if (not h[4]) or tonumber(h[5]) < now_ms then
  redis.call('HSET', KEYS[1], 'l', ARGV[1], 'le', now_ms + ARGV[2])
  return {2, h[1]}
end
return {3, h[1]}
"""
)


class FillReply(enum.IntEnum):
    LOST = 0  # the incarnation is gone: what was read may predate a served newer version
    FILLED = 1
    NEWER = 2  # v, q, h: a newer value is cached; serve it
    FLOOR = 3  # a newer version was seen and there is no value: read again


# KEYS[1]; ARGV: incarnation, version, on_hand, ttl_ms, held
FILL = Script(
    """
local h = redis.call('HMGET', KEYS[1], 'i', 'v', 'q', 'h')
if h[1] ~= ARGV[1] then return {0} end
local cur = tonumber(h[2]) or 0
local v = tonumber(ARGV[2])
if cur > v then
  if h[3] then return {2, h[2], h[3], h[4]} end
  return {3}
end
if not (h[3] and cur == v) then
"""
    + _NOW_US
    + """  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'q', ARGV[3], 'h', ARGV[5], 't', t)
end
redis.call('HDEL', KEYS[1], 'l', 'le')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1}
"""
)


class PushReply(enum.IntEnum):
    ABSENT = 0  # nothing cached: nothing stale
    INSTALLED = 1  # t
    CURRENT = 2  # v, t: already at or above
    FLOORED = 3  # no value; the floor now rejects older fills


# KEYS[1]; ARGV: version, on_hand, ttl_ms, held
PUSH = Script(
    """
local h = redis.call('HMGET', KEYS[1], 'i', 'v', 'q', 't')
if not h[1] then return {0} end
local cur = tonumber(h[2]) or 0
local v = tonumber(ARGV[1])
if not h[3] then
  if cur < v then redis.call('HSET', KEYS[1], 'v', ARGV[1]) end
  return {3}
end
if cur >= v then return {2, h[2], h[4]} end
"""
    + _NOW_US
    + """redis.call('HSET', KEYS[1], 'v', ARGV[1], 'q', ARGV[2], 'h', ARGV[4], 't', t)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, t}
"""
)
