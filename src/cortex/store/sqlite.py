"""The SQLite store: WAL mode, one writer thread with group commit (`SqliteWriter`, in
`_sqlite_writer`): each method here is a closure the writer thread runs."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.errors import Conflict, NotFound, PermissionDenied
from cortex.store._sqlite_writer import SqliteWriter
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

__all__ = ["SqliteStore"]

_ACTIVE = (pb.QUEUED, pb.ASSIGNED, pb.RUNNING)


class SqliteStore(SqliteWriter, Store):
    """The `Store` on one SQLite file (see the module docstring and `SqliteWriter`)."""

    # -- tenants and credentials -----------------------------------------------------
    async def ensure_tenant(self, tenant: str, *, now: float) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR IGNORE INTO tenants(id, created_at) VALUES (?, ?)", (tenant, now))
            c.execute("INSERT OR IGNORE INTO pools(tenant, name, created_at) VALUES (?, ?, ?)",
                      (tenant, DEFAULT_POOL, now))

        await self._call(op)

    async def create_tenant(self, tenant: TenantRecord) -> None:
        def op(c: sqlite3.Connection) -> None:
            try:
                c.execute("INSERT INTO tenants(id, created_at, weight, quota) VALUES (?,?,?,?)",
                          (tenant.id, tenant.created_at, tenant.weight, json.dumps(tenant.quota)))
            except sqlite3.IntegrityError:
                raise Conflict(f"tenant {tenant.id!r} already exists") from None
            c.execute("INSERT INTO pools(tenant, name, created_at) VALUES (?, ?, ?)",
                      (tenant.id, DEFAULT_POOL, tenant.created_at))

        await self._call(op)

    async def get_tenant(self, tenant: str) -> TenantRecord | None:
        row = await self._call(lambda c: c.execute(
            "SELECT id, created_at, weight, quota FROM tenants WHERE id = ?", (tenant,)
        ).fetchone())
        return None if row is None else TenantRecord(row[0], row[1], row[2], json.loads(row[3]))

    async def list_tenants_all(self) -> list[TenantRecord]:
        rows = await self._call(lambda c: c.execute(
            "SELECT id, created_at, weight, quota FROM tenants ORDER BY id").fetchall())
        return [TenantRecord(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    async def set_tenant_limits(self, tenant: str, *, weight: float,
                                quota: dict[str, float]) -> TenantRecord:
        def op(c: sqlite3.Connection) -> None:
            cur = c.execute("UPDATE tenants SET weight = ?, quota = ? WHERE id = ?",
                            (weight, json.dumps(quota), tenant))
            if cur.rowcount == 0:
                raise NotFound(f"no tenant {tenant!r} (list them with `cortex tenant ls`)")

        await self._call(op)
        rec = await self.get_tenant(tenant)
        if rec is None:  # deleted between the two calls; tenants are never deleted today
            raise NotFound(f"no tenant {tenant!r}")
        return rec

    async def create_pool(self, pool: PoolRecord) -> None:
        def op(c: sqlite3.Connection) -> None:
            try:
                c.execute("INSERT INTO pools(tenant, name, description, created_at, shared_with)"
                          " VALUES (?,?,?,?,?)",
                          (pool.tenant, pool.name, pool.description, pool.created_at,
                           json.dumps(list(pool.shared_with))))
            except sqlite3.IntegrityError:
                raise Conflict(f"pool {pool.name!r} already exists in tenant {pool.tenant!r}"
                               ) from None

        await self._call(op)

    async def list_pools(self, tenant: str) -> list[PoolRecord]:
        rows = await self._call(lambda c: c.execute(
            "SELECT tenant, name, created_at, description, shared_with FROM pools"
            " WHERE tenant = ? ORDER BY name", (tenant,)).fetchall())
        return [_pool(r) for r in rows]

    async def get_pool(self, tenant: str, name: str) -> PoolRecord | None:
        row = await self._call(lambda c: c.execute(
            "SELECT tenant, name, created_at, description, shared_with FROM pools"
            " WHERE tenant = ? AND name = ?", (tenant, name)).fetchone())
        return None if row is None else _pool(row)

    async def list_shared_pools_all(self) -> list[PoolRecord]:
        rows = await self._call(lambda c: c.execute(
            "SELECT tenant, name, created_at, description, shared_with FROM pools"
            " WHERE shared_with != '[]' ORDER BY tenant, name").fetchall())
        return [_pool(r) for r in rows]

    async def list_api_tokens(self, tenant: str) -> list[ApiTokenRecord]:
        rows = await self._call(lambda c: c.execute(
            "SELECT id, tenant, name, role, secret_hash, created_at, expires_at, revoked_at"
            " FROM api_tokens WHERE tenant = ? ORDER BY created_at, id",
            (tenant,)).fetchall())
        return [ApiTokenRecord(*r) for r in rows]

    async def revoke_api_token(self, tenant: str, token_id: str, *, now: float
                               ) -> ApiTokenRecord:
        def op(c: sqlite3.Connection) -> ApiTokenRecord:
            c.execute("UPDATE api_tokens SET revoked_at = ? WHERE tenant = ? AND id = ?"
                      " AND revoked_at = 0", (now, tenant, token_id))
            row = c.execute(
                "SELECT id, tenant, name, role, secret_hash, created_at, expires_at,"
                " revoked_at FROM api_tokens"
                            " WHERE tenant = ? AND id = ?", (tenant, token_id)).fetchone()
            if row is None:
                raise NotFound(f"no API token {token_id!r} in tenant {tenant!r}"
                               " (list them with `cortex token ls`)")
            return ApiTokenRecord(*row)

        return await self._call(op)

    async def create_api_token(self, token: ApiTokenRecord) -> None:
        await self._call(
            lambda c: c.execute(
                "INSERT INTO api_tokens VALUES (?,?,?,?,?,?,?,?)",
                (token.id, token.tenant, token.name, token.role, token.secret_hash,
                 token.created_at, token.expires_at, token.revoked_at),
            )
        )

    async def find_api_token(self, token_id: str) -> ApiTokenRecord | None:
        def op(c: sqlite3.Connection) -> ApiTokenRecord | None:
            row = c.execute(
                "SELECT id, tenant, name, role, secret_hash, created_at, expires_at, revoked_at"
            " FROM api_tokens WHERE id = ?", (token_id,)
            ).fetchone()
            return None if row is None else ApiTokenRecord(*row)

        return await self._call(op)

    async def create_join_token(self, token: JoinTokenRecord) -> None:
        await self._call(
            lambda c: c.execute(
                "INSERT INTO join_tokens(id, tenant, secret_hash, labels, created_at,"
                " expires_at, used_at, node_id, pool) VALUES (?,?,?,?,?,?,?,?,?)",
                (token.id, token.tenant, token.secret_hash, json.dumps(token.labels),
                 token.created_at, token.expires_at, token.used_at, token.node_id, token.pool),
            )
        )

    async def consume_join_token(
        self, token_id: str, secret_hash: bytes, *, node_id: str, now: float
    ) -> JoinTokenRecord:
        def op(c: sqlite3.Connection) -> JoinTokenRecord:
            row = c.execute(
                "SELECT id, tenant, secret_hash, labels, created_at, expires_at, used_at, node_id,"
                " pool FROM join_tokens WHERE id = ?", (token_id,)
            ).fetchone()
            if row is None or row[2] != secret_hash:
                raise PermissionDenied("unknown join token: create one with `cortex token join`")
            rec = JoinTokenRecord(row[0], row[1], row[2], json.loads(row[3]), *row[4:])
            if rec.used_at:
                raise PermissionDenied(
                    "this join token was already used (tokens are single-use): create a new one"
                )
            if rec.expires_at <= now:
                raise PermissionDenied("this join token has expired: create a new one")
            c.execute(
                "UPDATE join_tokens SET used_at = ?, node_id = ? WHERE id = ?",
                (now, node_id, token_id),
            )
            return rec

        return await self._call(op)

    async def record_certificate(
        self, tenant: str, *, serial: str, node_id: str, not_before: float, not_after: float
    ) -> None:
        await self._call(
            lambda c: c.execute(
                "INSERT INTO certificates(serial, tenant, node_id, not_before, not_after)"
                " VALUES (?,?,?,?,?)", (serial, tenant, node_id, not_before, not_after),
            )
        )

    # -- nodes -----------------------------------------------------------------------
    async def upsert_node(self, tenant: str, node: pb.Node) -> None:
        body = node.SerializeToString()

        def op(c: sqlite3.Connection) -> None:
            cur = c.execute(
                "UPDATE nodes SET body = ? WHERE id = ? AND tenant = ?", (body, node.id, tenant)
            )
            if cur.rowcount == 0:
                c.execute("INSERT INTO nodes(id, tenant, body) VALUES (?,?,?)",
                          (node.id, tenant, body))

        await self._call(op)

    async def get_node(self, tenant: str, node_id: str) -> pb.Node | None:
        row = await self._call(
            lambda c: c.execute(
                "SELECT body FROM nodes WHERE tenant = ? AND id = ?", (tenant, node_id)
            ).fetchone()
        )
        return None if row is None else pb.Node.FromString(row[0])

    async def list_nodes(self, tenant: str) -> list[pb.Node]:
        rows = await self._call(
            lambda c: c.execute(
                "SELECT body FROM nodes WHERE tenant = ? ORDER BY id", (tenant,)
            ).fetchall()
        )
        return [pb.Node.FromString(r[0]) for r in rows]

    async def find_node_all_tenants(self, node_id: str) -> pb.Node | None:
        row = await self._call(
            lambda c: c.execute("SELECT body FROM nodes WHERE id = ?", (node_id,)).fetchone()
        )
        return None if row is None else pb.Node.FromString(row[0])

    # -- sessions --------------------------------------------------------------------
    async def pin_session(self, tenant: str, session_id: str, node_id: str, *, now: float
                          ) -> str:
        def op(c: sqlite3.Connection) -> str:
            c.execute("INSERT OR IGNORE INTO sessions VALUES (?,?,?,?)",
                      (tenant, session_id, node_id, now))
            (pinned,) = c.execute("SELECT node_id FROM sessions WHERE tenant = ? AND id = ?",
                                  (tenant, session_id)).fetchone()
            return str(pinned)

        return await self._call(op)

    async def session_node(self, tenant: str, session_id: str) -> str | None:
        row = await self._call(
            lambda c: c.execute("SELECT node_id FROM sessions WHERE tenant = ? AND id = ?",
                                (tenant, session_id)).fetchone())
        return None if row is None else str(row[0])

    async def list_sessions(self, tenant: str, *, limit: int) -> list[SessionRecord]:
        rows = await self._call(lambda c: c.execute(
            "SELECT id, node_id, created_at FROM sessions WHERE tenant = ? "
            "ORDER BY created_at DESC, id LIMIT ?", (tenant, limit)).fetchall())
        return [SessionRecord(str(i), str(n), float(t)) for i, n, t in rows]

    # -- tasks -----------------------------------------------------------------------
    async def insert_task(
        self, tenant: str, task: pb.Task, events: Sequence[pb.TaskEvent]
    ) -> tuple[pb.Task, bool]:
        key = task.spec.idempotency_key or None
        body = task.SerializeToString()
        rows = [(task.id, e.seq, tenant, e.SerializeToString()) for e in events]

        def op(c: sqlite3.Connection) -> tuple[pb.Task, bool]:
            if key is not None:
                row = c.execute(
                    "SELECT body FROM tasks WHERE tenant = ? AND idempotency_key = ?",
                    (tenant, key),
                ).fetchone()
                if row is not None:
                    return pb.Task.FromString(row[0]), False
            c.execute(
                "INSERT INTO tasks(id, tenant, state, node_id, idempotency_key, version, body)"
                " VALUES (?,?,?,?,?,?,?)",
                (task.id, tenant, task.state, task.node_id, key, task.version, body),
            )
            c.executemany("INSERT INTO task_events VALUES (?,?,?,?)", rows)
            return task, True

        return await self._call(op)

    async def save_task(
        self,
        tenant: str,
        task: pb.Task,
        *,
        expected_version: int,
        events: Sequence[pb.TaskEvent] = (),
        attempt: pb.Attempt | None = None,
    ) -> None:
        body = task.SerializeToString()
        rows = [(task.id, e.seq, tenant, e.SerializeToString()) for e in events]
        att = None if attempt is None else (task.id, attempt.attempt, tenant,
                                            attempt.SerializeToString())

        def op(c: sqlite3.Connection) -> None:
            cur = c.execute(
                "UPDATE tasks SET state = ?, node_id = ?, version = ?, body = ?"
                " WHERE id = ? AND tenant = ? AND version = ?",
                (task.state, task.node_id, task.version, body, task.id, tenant,
                 expected_version),
            )
            if cur.rowcount != 1:
                raise Conflict(
                    f"task {task.id} changed concurrently (expected version {expected_version})"
                )
            try:
                c.executemany("INSERT INTO task_events VALUES (?,?,?,?)", rows)
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"task {task.id}: event sequence numbers already used") from exc
            if att is not None:
                c.execute("INSERT OR REPLACE INTO task_attempts VALUES (?,?,?,?)", att)

        await self._call(op)

    async def get_task(
        self, tenant: str, task_id: str, *, with_attempts: bool = False
    ) -> pb.Task | None:
        def op(c: sqlite3.Connection) -> pb.Task | None:
            row = c.execute(
                "SELECT body FROM tasks WHERE tenant = ? AND id = ?", (tenant, task_id)
            ).fetchone()
            if row is None:
                return None
            task = pb.Task.FromString(row[0])
            if with_attempts:
                for (b,) in c.execute(
                    "SELECT body FROM task_attempts WHERE tenant = ? AND task_id = ?"
                    " ORDER BY attempt", (tenant, task_id),
                ):
                    task.attempts.append(pb.Attempt.FromString(b))
            return task

        return await self._call(op)

    async def list_tasks(self, tenant: str, query: TaskQuery) -> list[pb.Task]:
        sql = ["SELECT body FROM tasks WHERE tenant = ?"]
        args: list[Any] = [tenant]
        if query.states:
            sql.append(f"AND state IN ({','.join('?' * len(query.states))})")
            args += list(query.states)
        if query.node_id:
            sql.append("AND node_id = ?")
            args.append(query.node_id)
        if query.after_id:
            sql.append("AND id < ?")
            args.append(query.after_id)
        sql.append("ORDER BY id DESC")
        # Label filters are applied after decoding, so fetch in pages until `limit` match.
        limit = max(1, min(query.limit, 1000))

        def op(c: sqlite3.Connection) -> list[pb.Task]:
            out: list[pb.Task] = []
            for (b,) in c.execute(" ".join(sql), args):
                task = pb.Task.FromString(b)
                if all(task.spec.labels.get(k) == v for k, v in query.labels.items()):
                    out.append(task)
                    if len(out) >= limit:
                        break
            return out

        return await self._call(op)

    async def list_active_tasks_all_tenants(self) -> list[pb.Task]:
        rows = await self._call(
            lambda c: c.execute(
                "SELECT body FROM tasks WHERE state IN (?,?,?) ORDER BY id", _ACTIVE
            ).fetchall()
        )
        return [pb.Task.FromString(r[0]) for r in rows]

    async def get_attempt(self, tenant: str, task_id: str, attempt: int) -> pb.Attempt | None:
        row = await self._call(
            lambda c: c.execute(
                "SELECT body FROM task_attempts WHERE tenant = ? AND task_id = ? AND attempt = ?",
                (tenant, task_id, attempt),
            ).fetchone()
        )
        return None if row is None else pb.Attempt.FromString(row[0])

    async def read_events(
        self, tenant: str, task_id: str, *, after_seq: int, limit: int
    ) -> list[pb.TaskEvent]:
        rows = await self._call(
            lambda c: c.execute(
                "SELECT body FROM task_events WHERE tenant = ? AND task_id = ? AND seq > ?"
                " ORDER BY seq LIMIT ?", (tenant, task_id, after_seq, limit),
            ).fetchall()
        )
        return [pb.TaskEvent.FromString(r[0]) for r in rows]


    # -- artifacts (issue #5) ----------------------------------------------------------
    async def insert_artifact(self, tenant: str, file: pb.File) -> None:
        await self._call(lambda c: c.execute(
            "INSERT INTO artifacts VALUES (?,?,?,?,?,?,?,?,?)",
            (file.artifact_id, tenant, file.task_id, file.name, file.sha256, file.size,
             file.media_type, file.created_at, file.expires_at)))

    async def get_artifact(self, tenant: str, artifact_id: str) -> pb.File | None:
        row = await self._call(lambda c: c.execute(
            "SELECT id, task_id, name, sha256, size, media_type, created_at, expires_at"
            " FROM artifacts WHERE tenant = ? AND id = ?",
            (tenant, artifact_id)).fetchone())
        return None if row is None else _artifact(row)

    async def list_artifacts(self, tenant: str, *, task_id: str = "", limit: int = 100,
                             after_id: str = "") -> list[pb.File]:
        rows = await self._call(lambda c: c.execute(
            "SELECT id, task_id, name, sha256, size, media_type, created_at, expires_at"
            " FROM artifacts"
            " WHERE tenant = ? AND id > ? AND (? = '' OR task_id = ?) ORDER BY id LIMIT ?",
            (tenant, after_id, task_id, task_id, limit)).fetchall())
        return [_artifact(r) for r in rows]

    async def delete_artifact(self, tenant: str, artifact_id: str) -> bool:
        cur = await self._call(lambda c: c.execute(
            "DELETE FROM artifacts WHERE tenant = ? AND id = ?", (tenant, artifact_id)))
        return bool(cur.rowcount)

    async def artifact_bytes(self, tenant: str) -> int:
        row = await self._call(lambda c: c.execute(
            "SELECT coalesce(sum(size), 0) FROM artifacts WHERE tenant = ?",
            (tenant,)).fetchone())
        return int(row[0])

    async def expire_artifacts_all_tenants(self, *, now: float) -> int:
        cur = await self._call(lambda c: c.execute(
            "DELETE FROM artifacts WHERE expires_at > 0 AND expires_at <= ?", (now,)))
        return int(cur.rowcount)

    async def tenant_has_digest(self, tenant: str, sha256: str) -> bool:
        row = await self._call(lambda c: c.execute(
            "SELECT 1 FROM artifacts WHERE tenant = ? AND sha256 = ? LIMIT 1",
            (tenant, sha256)).fetchone())
        return row is not None

    async def artifact_digests_all_tenants(self) -> set[str]:
        rows = await self._call(lambda c: c.execute(
            "SELECT DISTINCT sha256 FROM artifacts").fetchall())
        return {str(r[0]) for r in rows}



    # -- certificate lifecycle ---------------------------------------------------------
    async def record_issued_certificate(self, tenant: str, cert: CertificateRecord) -> None:
        await self._call(lambda c: c.execute(
            "INSERT INTO certificates(serial, tenant, node_id, not_before, not_after,"
            " revoked_at, issuer, pool) VALUES (?,?,?,?,?,?,?,?)",
            (cert.serial, tenant, cert.node_id, cert.not_before, cert.not_after,
             cert.revoked_at, cert.issuer, cert.pool)))

    async def get_certificate(self, tenant: str, serial: str) -> CertificateRecord | None:
        def op(c: sqlite3.Connection) -> CertificateRecord | None:
            row = c.execute(
                "SELECT serial, tenant, node_id, not_before, not_after, revoked_at, issuer,"
                " pool FROM certificates WHERE tenant = ? AND serial = ?",
                (tenant, serial)).fetchone()
            return None if row is None else CertificateRecord(*row)

        return await self._call(op)

    async def list_certificates(self, tenant: str, *, valid_at: float
                                ) -> list[CertificateRecord]:
        def op(c: sqlite3.Connection) -> list[CertificateRecord]:
            rows = c.execute(
                "SELECT serial, tenant, node_id, not_before, not_after, revoked_at, issuer, pool"
                " FROM certificates WHERE tenant = ? AND revoked_at = 0"
                " AND not_after > ? ORDER BY not_before DESC", (tenant, valid_at)).fetchall()
            return [CertificateRecord(*r) for r in rows]

        return await self._call(op)

    async def revoke_node(self, tenant: str, node_id: str, *, reason: str, now: float
                          ) -> int:
        def op(c: sqlite3.Connection) -> int:
            c.execute("INSERT OR IGNORE INTO node_revocations(tenant, node_id, reason,"
                      " revoked_at) VALUES (?,?,?,?)", (tenant, node_id, reason, now))
            cur = c.execute("UPDATE certificates SET revoked_at = ? WHERE tenant = ?"
                            " AND node_id = ? AND revoked_at = 0", (now, tenant, node_id))
            return cur.rowcount

        return await self._call(op)

    async def node_revoked_at(self, tenant: str, node_id: str) -> float:
        def op(c: sqlite3.Connection) -> float:
            row = c.execute("SELECT revoked_at FROM node_revocations WHERE tenant = ?"
                            " AND node_id = ?", (tenant, node_id)).fetchone()
            return 0.0 if row is None else float(row[0])

        return await self._call(op)

    async def certificate_issuers_all_tenants(self, *, now: float) -> dict[str, float]:
        def op(c: sqlite3.Connection) -> dict[str, float]:
            rows = c.execute("SELECT issuer, MAX(not_after) FROM certificates WHERE"
                             " revoked_at = 0 AND not_after > ? GROUP BY issuer",
                             (now,)).fetchall()
            return {str(r[0]): float(r[1]) for r in rows}

        return await self._call(op)


def _pool(row: tuple[Any, ...]) -> PoolRecord:
    return PoolRecord(row[0], row[1], row[2], row[3], tuple(json.loads(row[4])))


def _artifact(row: Sequence[Any]) -> pb.File:
    return pb.File(artifact_id=row[0], task_id=row[1], name=row[2], sha256=row[3],
                   size=row[4], media_type=row[5], created_at=row[6], expires_at=row[7])
