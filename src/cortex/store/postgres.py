"""The Postgres store: psycopg 3 async over a small connection pool, for several hubs.

Every method is one transaction. Most are ONE statement on an autocommit connection, so
the statement is the transaction and costs one round trip (an explicit BEGIN … COMMIT
would triple that). Task writes (`insert_task`, `save_task`) are group-committed: the
writes queued within one event-loop tick go out as one multi-row statement whose
data-modifying CTEs write tasks, events and attempts together, all or nothing per task,
and each caller is answered after that commit (`cortex.store._pg_batch`). Only
consume_join_token, which must read before it decides, runs an explicit transaction.

Every race two hubs can run is settled by Postgres, never by a read in Python followed by
a write:

- insert_task: ``INSERT … ON CONFLICT (tenant, idempotency_key) DO NOTHING``; a second
  inserter of the same key waits on the unique index until the first commits, inserts
  nothing, then reads the winner. That read is a second statement because it must be: a
  statement never sees a row committed after it began (READ COMMITTED), so it would be a
  fresh statement inside an explicit transaction too. Tasks are never deleted, so the
  winner is there to read.
- pin_session: the same, on sessions.
- save_task: ``UPDATE … WHERE version = expected``; a second writer from the same version
  waits for the first, re-checks the WHERE against the committed row, matches nothing and
  gets Conflict; its events and attempt, fed by the UPDATE's RETURNING, are not written.
  In a batch this holds row by row: only the stale rows' callers get Conflict.
- consume_join_token: ``SELECT … FOR UPDATE``; a second consumer waits, then sees it used.

A connection is not tested when it leaves the pool (that would cost a round trip per
call); a call on a connection the server dropped fails with Unavailable, never retried
here (a write may have committed), and the pool then replaces all its dead connections.

Driver errors become Cortex errors in one place (`cortex.store._pg_errors`), the original chained:
integrity violations (unique, foreign key) are Conflict, values Postgres cannot hold are
InvalidArgument, everything else (connection refused or lost, pool exhausted, serialization
failures, a dropped schema) is Unavailable. Migrations: see `cortex.store._pg_schema`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from cortex.store._pg_batch import TaskWriter
from cortex.store._pg_cluster import ClusterQueries
from cortex.store._pg_errors import describe, translate
from cortex.store._pg_schema import migrate
from cortex.store.base import (
    DEFAULT_POOL,
    ApiTokenRecord,
    CertificateRecord,
    JoinTokenRecord,
    PoolRecord,
    SessionRecord,
    Store,
    TaskQuery,
    TenantRecord,
)

__all__ = ["PostgresStore"]

_Conn = AsyncConnection[TupleRow]
# libpq waits forever for an unreachable host by default; a hub should say so instead.
_CONNECT_TIMEOUT_S = 10
# How long open() waits for the pool's first connection, and a call for a free one.
_POOL_TIMEOUT_S = 30.0
_ACTIVE = (pb.QUEUED, pb.ASSIGNED, pb.RUNNING)
# Literal states, not parameters, so the planner can use the partial index tasks_active.
_SELECT_ACTIVE = sql.SQL("SELECT body FROM tasks WHERE state IN ({}) ORDER BY id").format(
    sql.SQL(", ").join(sql.Literal(int(s)) for s in _ACTIVE)
)

class PostgresStore(ClusterQueries, Store):
    """A store on the database named by `url` (a libpq URL or ``key=value`` string).

    The schema is the first one of the connection's ``search_path``; pin it with
    ``?options=-csearch_path%3Dmyschema`` in the URL. The pool keeps `min_size` to
    `max_size` connections.
    """

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise InvalidArgument(f"not a usable Postgres URL: {exc}") from exc
        self._url = url
        self._where = describe(params)
        self._kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            self._kwargs["connect_timeout"] = _CONNECT_TIMEOUT_S
        if "application_name" not in params:
            self._kwargs["application_name"] = "cortex"
        self._min_size, self._max_size = min_size, max_size
        self._pool: AsyncConnectionPool[_Conn] | None = None
        self._closed = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer = TaskWriter(self._pooled)

    # -- lifecycle -------------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None or self._closed:
            raise Unavailable("this store was opened before: make a new one to reconnect")
        try:
            # A connection of its own: a refused connection fails here at once with
            # libpq's reason, where a pool would keep retrying in the background.
            async with await AsyncConnection.connect(self._url, **self._kwargs) as conn:
                await migrate(conn)
        except psycopg.Error as exc:
            raise translate(exc, self._where) from exc
        pool: AsyncConnectionPool[_Conn] = AsyncConnectionPool(
            self._url, kwargs=self._kwargs, min_size=self._min_size,
            max_size=self._max_size, open=False, name="cortex-store",
            timeout=_POOL_TIMEOUT_S,
        )
        try:
            await pool.open(wait=True, timeout=_POOL_TIMEOUT_S)
        except psycopg.Error as exc:
            await pool.close()
            raise translate(exc, self._where) from exc
        self._pool = pool

    async def close(self) -> None:
        """Refuse new calls, let the calls already made finish, then close the pool."""
        self._closed = True
        await self._idle.wait()
        await self._writer.wait_idle()  # batches whose callers stopped waiting
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[None]:
        """One call in flight, which close() waits for; refused once close() began."""
        if self._pool is None or self._closed:
            raise Unavailable("the store is closed")
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[_Conn]:
        """A pooled autocommit connection (each statement its own transaction), driver
        errors translated."""
        async with self._call(), self._pooled() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _pooled(self) -> AsyncIterator[_Conn]:
        """`_connection` for work admitted already (a batch of task writes): the pool
        stays open until that work is done."""
        pool = self._pool
        if pool is None:
            raise Unavailable("the store is closed")
        conn: _Conn | None = None
        try:
            async with pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            if conn is not None and conn.broken:
                # The server restarted or cut us off: the idle connections died with this
                # one. Replace them now so that the caller's retry gets a live one.
                await pool.check()
            raise translate(exc, self._where) from exc

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Conn]:
        """A pooled connection inside BEGIN … COMMIT (ROLLBACK when the body raises)."""
        async with self._connection() as conn, conn.transaction():
            yield conn

    async def _execute(self, query: str, args: Sequence[Any]) -> None:
        async with self._connection() as conn:
            await conn.execute(query, args)

    async def _fetchone(self, query: str, args: Sequence[Any]) -> TupleRow | None:
        async with self._connection() as conn:
            cur = await conn.execute(query, args, binary=True)
            return await cur.fetchone()

    async def _fetchall(self, query: sql.Composed | str, args: Sequence[Any]
                        ) -> list[TupleRow]:
        async with self._connection() as conn:
            cur = await conn.execute(query, args, binary=True)
            return await cur.fetchall()

    # -- tenants and credentials -----------------------------------------------------
    async def ensure_tenant(self, tenant: str, *, now: float) -> None:
        async with self._transaction() as conn:
            await conn.execute("INSERT INTO tenants(id, created_at) VALUES (%s, %s)"
                               " ON CONFLICT DO NOTHING", (tenant, now))
            await conn.execute("INSERT INTO pools(tenant, name, created_at) VALUES (%s, %s, %s)"
                               " ON CONFLICT DO NOTHING", (tenant, DEFAULT_POOL, now))

    async def create_tenant(self, tenant: TenantRecord) -> None:
        async with self._transaction() as conn:
            cur = await conn.execute(
                "INSERT INTO tenants(id, created_at, weight, quota) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (tenant.id, tenant.created_at, tenant.weight, Jsonb(tenant.quota)))
            if cur.rowcount == 0:
                raise Conflict(f"tenant {tenant.id!r} already exists")
            await conn.execute("INSERT INTO pools(tenant, name, created_at) VALUES (%s, %s, %s)",
                               (tenant.id, DEFAULT_POOL, tenant.created_at))

    async def get_tenant(self, tenant: str) -> TenantRecord | None:
        row = await self._fetchone(
            "SELECT id, created_at, weight, quota FROM tenants WHERE id = %s", (tenant,))
        return None if row is None else TenantRecord(*row)

    async def list_tenants_all(self) -> list[TenantRecord]:
        rows = await self._fetchall(
            "SELECT id, created_at, weight, quota FROM tenants ORDER BY id", ())
        return [TenantRecord(*r) for r in rows]

    async def set_tenant_limits(self, tenant: str, *, weight: float,
                                quota: dict[str, float]) -> TenantRecord:
        row = await self._fetchone(
            "UPDATE tenants SET weight = %s, quota = %s WHERE id = %s"
            " RETURNING id, created_at, weight, quota", (weight, Jsonb(quota), tenant))
        if row is None:
            raise NotFound(f"no tenant {tenant!r} (list them with `cortex tenant ls`)")
        return TenantRecord(*row)

    async def create_pool(self, pool: PoolRecord) -> None:
        row = await self._fetchone(
            "INSERT INTO pools(tenant, name, description, created_at, shared_with)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING name",
            (pool.tenant, pool.name, pool.description, pool.created_at,
             Jsonb(list(pool.shared_with))))
        if row is None:
            raise Conflict(f"pool {pool.name!r} already exists in tenant {pool.tenant!r}")

    async def list_pools(self, tenant: str) -> list[PoolRecord]:
        rows = await self._fetchall(
            "SELECT tenant, name, created_at, description, shared_with FROM pools"
            " WHERE tenant = %s ORDER BY name", (tenant,))
        return [_pool(r) for r in rows]

    async def get_pool(self, tenant: str, name: str) -> PoolRecord | None:
        row = await self._fetchone(
            "SELECT tenant, name, created_at, description, shared_with FROM pools"
            " WHERE tenant = %s AND name = %s", (tenant, name))
        return None if row is None else _pool(row)

    async def list_shared_pools_all(self) -> list[PoolRecord]:
        rows = await self._fetchall(
            "SELECT tenant, name, created_at, description, shared_with FROM pools"
            " WHERE shared_with != '[]'::jsonb ORDER BY tenant, name", ())
        return [_pool(r) for r in rows]

    async def list_api_tokens(self, tenant: str) -> list[ApiTokenRecord]:
        rows = await self._fetchall(
            "SELECT id, tenant, name, role, secret_hash, created_at, expires_at, revoked_at"
            " FROM api_tokens WHERE tenant = %s"
            " ORDER BY created_at, id", (tenant,))
        return [ApiTokenRecord(*r) for r in rows]

    async def revoke_api_token(self, tenant: str, token_id: str, *, now: float
                               ) -> ApiTokenRecord:
        async with self._transaction() as conn:
            await conn.execute("UPDATE api_tokens SET revoked_at = %s WHERE tenant = %s"
                               " AND id = %s AND revoked_at = 0", (now, tenant, token_id))
            cur = await conn.execute(
                "SELECT id, tenant, name, role, secret_hash, created_at, expires_at,"
                " revoked_at FROM api_tokens"
                                     " WHERE tenant = %s AND id = %s", (tenant, token_id))
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no API token {token_id!r} in tenant {tenant!r}"
                           " (list them with `cortex token ls`)")
        return ApiTokenRecord(*row)

    async def create_api_token(self, token: ApiTokenRecord) -> None:
        await self._execute(
            "INSERT INTO api_tokens(id, tenant, name, role, secret_hash, created_at,"
            " expires_at, revoked_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (token.id, token.tenant, token.name, token.role, token.secret_hash,
             token.created_at, token.expires_at, token.revoked_at),
        )

    async def find_api_token(self, token_id: str) -> ApiTokenRecord | None:
        row = await self._fetchone(
            "SELECT id, tenant, name, role, secret_hash, created_at, expires_at, revoked_at"
            " FROM api_tokens WHERE id = %s", (token_id,),
        )
        return None if row is None else ApiTokenRecord(*row)

    async def create_join_token(self, token: JoinTokenRecord) -> None:
        await self._execute(
            "INSERT INTO join_tokens(id, tenant, secret_hash, labels, created_at,"
            " expires_at, used_at, node_id, pool) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (token.id, token.tenant, token.secret_hash, Jsonb(token.labels),
             token.created_at, token.expires_at, token.used_at, token.node_id, token.pool),
        )

    async def consume_join_token(
        self, token_id: str, secret_hash: bytes, *, node_id: str, now: float
    ) -> JoinTokenRecord:
        async with self._transaction() as conn:
            # FOR UPDATE: a concurrent consumer waits here until this one commits, then
            # reads the token as used.
            cur = await conn.execute(
                "SELECT id, tenant, secret_hash, labels, created_at, expires_at, used_at,"
                " node_id, pool FROM join_tokens WHERE id = %s FOR UPDATE", (token_id,),
            )
            row = await cur.fetchone()
            if row is None or not hmac.compare_digest(row[2], secret_hash):
                raise PermissionDenied("unknown join token: create one with `cortex token join`")
            rec = JoinTokenRecord(*row)
            if rec.used_at:
                raise PermissionDenied(
                    "this join token was already used (tokens are single-use): create a new one"
                )
            if rec.expires_at <= now:
                raise PermissionDenied("this join token has expired: create a new one")
            await conn.execute(
                "UPDATE join_tokens SET used_at = %s, node_id = %s WHERE id = %s",
                (now, node_id, token_id),
            )
            return rec

    async def record_certificate(
        self, tenant: str, *, serial: str, node_id: str, not_before: float, not_after: float
    ) -> None:
        await self._execute(
            "INSERT INTO certificates(serial, tenant, node_id, not_before, not_after)"
            " VALUES (%s, %s, %s, %s, %s)", (serial, tenant, node_id, not_before, not_after),
        )

    # -- nodes -----------------------------------------------------------------------
    async def upsert_node(self, tenant: str, node: pb.Node) -> None:
        args = (node.id, tenant, node.SerializeToString())
        async with self._connection() as conn:
            cur = await conn.execute(
                "INSERT INTO nodes(id, tenant, body) VALUES (%s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body"
                " WHERE nodes.tenant = EXCLUDED.tenant", args,
            )
            if cur.rowcount == 0:
                # Another tenant holds this id. The plain INSERT fails with the unique
                # violation, which becomes Conflict with Postgres' own words chained.
                await conn.execute("INSERT INTO nodes(id, tenant, body) VALUES (%s, %s, %s)",
                                   args)

    async def get_node(self, tenant: str, node_id: str) -> pb.Node | None:
        row = await self._fetchone(
            "SELECT body FROM nodes WHERE tenant = %s AND id = %s", (tenant, node_id)
        )
        return None if row is None else pb.Node.FromString(row[0])

    async def list_nodes(self, tenant: str) -> list[pb.Node]:
        rows = await self._fetchall(
            "SELECT body FROM nodes WHERE tenant = %s ORDER BY id", (tenant,)
        )
        return [pb.Node.FromString(r[0]) for r in rows]

    async def find_node_all_tenants(self, node_id: str) -> pb.Node | None:
        row = await self._fetchone("SELECT body FROM nodes WHERE id = %s", (node_id,))
        return None if row is None else pb.Node.FromString(row[0])

    # -- sessions --------------------------------------------------------------------
    async def pin_session(self, tenant: str, session_id: str, node_id: str, *, now: float
                          ) -> str:
        async with self._connection() as conn:
            cur = await conn.execute(
                "INSERT INTO sessions(tenant, id, node_id, created_at) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (tenant, id) DO NOTHING RETURNING node_id",
                (tenant, session_id, node_id, now),
            )
            row = await cur.fetchone()
            if row is None:
                cur = await conn.execute(
                    "SELECT node_id FROM sessions WHERE tenant = %s AND id = %s",
                    (tenant, session_id),
                )
                row = await cur.fetchone()
            if row is None:
                raise Conflict(f"session {session_id} vanished while being pinned: retry")
            return str(row[0])

    async def session_node(self, tenant: str, session_id: str) -> str | None:
        row = await self._fetchone(
            "SELECT node_id FROM sessions WHERE tenant = %s AND id = %s", (tenant, session_id)
        )
        return None if row is None else str(row[0])

    async def list_sessions(self, tenant: str, *, limit: int) -> list[SessionRecord]:
        rows = await self._fetchall(
            "SELECT id, node_id, created_at FROM sessions WHERE tenant = %s "
            "ORDER BY created_at DESC, id LIMIT %s", (tenant, limit))
        return [SessionRecord(str(i), str(n), float(t)) for i, n, t in rows]

    # -- tasks -----------------------------------------------------------------------
    async def insert_task(
        self, tenant: str, task: pb.Task, events: Sequence[pb.TaskEvent]
    ) -> tuple[pb.Task, bool]:
        async with self._call():
            return await self._writer.insert(tenant, task, events)

    async def save_task(
        self,
        tenant: str,
        task: pb.Task,
        *,
        expected_version: int,
        events: Sequence[pb.TaskEvent] = (),
        attempt: pb.Attempt | None = None,
    ) -> None:
        async with self._call():
            await self._writer.save(tenant, task, expected_version=expected_version,
                                    events=events, attempt=attempt)

    async def get_task(
        self, tenant: str, task_id: str, *, with_attempts: bool = False
    ) -> pb.Task | None:
        if not with_attempts:
            row = await self._fetchone(
                "SELECT body FROM tasks WHERE tenant = %s AND id = %s", (tenant, task_id)
            )
            return None if row is None else pb.Task.FromString(row[0])
        # One statement, so the task and its attempts come from one snapshot.
        row = await self._fetchone(
            "SELECT t.body, ARRAY(SELECT a.body FROM task_attempts a"
            " WHERE a.tenant = t.tenant AND a.task_id = t.id ORDER BY a.attempt)"
            " FROM tasks t WHERE t.tenant = %s AND t.id = %s", (tenant, task_id),
        )
        if row is None:
            return None
        task = pb.Task.FromString(row[0])
        task.attempts.extend(pb.Attempt.FromString(b) for b in row[1])
        return task

    async def list_tasks(self, tenant: str, query: TaskQuery) -> list[pb.Task]:
        where = [sql.SQL("tenant = %s")]
        args: list[Any] = [tenant]
        if query.states:
            where.append(sql.SQL("state = ANY(%s)"))
            args.append([int(s) for s in query.states])
        if query.node_id:
            where.append(sql.SQL("node_id = %s"))
            args.append(query.node_id)
        if query.after_id:
            where.append(sql.SQL("id < %s"))
            args.append(query.after_id)
        if query.labels:
            where.append(sql.SQL("labels @> %s"))
            args.append(Jsonb(dict(query.labels)))
        args.append(max(1, min(query.limit, 1000)))
        stmt = sql.SQL("SELECT body FROM tasks WHERE {} ORDER BY id DESC LIMIT %s").format(
            sql.SQL(" AND ").join(where)
        )
        return [pb.Task.FromString(r[0]) for r in await self._fetchall(stmt, args)]

    async def list_active_tasks_all_tenants(self) -> list[pb.Task]:
        return [pb.Task.FromString(r[0]) for r in await self._fetchall(_SELECT_ACTIVE, ())]

    async def get_attempt(self, tenant: str, task_id: str, attempt: int) -> pb.Attempt | None:
        row = await self._fetchone(
            "SELECT body FROM task_attempts WHERE tenant = %s AND task_id = %s"
            " AND attempt = %s", (tenant, task_id, attempt),
        )
        return None if row is None else pb.Attempt.FromString(row[0])

    async def read_events(
        self, tenant: str, task_id: str, *, after_seq: int, limit: int
    ) -> list[pb.TaskEvent]:
        rows = await self._fetchall(
            "SELECT body FROM task_events WHERE tenant = %s AND task_id = %s AND seq > %s"
            " ORDER BY seq LIMIT %s", (tenant, task_id, after_seq, limit),
        )
        return [pb.TaskEvent.FromString(r[0]) for r in rows]


    # -- artifacts (issue #5) ----------------------------------------------------------
    async def insert_artifact(self, tenant: str, file: pb.File) -> None:
        await self._execute(
            "INSERT INTO artifacts(id, tenant, task_id, name, sha256, size, media_type,"
            " created_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (file.artifact_id, tenant, file.task_id, file.name, file.sha256, file.size,
             file.media_type, file.created_at, file.expires_at))

    async def get_artifact(self, tenant: str, artifact_id: str) -> pb.File | None:
        row = await self._fetchone(
            "SELECT id, task_id, name, sha256, size, media_type, created_at, expires_at"
            " FROM artifacts WHERE tenant = %s AND id = %s",
            (tenant, artifact_id))
        return None if row is None else _artifact(row)

    async def list_artifacts(self, tenant: str, *, task_id: str = "", limit: int = 100,
                             after_id: str = "") -> list[pb.File]:
        rows = await self._fetchall(
            "SELECT id, task_id, name, sha256, size, media_type, created_at, expires_at"
            " FROM artifacts"
            " WHERE tenant = %s AND id > %s AND (%s = '' OR task_id = %s) ORDER BY id LIMIT %s",
            (tenant, after_id, task_id, task_id, limit))
        return [_artifact(r) for r in rows]

    async def delete_artifact(self, tenant: str, artifact_id: str) -> bool:
        async with self._connection() as conn:
            cur = await conn.execute("DELETE FROM artifacts WHERE tenant = %s AND id = %s",
                                     (tenant, artifact_id))
            return bool(cur.rowcount)

    async def artifact_bytes(self, tenant: str) -> int:
        row = await self._fetchone(
            "SELECT coalesce(sum(size), 0) FROM artifacts WHERE tenant = %s", (tenant,))
        return 0 if row is None else int(row[0])

    async def expire_artifacts_all_tenants(self, *, now: float) -> int:
        async with self._connection() as conn:
            cur = await conn.execute(
                "DELETE FROM artifacts WHERE expires_at > 0 AND expires_at <= %s", (now,))
            return int(cur.rowcount)

    async def tenant_has_digest(self, tenant: str, sha256: str) -> bool:
        row = await self._fetchone(
            "SELECT 1 FROM artifacts WHERE tenant = %s AND sha256 = %s LIMIT 1",
            (tenant, sha256))
        return row is not None

    async def artifact_digests_all_tenants(self) -> set[str]:
        rows = await self._fetchall("SELECT DISTINCT sha256 FROM artifacts", ())
        return {str(r[0]) for r in rows}
    # -- certificate lifecycle ---------------------------------------------------------
    async def record_issued_certificate(self, tenant: str, cert: CertificateRecord) -> None:
        await self._execute(
            "INSERT INTO certificates(serial, tenant, node_id, not_before, not_after,"
            " revoked_at, issuer, pool) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (cert.serial, tenant, cert.node_id, cert.not_before, cert.not_after,
             cert.revoked_at, cert.issuer, cert.pool))

    async def get_certificate(self, tenant: str, serial: str) -> CertificateRecord | None:
        row = await self._fetchone(
            "SELECT serial, tenant, node_id, not_before, not_after, revoked_at, issuer, pool"
            " FROM certificates WHERE tenant = %s AND serial = %s", (tenant, serial))
        return None if row is None else CertificateRecord(*row)

    async def list_certificates(self, tenant: str, *, valid_at: float
                                ) -> list[CertificateRecord]:
        rows = await self._fetchall(
            "SELECT serial, tenant, node_id, not_before, not_after, revoked_at, issuer, pool"
            " FROM certificates WHERE tenant = %s AND revoked_at = 0"
            " AND not_after > %s ORDER BY not_before DESC", (tenant, valid_at))
        return [CertificateRecord(*r) for r in rows]

    async def revoke_node(self, tenant: str, node_id: str, *, reason: str, now: float
                          ) -> int:
        async with self._transaction() as conn:
            await conn.execute(
                "INSERT INTO node_revocations(tenant, node_id, reason, revoked_at)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (tenant, node_id, reason, now))
            cur = await conn.execute(
                "UPDATE certificates SET revoked_at = %s WHERE tenant = %s AND node_id = %s"
                " AND revoked_at = 0", (now, tenant, node_id))
            return cur.rowcount

    async def node_revoked_at(self, tenant: str, node_id: str) -> float:
        row = await self._fetchone("SELECT revoked_at FROM node_revocations WHERE tenant = %s"
                                   " AND node_id = %s", (tenant, node_id))
        return 0.0 if row is None else float(row[0])

    async def certificate_issuers_all_tenants(self, *, now: float) -> dict[str, float]:
        rows = await self._fetchall(
            "SELECT issuer, MAX(not_after) FROM certificates WHERE revoked_at = 0"
            " AND not_after > %s GROUP BY issuer", (now,))
        return {str(r[0]): float(r[1]) for r in rows}


def _artifact(row: Sequence[Any]) -> pb.File:
    return pb.File(artifact_id=row[0], task_id=row[1], name=row[2], sha256=row[3],
                   size=row[4], media_type=row[5], created_at=row[6], expires_at=row[7])


def _pool(row: TupleRow) -> PoolRecord:
    return PoolRecord(row[0], row[1], row[2], row[3], tuple(row[4]))
