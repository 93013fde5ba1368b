"""SQLite schema migrations, applied in order; `PRAGMA user_version` records the last."""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: the foundation
    """
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL
    );
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        secret_hash BLOB NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL DEFAULT 0,
        revoked_at REAL NOT NULL DEFAULT 0
    );
    CREATE TABLE join_tokens (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(id),
        secret_hash BLOB NOT NULL,
        labels TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL NOT NULL DEFAULT 0,
        node_id TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE certificates (
        serial TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(id),
        node_id TEXT NOT NULL,
        not_before REAL NOT NULL,
        not_after REAL NOT NULL,
        revoked_at REAL NOT NULL DEFAULT 0
    );
    CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(id),
        body BLOB NOT NULL
    );
    CREATE INDEX nodes_tenant ON nodes(tenant);
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(id),
        state INTEGER NOT NULL,
        node_id TEXT NOT NULL,
        idempotency_key TEXT,
        version INTEGER NOT NULL,
        body BLOB NOT NULL
    );
    CREATE UNIQUE INDEX tasks_idem ON tasks(tenant, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX tasks_tenant_id ON tasks(tenant, id);
    CREATE INDEX tasks_active ON tasks(state) WHERE state IN (1, 2, 3);
    CREATE TABLE task_attempts (
        task_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        tenant TEXT NOT NULL REFERENCES tenants(id),
        body BLOB NOT NULL,
        PRIMARY KEY (task_id, attempt)
    );
    CREATE TABLE task_events (
        task_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        tenant TEXT NOT NULL REFERENCES tenants(id),
        body BLOB NOT NULL,
        PRIMARY KEY (task_id, seq)
    ) WITHOUT ROWID;
    """,
    # 2: sessions pinned to the node that holds them (browser, language servers, ...)
    """
    CREATE TABLE sessions (
        tenant TEXT NOT NULL REFERENCES tenants(id),
        id TEXT NOT NULL,
        node_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (tenant, id)
    );
    """,
    # 3: tenancy: per-tenant fair-share weight and quota, node pools, join tokens into a pool
    """
    ALTER TABLE tenants ADD COLUMN weight REAL NOT NULL DEFAULT 1;
    ALTER TABLE tenants ADD COLUMN quota TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE pools (
        tenant TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        shared_with TEXT NOT NULL DEFAULT '[]',
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
        size INTEGER NOT NULL,
        media_type TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
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
        revoked_at REAL NOT NULL,
        PRIMARY KEY (tenant, node_id)
    );
    """,
    # 6: scale-out (issue #7): hub identities and node leases. A SQLite hub is alone, so
    # it never reads them; the tables keep the two histories in step.
    """
    CREATE TABLE hubs (
        id TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        started_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE node_leases (
        tenant TEXT NOT NULL REFERENCES tenants(id),
        node_id TEXT NOT NULL,
        hub TEXT NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (tenant, node_id)
    );
    """,
)
