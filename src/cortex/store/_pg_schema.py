"""Postgres schema migrations and the runner that applies them.

Decision: one migration history per backend. SQLite and Postgres differ in types
(BLOB/BYTEA, REAL/DOUBLE PRECISION, TEXT/JSONB), in what an index can say, and in how
the applied version is recorded (``PRAGMA user_version`` there, a table here); one tool
serving both would either hide those differences behind a lowest common denominator or
grow a dialect layer bigger than the migrations. So each backend keeps its own ordered
tuple of scripts, kept *in step*: migration N means the same change on both backends
(1 = the foundation, 2 = pinned sessions, 3 = tenancy, 4 = artifacts,
5 = certificate lifecycle, 6 = scale-out: hubs, node leases, the change feed). A new
migration is added to both tuples in the same change, and the contract suite proves
that both stores still behave alike.

Applied migrations are recorded one row each in ``cortex_schema_version`` inside the
target schema (the first schema of the connection's ``search_path``), so several Cortex
installations can share one database in separate schemas. `migrate` takes a transaction
scoped advisory lock (keyed by that schema) before it even looks, so hubs starting at the
same moment apply each migration exactly once: the others wait, then find nothing to do.
DDL is transactional in Postgres, so a failed migration leaves no half-built schema.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from cortex.errors import Conflict, InvalidArgument

__all__ = ["MIGRATIONS", "MIGRATION_LOCK_CLASS", "migrate"]

# Any constant will do, as long as no other software in the database uses it as the
# first key of a two-key advisory lock; the second key is a hash of the schema name.
MIGRATION_LOCK_CLASS = 0x636F7274  # "cort"

MIGRATIONS: tuple[str, ...] = (
    # 1: the foundation
    """
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        secret_hash BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL DEFAULT 0,
        revoked_at DOUBLE PRECISION NOT NULL DEFAULT 0
    );
    CREATE TABLE join_tokens (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(id),
        secret_hash BYTEA NOT NULL,
        labels JSONB NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        used_at DOUBLE PRECISION NOT NULL DEFAULT 0,
        node_id TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE certificates (
        serial TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(id),
        node_id TEXT NOT NULL,
        not_before DOUBLE PRECISION NOT NULL,
        not_after DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION NOT NULL DEFAULT 0
    );
    CREATE TABLE nodes (
        id TEXT COLLATE "C" PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(id),
        body BYTEA NOT NULL
    );
    CREATE INDEX nodes_tenant ON nodes(tenant);
    -- labels duplicates spec.labels from body so that label filters run in SQL (@>) and
    -- LIMIT counts matching tasks; SQLite filters after decoding instead. Ids sort
    -- bytewise (COLLATE "C") as in SQLite, whatever the database's locale.
    CREATE TABLE tasks (
        id TEXT COLLATE "C" PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(id),
        state INTEGER NOT NULL,
        node_id TEXT NOT NULL,
        idempotency_key TEXT,
        version BIGINT NOT NULL,
        labels JSONB NOT NULL,
        body BYTEA NOT NULL
    );
    CREATE UNIQUE INDEX tasks_idem ON tasks(tenant, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX tasks_tenant_id ON tasks(tenant, id);
    CREATE INDEX tasks_active ON tasks(state) WHERE state IN (1, 2, 3);
    CREATE TABLE task_attempts (
        task_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        tenant TEXT NOT NULL REFERENCES tenants(id),
        body BYTEA NOT NULL,
        PRIMARY KEY (task_id, attempt)
    );
    CREATE TABLE task_events (
        task_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        tenant TEXT NOT NULL REFERENCES tenants(id),
        body BYTEA NOT NULL,
        PRIMARY KEY (task_id, seq)
    );
    """,
    # 2: sessions pinned to the node that holds them (browser, language servers, ...)
    """
    CREATE TABLE sessions (
        tenant TEXT NOT NULL REFERENCES tenants(id),
        id TEXT NOT NULL,
        node_id TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (tenant, id)
    );
    """,
    # 3: tenancy: per-tenant fair-share weight and quota, node pools, join tokens into a pool
    """
    ALTER TABLE tenants ADD COLUMN weight DOUBLE PRECISION NOT NULL DEFAULT 1;
    ALTER TABLE tenants ADD COLUMN quota JSONB NOT NULL DEFAULT '{}';
    CREATE TABLE pools (
        tenant TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        created_at DOUBLE PRECISION NOT NULL,
        shared_with JSONB NOT NULL DEFAULT '[]',
        PRIMARY KEY (tenant, name)
    );
    INSERT INTO pools(tenant, name, created_at) SELECT id, 'default', created_at FROM tenants;
    ALTER TABLE join_tokens ADD COLUMN pool TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX api_tokens_tenant ON api_tokens(tenant);
    """,
    # 4: artifacts (issue #5): metadata of files whose content is a sha256 blob
    """
    CREATE TABLE artifacts (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(id),
        task_id TEXT NOT NULL,
        name TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size BIGINT NOT NULL,
        media_type TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX artifacts_tenant_task ON artifacts(tenant, task_id, id);
    CREATE INDEX artifacts_sha256 ON artifacts(sha256);
    CREATE INDEX artifacts_expiry ON artifacts(expires_at) WHERE expires_at > 0;
    """,
    # 5: certificate lifecycle: which CA issued each certificate, its pool, and revocations
    """
    ALTER TABLE certificates ADD COLUMN issuer TEXT NOT NULL DEFAULT '';
    ALTER TABLE certificates ADD COLUMN pool TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX certificates_node ON certificates(tenant, node_id);
    CREATE TABLE node_revocations (
        tenant TEXT NOT NULL REFERENCES tenants(id),
        node_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        revoked_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (tenant, node_id)
    );
    """,
    # 6: scale-out (issue #7): hub identities, node leases, and the change feed (a NOTIFY
    # per task write on a channel named after the schema, so schemas never hear each other)
    """
    CREATE TABLE hubs (
        id TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE node_leases (
        tenant TEXT NOT NULL REFERENCES tenants(id),
        node_id TEXT NOT NULL,
        hub TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (tenant, node_id)
    );
    CREATE INDEX node_leases_hub ON node_leases(hub);
    CREATE INDEX node_leases_expiry ON node_leases(expires_at);
    CREATE INDEX tasks_node_active ON tasks(node_id) WHERE state IN (2, 3);
    -- A queued task's body rides along when small (every hub queues it: no read back).
    CREATE FUNCTION cortex_tasks_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('cortex_tasks_' || left(md5(TG_TABLE_SCHEMA), 16),
                          NEW.tenant || ' ' || NEW.id || ' ' || NEW.state || ' '
                          || NEW.version || ' ' || CASE
                              WHEN NEW.state = 1 AND length(NEW.body) <= 4096
                              THEN translate(encode(NEW.body, 'base64'), chr(10), '')
                              ELSE '-' END
                          || ' ' || NEW.node_id);
        RETURN NULL;
    END $$;
    CREATE TRIGGER tasks_notify AFTER INSERT OR UPDATE ON tasks
        FOR EACH ROW EXECUTE FUNCTION cortex_tasks_notify();
    """,
)


async def migrate(conn: AsyncConnection[Any]) -> int:
    """Apply the pending migrations in one transaction; return the schema version.

    `conn` must be in autocommit mode (the transaction is opened here). Conflict when
    the schema is newer than this code; InvalidArgument when no schema is selected.
    """
    async with conn.transaction():
        schema = await _target_schema(conn)
        await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                           (MIGRATION_LOCK_CLASS, schema))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS cortex_schema_version ("
            " version INTEGER PRIMARY KEY,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        current = await _current_version(conn, schema)
        for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
            await conn.execute(script)
            await conn.execute("INSERT INTO cortex_schema_version(version) VALUES (%s)",
                               (number,))
        return len(MIGRATIONS)


async def _target_schema(conn: AsyncConnection[Any]) -> str:
    cur = await conn.execute("SELECT current_schema(), current_setting('search_path')")
    (row,) = await cur.fetchall()
    if row[0] is None:
        raise InvalidArgument(
            f"no schema of the search_path ({row[1]}) exists in this database: create it "
            f"(CREATE SCHEMA ...) or fix `options=-csearch_path=...` in the store URL"
        )
    return str(row[0])


async def _current_version(conn: AsyncConnection[Any], schema: str) -> int:
    cur = await conn.execute("SELECT coalesce(max(version), 0), count(*)"
                             " FROM cortex_schema_version")
    ((max_version, applied),) = await cur.fetchall()
    current = int(max_version)
    if current > len(MIGRATIONS):
        raise Conflict(
            f"the Postgres schema {schema!r} is at version {current}, newer than this Cortex "
            f"knows (up to {len(MIGRATIONS)}): a newer hub migrated it; upgrade this hub "
            f"rather than run old code against a new schema"
        )
    if applied != current:
        raise Conflict(
            f"the Postgres schema {schema!r} records {applied} migrations but claims "
            f"version {current}: cortex_schema_version was edited by hand; restore it"
        )
    return current
