"""Scale-out on the Postgres store: claims, hub identities, node leases, the change feed.

A mixin of `PostgresStore` (see docs/architecture.md, "Scale-out"). Every lease time is
the database's clock (``now()``), never a hub's, so hubs on machines whose clocks
disagree still agree on who holds what.

- claim_task: the move out of QUEUED goes through the task-write batches like save_task
  (one statement for every claim of a tick), locking its rows with ``FOR UPDATE SKIP
  LOCKED``, so of two hubs claiming one task the second gets Conflict at once instead of
  queueing behind the first.
- node leases: a (re)connecting node's lease goes to its new hub unconditionally (a node
  has one stream; the newest wins); each hub renews its hub row and the leases of its
  connected nodes in ONE statement, learning from what comes back which leases it lost.
  Expired leases (a hub died and its node never came back) are taken over by any hub
  with ``SKIP LOCKED``, so two reapers never take the same one.
- the change feed: migration 6 fires ``pg_notify`` from a trigger on every task insert
  and update, on a channel named after the schema. One dedicated autocommit connection
  per hub LISTENs; it reconnects with backoff, and calls back after every (re)connect so
  the hub resyncs (NOTIFY is lost while nobody listens).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.errors import Conflict, CortexError
from cortex.store.base import ChangeFeed, TaskChange

if TYPE_CHECKING:
    from cortex.store._pg_batch import TaskWriter

__all__ = ["ClusterQueries", "PgChangeFeed"]

log = logging.getLogger("cortex.store.feed")
_Conn = AsyncConnection[TupleRow]
_CHANNELS = ("SELECT 'cortex_tasks_' || left(md5(current_schema()), 16),"
             " 'cortex_input_' || left(md5(current_schema()), 16)")
_PUBLISH_INPUT = "SELECT pg_notify('cortex_input_' || left(md5(current_schema()), 16), %s)"
_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)

_CLAIM_HUB = """
    INSERT INTO hubs(id, instance, started_at, expires_at)
    VALUES (%(id)s, %(instance)s, extract(epoch from now()), extract(epoch from now()) + %(ttl)s)
    ON CONFLICT (id) DO UPDATE
        SET instance = EXCLUDED.instance, started_at = EXCLUDED.started_at,
            expires_at = EXCLUDED.expires_at
        WHERE hubs.instance = EXCLUDED.instance OR hubs.expires_at < extract(epoch from now())
    RETURNING id"""

_RENEW = """
    WITH hub AS (
        UPDATE hubs SET expires_at = extract(epoch from now()) + %(ttl)s
        WHERE id = %(id)s AND instance = %(instance)s RETURNING id
    )
    UPDATE node_leases SET expires_at = extract(epoch from now()) + %(ttl)s
    WHERE hub = %(id)s AND (tenant, node_id) IN (
        SELECT * FROM unnest(%(tenants)s::text[], %(nodes)s::text[]))
    RETURNING tenant, node_id"""

_TAKE_LEASE = """
    INSERT INTO node_leases(tenant, node_id, hub, expires_at)
    VALUES (%(tenant)s, %(node)s, %(hub)s, extract(epoch from now()) + %(ttl)s)
    ON CONFLICT (tenant, node_id) DO UPDATE
        SET hub = EXCLUDED.hub, expires_at = EXCLUDED.expires_at"""

_TAKE_EXPIRED = """
    UPDATE node_leases l SET hub = %(hub)s, expires_at = extract(epoch from now()) + %(ttl)s
    FROM (SELECT tenant, node_id FROM node_leases WHERE expires_at < extract(epoch from now())
          ORDER BY expires_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) x
    WHERE l.tenant = x.tenant AND l.node_id = x.node_id
    RETURNING l.tenant, l.node_id, l.expires_at"""


class ClusterQueries:
    """The scale-out methods of `PostgresStore` (see the module docstring)."""

    shared = True
    _url: str
    _kwargs: dict[str, Any]

    if TYPE_CHECKING:  # provided by PostgresStore
        _writer: TaskWriter

        def _connection(self) -> contextlib.AbstractAsyncContextManager[_Conn]: ...
        def _call(self) -> contextlib.AbstractAsyncContextManager[None]: ...

    def change_feed(self) -> ChangeFeed:
        return PgChangeFeed(self._url, self._kwargs)

    async def claim_task(self, tenant: str, task: pb.Task, *, expected_version: int,
                         events: Sequence[pb.TaskEvent] = (),
                         attempt: pb.Attempt | None = None) -> None:
        async with self._call():
            try:
                await self._writer.save(tenant, task, expected_version=expected_version,
                                        events=events, attempt=attempt, claim=True)
            except Conflict:
                raise Conflict(f"task {task.id} was claimed or changed by another hub "
                               f"(expected version {expected_version}, queued)") from None

    async def claim_hub_id(self, hub_id: str, instance: str, *, ttl_s: float) -> bool:
        async with self._connection() as conn:
            cur = await conn.execute(_CLAIM_HUB, {"id": hub_id, "instance": instance,
                                                  "ttl": ttl_s})
            return await cur.fetchone() is not None

    async def release_hub(self, hub_id: str, instance: str) -> None:
        async with self._connection() as conn:
            await conn.execute("DELETE FROM hubs WHERE id = %s AND instance = %s",
                               (hub_id, instance))

    async def renew_hub(self, hub_id: str, instance: str, *, ttl_s: float,
                        nodes: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        async with self._connection() as conn:
            cur = await conn.execute(_RENEW, {
                "id": hub_id, "instance": instance, "ttl": ttl_s,
                "tenants": [t for t, _ in nodes], "nodes": [n for _, n in nodes]})
            return {(str(r[0]), str(r[1])) for r in await cur.fetchall()}

    async def take_node_lease(self, tenant: str, node_id: str, hub: str, *,
                              ttl_s: float) -> None:
        async with self._connection() as conn:
            await conn.execute(_TAKE_LEASE, {"tenant": tenant, "node": node_id, "hub": hub,
                                             "ttl": ttl_s})

    async def release_node_lease(self, tenant: str, node_id: str, hub: str, *,
                                 ttl_s: float) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE node_leases SET expires_at = extract(epoch from now()) + %s"
                " WHERE tenant = %s AND node_id = %s AND hub = %s",
                (ttl_s, tenant, node_id, hub))

    async def take_expired_node_leases(self, hub: str, *, ttl_s: float, limit: int = 100
                                       ) -> list[tuple[str, str, float]]:
        async with self._connection() as conn:
            cur = await conn.execute(_TAKE_EXPIRED, {"hub": hub, "ttl": ttl_s,
                                                     "limit": limit})
            return [(str(r[0]), str(r[1]), float(r[2])) for r in await cur.fetchall()]

    async def drop_node_lease(self, tenant: str, node_id: str, hub: str, expires_at: float
                              ) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "DELETE FROM node_leases WHERE tenant = %s AND node_id = %s AND hub = %s"
                " AND expires_at = %s", (tenant, node_id, hub, expires_at))

    async def node_tasks_all_tenants(self, node_id: str) -> list[pb.Task]:
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT body FROM tasks WHERE node_id = %s AND state IN (2, 3) ORDER BY id",
                (node_id,), binary=True)
            return [pb.Task.FromString(r[0]) for r in await cur.fetchall()]

    async def publish_input(self, tenant: str, task_id: str, message: bytes) -> None:
        payload = f"{tenant} {task_id} {base64.b64encode(message).decode()}"
        async with self._connection() as conn:
            await conn.execute(_PUBLISH_INPUT, (payload,))

    async def lease_holder(self, tenant: str, node_id: str) -> str | None:
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT hub FROM node_leases WHERE tenant = %s AND node_id = %s",
                (tenant, node_id))
            row = await cur.fetchone()
        return None if row is None else str(row[0])


class PgChangeFeed(ChangeFeed):
    """LISTEN on the schema's task channel over one dedicated connection."""

    def __init__(self, url: str, kwargs: dict[str, Any]) -> None:
        self._url = url
        self._kwargs = {**kwargs, "autocommit": True,
                        # A dead server must not leave the listener waiting forever.
                        "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                        "keepalives_count": 3}

    async def run(self, on_change: Callable[[TaskChange], None],
                  on_connect: Callable[[], Awaitable[None]],
                  on_input: Callable[[str, str, bytes], None] | None = None) -> None:
        failures = 0
        while True:
            try:
                async for change in self._listen(on_connect):
                    failures = 0
                    if isinstance(change, TaskChange):
                        on_change(change)
                    elif on_input is not None:
                        on_input(*change)
            except (psycopg.Error, OSError, CortexError) as exc:
                delay = _BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)]
                failures += 1
                log.warning("change feed lost (%s); reconnecting in %.2f s",
                            str(exc).strip().splitlines()[0] if str(exc).strip()
                            else type(exc).__name__, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter

    async def _listen(self, on_connect: Callable[[], Awaitable[None]]
                      ) -> AsyncIterator[TaskChange | tuple[str, str, bytes]]:
        async with await AsyncConnection.connect(self._url, **self._kwargs) as conn:
            cur = await conn.execute(_CHANNELS)
            row = await cur.fetchone()
            tasks, inputs = (str(row[0]), str(row[1])) if row else ("", "")
            for channel in (tasks, inputs):
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            log.info("change feed listening on %s", tasks)
            await on_connect()
            async for note in conn.notifies():
                if note.channel == tasks:
                    change = parse_change(note.payload)
                    if change is not None:
                        yield change
                elif (relayed := parse_input(note.payload)) is not None:
                    yield relayed


def parse_change(payload: str) -> TaskChange | None:
    """The trigger's ``tenant id state version body node_id`` payload (body: base64 of a
    queued task's, or ``-``); None if malformed."""
    parts = payload.split(" ", 5)
    if len(parts) != 6:
        return None
    try:
        body = b"" if parts[4] == "-" else base64.b64decode(parts[4], validate=True)
        return TaskChange(parts[0], parts[1], int(parts[2]), int(parts[3]), parts[5], body)
    except ValueError:
        return None


def parse_input(payload: str) -> tuple[str, str, bytes] | None:
    """A relayed input's ``tenant task_id base64(message)`` (None if malformed)."""
    parts = payload.split(" ", 2)
    if len(parts) != 3:
        return None
    try:
        return parts[0], parts[1], base64.b64decode(parts[2], validate=True)
    except ValueError:
        return None
