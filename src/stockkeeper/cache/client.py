"""The Redis the cache talks to: one server or a Redis Cluster, told apart on the first
connect that answers (`INFO cluster`), so a URL naming any node of either works, also when
Redis comes up after stockkeeper.

Once told, a call goes straight to the client that serves it: `call` and `evalsha` return
that client's coroutine, so the hit path pays one function call here, not a coroutine.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from stockkeeper.cache.cluster import ClusterClient, PurgeLedger
from stockkeeper.cache.resp import Arg, CacheUnavailable, Endpoint, RespClient, Script


class CacheClient(Protocol):
    def call(self, *args: Arg) -> Awaitable[Any]: ...

    def evalsha(
        self, script: Script, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()
    ) -> Awaitable[Any]: ...

    async def delete_matching(self, pattern: str) -> None: ...

    async def close(self) -> None: ...


class RedisClient:
    def __init__(
        self,
        seed: RespClient,
        new_client: Callable[[Endpoint], RespClient],
        ledger: PurgeLedger,
        purge_pattern: str,
    ) -> None:
        self._seed = seed
        self._cluster = functools.partial(ClusterClient, seed, new_client, ledger, purge_pattern)
        self._told: RespClient | ClusterClient | None = None

    @property
    def cluster(self) -> bool | None:
        """Whether Redis is a cluster; None until it answered once."""
        return None if self._told is None else isinstance(self._told, ClusterClient)

    def call(self, *args: Arg) -> Awaitable[Any]:
        if self._told is not None:
            return self._told.call(*args)
        return self._then(lambda client: client.call(*args))

    def evalsha(
        self, script: Script, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()
    ) -> Awaitable[Any]:
        if self._told is not None:
            return self._told.evalsha(script, keys, args)
        return self._then(lambda client: client.evalsha(script, keys, args))

    async def delete_matching(self, pattern: str) -> None:
        await self._then(lambda client: client.delete_matching(pattern))

    async def close(self) -> None:
        await (self._told or self._seed).close()

    async def _then(self, run: Callable[[RespClient | ClusterClient], Awaitable[Any]]) -> Any:
        return await run(self._told or await self._tell())

    async def _tell(self) -> RespClient | ClusterClient:
        info = await self._seed.call("INFO", "cluster")
        if self._told is None:  # another caller may have told meanwhile
            if b"cluster_enabled:1" in info:
                if self._seed.endpoint.host is None:
                    raise CacheUnavailable("a Redis Cluster is reached over TCP, not a socket")
                self._told = self._cluster()
            else:
                self._told = self._seed
        return self._told
