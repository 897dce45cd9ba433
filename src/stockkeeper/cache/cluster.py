"""Redis Cluster: every command routed by its key's slot, over one multiplexed connection per
node (a `RespClient` each, so commands to one node in one loop turn go in one write).

Redirects: `MOVED` means the slot map is out of date: it is read again (from the node that
answered first) and the command sent anew. `ASK` (a slot half-way through a migration) sends
`ASKING` and the command to the named node, once, and changes no map. `TRYAGAIN` waits a little.
`CLUSTERDOWN` and a node that does not answer are `CacheUnavailable`: the process trips, as for
a single Redis. Every loop is bounded (`REDIRECTS_MAX`).

Fencing a promoted primary (docs/cache.md, "Redis Cluster"). Replication is asynchronous: a
replica promoted after its primary died may lack writes that primary acknowledged, so it may
hold an *older* value of a key that a reader was already served. Such a node is never used as
it is: a primary whose `INFO replication` shows a promotion (`second_repl_offset` ≥ 0) serves
this deployment only after its keys were deleted (a vanish, which the cache protocol makes
safe) and the database recorded that node (`run_id:master_replid`) as purged. Until then its
slots answer `CacheUnavailable` at once. The ledger makes it once per promotion, for every
server and for servers started later.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from stockkeeper import metrics
from stockkeeper.cache.resp import (
    Arg,
    CacheReplyError,
    CacheUnavailable,
    Endpoint,
    RespClient,
    Script,
)
from stockkeeper.cache.slots import SLOTS, Node, parse_slots, slot
from stockkeeper.domain import StockkeeperError
from stockkeeper.tasks import cancel_and_wait

log = logging.getLogger("stockkeeper.cache")

REDIRECTS_MAX = 5
TRYAGAIN_WAIT_MS = 10.0
REFRESH_MS_MIN = 100.0  # a map read again after a node failed, at most this often
PURGE_SCAN_COUNT = 1_000
_KEYLESS = frozenset({b"PING", b"INFO", b"SCAN", b"CLUSTER", b"SCRIPT"})


class PurgeLedger(Protocol):
    """Where the purge of a promoted primary is recorded: the deployment's database."""

    async def cache_node_purged(self, node: str) -> bool: ...

    async def record_cache_node_purged(self, node: str) -> None: ...


ClientFactory = Callable[[Endpoint], RespClient]


class ClusterClient:
    def __init__(
        self,
        seed: RespClient,
        new_client: ClientFactory,
        ledger: PurgeLedger,
        purge_pattern: str,
    ) -> None:
        self._seed = seed
        self._new_client = new_client
        self._ledger = ledger
        self._purge_pattern = purge_pattern
        seed_endpoint = seed.endpoint
        assert seed_endpoint.host is not None, "a Redis Cluster is reached over TCP"
        self._clients: dict[str, RespClient] = {f"{seed_endpoint.host}:{seed_endpoint.port}": seed}
        self._slots: list[RespClient | None] = [None] * SLOTS
        self._unusable: dict[str, str] = {}  # primary address → why its slots fail at once
        self._primaries: dict[str, RespClient] = {}  # fenced, reachable when the map was read
        self._trusted: set[str] = set()  # promoted primaries known purged
        self._fencing: dict[str, asyncio.Task[None]] = {}  # identity → its purge
        self._stale = True
        self._refreshed_at_s = -math.inf
        self._refreshing: asyncio.Task[None] | None = None
        self._closed = False

    # --- commands ---------------------------------------------------------------------------

    # `call` and `evalsha` hand back `_routed`'s coroutine: one coroutine per command.

    def call(self, *args: Arg) -> Awaitable[Any]:
        """Run a command by its key's slot; `PING` asks every primary (the cache's health)."""
        name = _name(args[0])
        if name == b"PING":
            return self._ping_primaries()
        if name in _KEYLESS:
            raise ValueError(f"{args[0]!r} is not routed on a Redis Cluster")
        return self._routed(args[1], args, None)

    def evalsha(
        self, script: Script, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()
    ) -> Awaitable[Any]:
        return self._routed(keys[0], ("EVALSHA", script.sha, len(keys), *keys, *args), script)

    async def delete_matching(self, pattern: str) -> None:
        """Delete every key matching `pattern` on every primary."""
        await self._refresh(force=self._stale)
        self._check_whole()
        await asyncio.gather(*(self._delete_on(node, pattern) for node in self._primaries.values()))

    async def close(self) -> None:
        self._closed = True
        await cancel_and_wait(self._refreshing, *self._fencing.values())
        await asyncio.gather(*(client.close() for client in self._clients.values()))

    async def _routed(self, key: Arg, command: tuple[Arg, ...], script: Script | None) -> Any:
        key_slot = slot(key if isinstance(key, str | bytes) else str(key))
        asking: RespClient | None = None
        load = False  # the node lacks the script (a new primary): load it in the same write
        for _ in range(REDIRECTS_MAX):
            if self._stale:
                await self._refresh(force=False)
            node = asking or self._slots[key_slot]
            if node is None:
                raise CacheUnavailable(self._why_unusable(key_slot))
            try:
                if asking is None and not load:
                    return await node.call(*command)  # the hit path
                return await _send(node, command, script if load else None, asking=asking)
            except CacheUnavailable:
                self._stale = True  # a failover, perhaps: read the map before the next try
                raise
            except CacheReplyError as error:
                kind, _, rest = str(error).partition(" ")
                if kind == "NOSCRIPT" and script is not None and not load:
                    load = True
                    continue  # the same node, ASKING again if it was asked
                asking, load = None, False
                if kind in ("MOVED", "ASK"):
                    metrics.CLUSTER_REDIRECTS.labels(kind=kind.lower()).inc()
                if kind == "MOVED":
                    await self._refresh(force=True, prefer=_target(rest, node))
                elif kind == "ASK":
                    address = _target(rest, node)
                    asking = self._primaries.get(address)
                    if asking is None:  # not a primary this map fenced: read it again first
                        await self._refresh(force=True, prefer=address)
                elif kind == "TRYAGAIN":
                    await asyncio.sleep(TRYAGAIN_WAIT_MS / 1000)
                elif kind == "CLUSTERDOWN":
                    raise CacheUnavailable(f"Redis Cluster down: {error}") from error
                else:
                    raise
        raise CacheUnavailable(f"slot {key_slot}: still redirected after {REDIRECTS_MAX} tries")

    async def _ping_primaries(self) -> bytes:
        await self._refresh(force=self._stale)
        self._check_whole()
        await asyncio.gather(*(node.call("PING") for node in self._primaries.values()))
        return b"PONG"

    def _check_whole(self) -> None:
        if self._unusable:
            raise CacheUnavailable("; ".join(self._unusable.values()))

    def _why_unusable(self, key_slot: int) -> str:
        reasons = "; ".join(self._unusable.values()) or "no slot map yet"
        return f"slot {key_slot} has no usable primary: {reasons}"

    # --- the slot map -----------------------------------------------------------------------

    async def _refresh(self, *, force: bool, prefer: str | None = None) -> None:
        """Read the slot map, one reader at a time; a failed node's map at most every
        REFRESH_MS_MIN, so a dead primary costs no storm of map reads."""
        attempt = self._refreshing
        if attempt is None:
            if not force and time.monotonic() - self._refreshed_at_s < REFRESH_MS_MIN / 1000:
                return
            attempt = self._refreshing = asyncio.create_task(self._read_map(prefer))
            attempt.add_done_callback(self._refreshed)
        await asyncio.shield(attempt)

    def _refreshed(self, attempt: asyncio.Task[None]) -> None:
        self._refreshing = None
        if not attempt.cancelled():
            attempt.exception()  # its awaiters have it; none may be left to retrieve it

    async def _read_map(self, prefer: str | None) -> None:
        self._refreshed_at_s = time.monotonic()
        reply = await self._cluster_slots(prefer)
        try:
            ranges = parse_slots(reply, self._seed.endpoint.host or "127.0.0.1")
        except ValueError as error:
            raise CacheUnavailable(f"Redis Cluster: {error}") from error
        primaries = {r.primary.address: r.primary for r in ranges}
        verdicts = await asyncio.gather(*(self._usable(node) for node in primaries.values()))
        unusable = {
            address: why
            for address, why in zip(primaries, verdicts, strict=True)
            if why is not None
        }
        slots: list[RespClient | None] = [None] * SLOTS
        for r in ranges:
            if r.primary.address not in unusable:
                slots[r.first : r.last + 1] = [self._client(r.primary)] * (r.last - r.first + 1)
        self._slots, self._unusable = slots, unusable
        self._primaries = {a: self._client(n) for a, n in primaries.items() if a not in unusable}
        self._stale = bool(unusable)

    async def _cluster_slots(self, prefer: str | None) -> list[Any]:
        addresses = [a for a in (prefer, *self._primaries, *self._clients) if a is not None]
        errors: list[str] = []
        for address in dict.fromkeys(addresses):
            client = self._clients.get(address) or self._client(_node(address))
            try:
                reply: list[Any] = await client.call("CLUSTER", "SLOTS")
            except (CacheUnavailable, CacheReplyError) as error:
                errors.append(f"{address}: {error}")
                continue
            return reply
        raise CacheUnavailable(
            f"no Redis Cluster node answered CLUSTER SLOTS ({'; '.join(errors)})"
        )

    async def _usable(self, node: Node) -> str | None:
        """None if `node` may serve its slots now, else why not (unreachable, not yet a
        primary, promoted and not yet purged). A promoted one is fenced in passing."""
        client = self._client(node)
        try:
            replication = _info(await client.call("INFO", "replication"))
            if replication.get("role") != "master":
                return f"{node.address} is not a primary yet"
            if int(replication.get("second_repl_offset", "-1")) < 0:
                return None  # never promoted since it started: it lost nothing it acknowledged
            server = _info(await client.call("INFO", "server"))
            identity = f"{server['run_id']}:{replication['master_replid']}"
            if identity not in self._trusted and await self._ledger.cache_node_purged(identity):
                self._trusted.add(identity)  # another server (or an earlier run) fenced it
        except (CacheUnavailable, CacheReplyError) as error:
            return f"{node.address}: {error}"
        except StockkeeperError as error:
            return f"{node.address} was promoted; its fence record is out of reach: {error}"
        if identity in self._trusted:
            return None
        if identity not in self._fencing:
            # In the background: a purge may take a while, and the map must not wait for it.
            fence = asyncio.create_task(self._fence(client, node, identity))
            self._fencing[identity] = fence
            fence.add_done_callback(lambda _: self._fencing.pop(identity, None))
        return f"{node.address} was promoted: its keys are deleted before it serves"

    async def _fence(self, client: RespClient, node: Node, identity: str) -> None:
        started = time.monotonic()
        try:
            await self._delete_on(client, self._purge_pattern, routed=False)
            await self._ledger.record_cache_node_purged(identity)
        except (CacheUnavailable, CacheReplyError, StockkeeperError) as error:
            log.warning("Redis Cluster: cannot fence promoted %s yet: %s", node.address, error)
            return
        metrics.CLUSTER_FENCES.inc()
        log.warning(
            "Redis Cluster: %s was promoted (a replica may lack acknowledged writes); its "
            "keys were deleted in %.0f ms before it serves",
            node.address,
            (time.monotonic() - started) * 1000,
        )
        self._trusted.add(identity)
        self._stale, self._refreshed_at_s = True, -math.inf  # serve it at the next call

    async def _delete_on(self, client: RespClient, pattern: str, *, routed: bool = True) -> None:
        """SCAN one node, deleting what matches. A key that moved meanwhile is deleted where
        it went (routed), except while fencing: that node serves nobody yet."""
        cursor: int | bytes = 0
        while True:
            cursor, keys = await client.call(
                "SCAN", cursor, "MATCH", pattern, "COUNT", PURGE_SCAN_COUNT
            )
            unlink: Callable[[bytes], Awaitable[Any]] = (
                (lambda key: self._routed(key, ("UNLINK", key), None))
                if routed
                else (lambda key: client.call("UNLINK", key))
            )
            await asyncio.gather(*(unlink(key) for key in keys))
            if int(cursor) == 0:
                return

    def _client(self, node: Node) -> RespClient:
        client = self._clients.get(node.address)
        if client is None:
            if self._closed:
                raise CacheUnavailable("Redis client closed")
            endpoint = dataclasses.replace(self._seed.endpoint, host=node.host, port=node.port)
            client = self._clients[node.address] = self._new_client(endpoint)
        return client


async def _send(
    node: RespClient,
    command: tuple[Arg, ...],
    script: Script | None,
    *,
    asking: RespClient | None,
) -> Any:
    """One command to one node in one write: after ASKING when redirected so, and after
    loading `script` when the node did not know it."""
    commands: list[tuple[Arg, ...]] = []
    if script is not None:
        commands.append(("SCRIPT", "LOAD", script.source))
    if asking is not None:
        commands.append(("ASKING",))
    commands.append(command)
    return (await node.pipeline(commands))[-1]


def _name(arg: Arg) -> bytes:
    return arg.upper() if isinstance(arg, bytes) else str(arg).upper().encode()


def _target(redirect: str, sender: RespClient) -> str:
    """`<slot> <host>:<port>` of a MOVED or ASK; an empty host is the sender's."""
    address = redirect.split(" ")[-1]
    return f"{sender.endpoint.host}{address}" if address.startswith(":") else address


def _node(address: str) -> Node:
    host, _, port = address.rpartition(":")
    return Node(host, int(port))


def _info(reply: bytes) -> dict[str, str]:
    fields = {}
    for line in reply.decode().splitlines():
        name, sep, value = line.partition(":")
        if sep and not name.startswith("#"):
            fields[name] = value.strip()
    return fields
