"""Connecting to PostgreSQL when the DSN names several hosts (a primary and its
standbys, with ``target_session_attrs=read-write``).

asyncpg tries the hosts in turn, but its ``timeout`` bounds the whole attempt: a first
host that accepts the connection and then never answers (a frozen server, a host whose
packets are dropped) uses all of it, and the server that took over is never tried.
``connect`` tries each host with a bound of its own instead. Every connection of the
scheduler to the database goes through it: the store's writer and read pool, the
leader's lock, the standby's listener, the blob and session pools.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

#: the longest one host may take to connect and say whether it takes writes (seconds)
HOST_TIMEOUT_S = 3.0


def hosts_of(dsn: str) -> list[tuple[str, int | None]]:
    """The (host, port) pairs a DSN names, in its order; a single one for a DSN with
    one host or none (asyncpg's defaults then apply)."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    netloc = parts.netloc.rpartition("@")[2]
    if "host" in query:
        hosts = query["host"][0].split(",")
    else:
        hosts = [h.rpartition(":")[0] if _has_port(h) else h for h in netloc.split(",")]
    if "port" in query:
        ports: list[int | None] = [int(p) for p in query["port"][0].split(",")]
    else:
        ports = [int(h.rpartition(":")[2]) if _has_port(h) else None for h in netloc.split(",")]
    if len(ports) == 1:
        ports = ports * len(hosts)
    return list(zip(hosts, ports, strict=False))


def _has_port(host: str) -> bool:
    head, sep, tail = host.rpartition(":")
    return bool(sep) and tail.isdigit() and not head.endswith("[")


async def connect(dsn: str, *args: Any, **kwargs: Any) -> Any:
    """``asyncpg.connect`` that gives each host of the DSN its own time (see the module
    docstring); usable as ``create_pool(connect=...)``. When no host will do, raises
    ConnectionError naming the last host's answer."""
    targets = hosts_of(dsn)
    if len(targets) <= 1:
        kwargs.setdefault("timeout", HOST_TIMEOUT_S)
        return await asyncpg.connect(dsn, *args, **kwargs)
    kwargs.pop("timeout", None)
    last: BaseException | None = None
    for host, port in targets:
        try:
            return await asyncpg.connect(
                dsn, *args, host=host, port=port, timeout=HOST_TIMEOUT_S, **kwargs
            )
        except (
            OSError,
            TimeoutError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.InternalClientError,  # the host does not take writes
        ) as e:
            last = e
    # An OSError, as when the one host of a plain DSN cannot be reached: callers treat
    # both alike (the database is away; try again later).
    raise ConnectionError(
        f"no host of the store's DSN takes connections for writes: {last}"
    ) from last


class LazyPool:
    """A connection pool opened on first use, its tables made ready then (``prepare``
    runs once, on one of its connections), and closed with ``close``.

    For the parts that keep their own tables beside the store's (blobs, dashboard
    sessions): a scheduler that never uses them opens no connection for them.
    """

    def __init__(
        self, dsn: str, prepare: Callable[[Any], Awaitable[None]], **pool_args: Any
    ) -> None:
        self.dsn = dsn
        self._prepare = prepare
        self._pool_args = pool_args
        self._pool: Any = None
        self._opening = asyncio.Lock()

    async def get(self) -> Any:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                pool = await asyncpg.create_pool(self.dsn, connect=connect, **self._pool_args)
                try:
                    async with pool.acquire() as conn:
                        await self._prepare(conn)
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
        return self._pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
