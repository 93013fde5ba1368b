"""The store interface. Every method that touches tenant data takes the tenant first and
filters by it; the few system-wide scans say so in their name (``*_all_tenants``).

Tasks use optimistic concurrency: every write names the version it read, and fails with
`Conflict` when another writer got there first, so two hubs can never both apply a move.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from cortex._proto.cortex.v1 import common_pb2 as pb

__all__ = ["DEFAULT_POOL", "ApiTokenRecord", "CertificateRecord", "ChangeFeed",
           "JoinTokenRecord", "PoolRecord", "SessionRecord", "Store", "TaskChange", "TaskQuery",
           "TenantRecord"]

DEFAULT_POOL = "default"   # every tenant has it; nodes join it unless their token names another


@dataclass(frozen=True, slots=True)
class TenantRecord:
    id: str
    created_at: float
    weight: float = 1.0                                     # fair-share weight
    quota: dict[str, float] = field(default_factory=dict)   # cortex.core.quota.Quota fields


@dataclass(frozen=True, slots=True)
class PoolRecord:
    tenant: str
    name: str
    created_at: float
    description: str = ""
    # Other tenants whose tasks may run on this pool's nodes (fair share decides between
    # them); the nodes stay the owning tenant's.
    shared_with: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ApiTokenRecord:
    id: str
    tenant: str
    name: str
    role: str
    secret_hash: bytes
    created_at: float
    expires_at: float = 0.0     # 0 = never
    revoked_at: float = 0.0


@dataclass(frozen=True, slots=True)
class JoinTokenRecord:
    id: str
    tenant: str
    secret_hash: bytes
    labels: dict[str, str]
    created_at: float
    expires_at: float
    used_at: float = 0.0
    node_id: str = ""
    pool: str = "default"


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session (browser, language server, ...) pinned to the node that holds it."""

    id: str
    node_id: str
    created_at: float


@dataclass(frozen=True, slots=True)
class TaskQuery:
    states: Sequence[int] = ()
    node_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    limit: int = 100
    after_id: str = ""          # page token: tasks are listed newest first by id


@dataclass(frozen=True, slots=True)
class TaskChange:
    """One committed task write, as the change feed announces it (no body: read it)."""

    tenant: str
    task_id: str
    state: int
    version: int
    node_id: str
    body: bytes = b""   # the serialized Task when the store sends it along (queued ones)


class ChangeFeed(abc.ABC):
    """Task writes of every hub sharing the store, as they commit (best effort: a lost
    connection loses announcements, so every (re)connect is followed by a resync)."""

    @abc.abstractmethod
    async def run(self, on_change: Callable[[TaskChange], None],
                  on_connect: Callable[[], Awaitable[None]],
                  on_input: Callable[[str, str, bytes], None] | None = None) -> None:
        """Listen until cancelled: `on_connect` after every (re)connect, once listening,
        then `on_change` per announcement and `on_input(tenant, task id, message)` per
        relayed input (`Store.publish_input`); reconnects with backoff on its own."""


class Store(abc.ABC):
    """Async persistence. Implementations must make each method one transaction."""

    # Whether several hubs may share this store (then the cluster methods below work).
    shared: bool = False

    # -- scale-out: several hubs on one store (issue #7); a single-hub store has none ---
    def change_feed(self) -> ChangeFeed | None:
        """The feed of task writes by every hub, or None on a single-hub store."""
        return None

    async def claim_task(self, tenant: str, task: pb.Task, *, expected_version: int,
                         events: Sequence[pb.TaskEvent] = (),
                         attempt: pb.Attempt | None = None) -> None:
        """`save_task` for the move out of QUEUED: Conflict at once (never a wait) when
        another hub holds or moved the row. A single-hub store just saves."""
        await self.save_task(tenant, task, expected_version=expected_version,
                             events=events, attempt=attempt)

    async def claim_hub_id(self, hub_id: str, instance: str, *, ttl_s: float) -> bool:
        """Take `hub_id` for this process (`instance`) unless another live one holds it."""
        raise NotImplementedError("a single-hub store has no hub registry")

    async def release_hub(self, hub_id: str, instance: str) -> None:
        """Give `hub_id` up (a clean stop): the next process may take it at once."""
        raise NotImplementedError("a single-hub store has no hub registry")

    async def renew_hub(self, hub_id: str, instance: str, *, ttl_s: float,
                        nodes: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Renew the hub's lease and those of its connected `nodes` (tenant, node id), in
        one transaction; the nodes whose lease it still holds."""
        raise NotImplementedError("a single-hub store has no node leases")

    async def take_node_lease(self, tenant: str, node_id: str, hub: str, *,
                              ttl_s: float) -> None:
        """The node connected to `hub`: its lease is `hub`'s, whoever held it."""
        raise NotImplementedError("a single-hub store has no node leases")

    async def release_node_lease(self, tenant: str, node_id: str, hub: str, *,
                                 ttl_s: float) -> None:
        """The node left `hub`: its lease (if still `hub`'s) expires in `ttl_s`."""
        raise NotImplementedError("a single-hub store has no node leases")

    async def take_expired_node_leases(self, hub: str, *, ttl_s: float, limit: int = 100
                                       ) -> list[tuple[str, str, float]]:
        """Take over expired leases (nodes no hub serves); (tenant, node id, new expiry)."""
        raise NotImplementedError("a single-hub store has no node leases")

    async def drop_node_lease(self, tenant: str, node_id: str, hub: str, expires_at: float
                              ) -> None:
        """Forget a taken-over lease once its node's tasks are failed over (a CAS on
        (hub, expires_at), so a node that came back meanwhile keeps its lease)."""
        raise NotImplementedError("a single-hub store has no node leases")

    async def node_tasks_all_tenants(self, node_id: str) -> list[pb.Task]:
        """The assigned/running tasks on a node, of every tenant (a shared pool's node
        runs other tenants' tasks): what fails over with it."""
        raise NotImplementedError("a single-hub store holds node tasks in hub memory")

    async def publish_input(self, tenant: str, task_id: str, message: bytes) -> None:
        """Relay a task's input (a serialized HubMessage, at most 4 KiB of stdin) to the
        hub holding it, through the change feed's connection of every hub."""
        raise NotImplementedError("a single-hub store has no other hub to relay to")

    async def lease_holder(self, tenant: str, node_id: str) -> str | None:
        """The hub holding the node's lease now (live or not), or None."""
        raise NotImplementedError("a single-hub store has no node leases")

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish queued writes and release connections."""

    # -- tenants and credentials -------------------------------------------------
    @abc.abstractmethod
    async def ensure_tenant(self, tenant: str, *, now: float) -> None: ...

    @abc.abstractmethod
    async def create_tenant(self, tenant: TenantRecord) -> None:
        """Create a tenant and its `default` pool; Conflict if the id is taken."""

    @abc.abstractmethod
    async def get_tenant(self, tenant: str) -> TenantRecord | None: ...

    @abc.abstractmethod
    async def list_tenants_all(self) -> list[TenantRecord]:
        """Every tenant (hub-wide administration only)."""

    @abc.abstractmethod
    async def set_tenant_limits(self, tenant: str, *, weight: float,
                                quota: dict[str, float]) -> TenantRecord:
        """Replace a tenant's weight and quota; NotFound if there is no such tenant."""

    @abc.abstractmethod
    async def create_pool(self, pool: PoolRecord) -> None:
        """Create a node pool in its tenant; Conflict if the name is taken there."""

    @abc.abstractmethod
    async def list_pools(self, tenant: str) -> list[PoolRecord]: ...

    @abc.abstractmethod
    async def get_pool(self, tenant: str, name: str) -> PoolRecord | None: ...

    @abc.abstractmethod
    async def list_shared_pools_all(self) -> list[PoolRecord]:
        """Every pool shared with other tenants (hub-wide: the dispatcher's routing)."""

    @abc.abstractmethod
    async def list_api_tokens(self, tenant: str) -> list[ApiTokenRecord]: ...

    @abc.abstractmethod
    async def revoke_api_token(self, tenant: str, token_id: str, *, now: float
                               ) -> ApiTokenRecord:
        """Mark a token of `tenant` revoked (idempotent); NotFound if it has no such token."""

    @abc.abstractmethod
    async def create_api_token(self, token: ApiTokenRecord) -> None: ...

    @abc.abstractmethod
    async def find_api_token(self, token_id: str) -> ApiTokenRecord | None:
        """Look a token up by id before its tenant is known (authentication)."""

    @abc.abstractmethod
    async def create_join_token(self, token: JoinTokenRecord) -> None: ...

    @abc.abstractmethod
    async def consume_join_token(
        self, token_id: str, secret_hash: bytes, *, node_id: str, now: float
    ) -> JoinTokenRecord:
        """Mark a join token used by `node_id`; PermissionDenied if unknown, used or expired."""

    @abc.abstractmethod
    async def record_certificate(
        self, tenant: str, *, serial: str, node_id: str, not_before: float, not_after: float
    ) -> None: ...

    # -- nodes ---------------------------------------------------------------------
    @abc.abstractmethod
    async def upsert_node(self, tenant: str, node: pb.Node) -> None: ...

    @abc.abstractmethod
    async def get_node(self, tenant: str, node_id: str) -> pb.Node | None: ...

    @abc.abstractmethod
    async def list_nodes(self, tenant: str) -> list[pb.Node]: ...

    @abc.abstractmethod
    async def find_node_all_tenants(self, node_id: str) -> pb.Node | None:
        """A node by id whatever its tenant (the caller authenticated it by certificate)."""

    # -- sessions -------------------------------------------------------------------
    @abc.abstractmethod
    async def pin_session(self, tenant: str, session_id: str, node_id: str, *, now: float
                          ) -> str:
        """Pin a session to `node_id` unless already pinned; returns the node it is on."""

    @abc.abstractmethod
    async def session_node(self, tenant: str, session_id: str) -> str | None: ...

    @abc.abstractmethod
    async def list_sessions(self, tenant: str, *, limit: int) -> list[SessionRecord]:
        """The tenant's pinned sessions, newest first, at most `limit`."""

    # -- tasks ---------------------------------------------------------------------
    @abc.abstractmethod
    async def insert_task(
        self, tenant: str, task: pb.Task, events: Sequence[pb.TaskEvent]
    ) -> tuple[pb.Task, bool]:
        """Store a new task; with an idempotency key already used, the existing task, False."""

    @abc.abstractmethod
    async def save_task(
        self,
        tenant: str,
        task: pb.Task,
        *,
        expected_version: int,
        events: Sequence[pb.TaskEvent] = (),
        attempt: pb.Attempt | None = None,
    ) -> None:
        """Write `task` (its version must be expected_version + 1), its new events (seq
        already assigned) and an attempt row, atomically; Conflict if the stored version
        is not `expected_version` or an event (task, attempt, node seq) was stored before."""

    @abc.abstractmethod
    async def get_task(
        self, tenant: str, task_id: str, *, with_attempts: bool = False
    ) -> pb.Task | None: ...

    @abc.abstractmethod
    async def list_tasks(self, tenant: str, query: TaskQuery) -> list[pb.Task]: ...

    @abc.abstractmethod
    async def list_active_tasks_all_tenants(self) -> list[pb.Task]:
        """Every task not in a terminal state (the dispatcher's recovery scan)."""

    @abc.abstractmethod
    async def get_attempt(self, tenant: str, task_id: str, attempt: int) -> pb.Attempt | None: ...

    @abc.abstractmethod
    async def read_events(
        self, tenant: str, task_id: str, *, after_seq: int, limit: int
    ) -> list[pb.TaskEvent]: ...

    # -- artifacts (issue #5) -----------------------------------------------------------
    @abc.abstractmethod
    async def insert_artifact(self, tenant: str, file: pb.File) -> None:
        """Record a stored artifact (its blob is already in the blob store)."""

    @abc.abstractmethod
    async def get_artifact(self, tenant: str, artifact_id: str) -> pb.File | None: ...

    @abc.abstractmethod
    async def list_artifacts(self, tenant: str, *, task_id: str = "", limit: int = 100,
                             after_id: str = "") -> list[pb.File]:
        """Artifacts in id order (of one task when `task_id` is given), after `after_id`."""

    @abc.abstractmethod
    async def delete_artifact(self, tenant: str, artifact_id: str) -> bool:
        """Forget an artifact; False when it did not exist (its blob is left to GC)."""

    @abc.abstractmethod
    async def artifact_bytes(self, tenant: str) -> int:
        """Bytes of the tenant's artifacts, counted per artifact (what the quota limits)."""

    @abc.abstractmethod
    async def expire_artifacts_all_tenants(self, *, now: float) -> int:
        """Delete every artifact whose expires_at passed; returns how many."""

    @abc.abstractmethod
    async def artifact_digests_all_tenants(self) -> set[str]:
        """The sha256 of every blob an artifact still references (GC keeps these)."""

    @abc.abstractmethod
    async def tenant_has_digest(self, tenant: str, sha256: str) -> bool:
        """Whether one of the tenant's artifacts has this content (dedupe without the
        bytes is allowed only then: another tenant's blob must never be claimable by its
        hash alone)."""
    # -- certificate lifecycle ---------------------------------------------------------
    @abc.abstractmethod
    async def record_issued_certificate(self, tenant: str, cert: CertificateRecord) -> None:
        """Record a node certificate with its issuer label and pool."""

    @abc.abstractmethod
    async def get_certificate(self, tenant: str, serial: str) -> CertificateRecord | None: ...

    @abc.abstractmethod
    async def list_certificates(self, tenant: str, *, valid_at: float
                                ) -> list[CertificateRecord]:
        """The tenant's unrevoked certificates still valid at `valid_at`, newest first."""

    @abc.abstractmethod
    async def revoke_node(self, tenant: str, node_id: str, *, reason: str, now: float
                          ) -> int:
        """Record the node as revoked and revoke its certificates; how many were revoked.
        Revoking twice keeps the first record."""

    @abc.abstractmethod
    async def node_revoked_at(self, tenant: str, node_id: str) -> float:
        """When the node was revoked, 0.0 if it was not."""

    @abc.abstractmethod
    async def certificate_issuers_all_tenants(self, *, now: float) -> dict[str, float]:
        """For each issuer label, the latest not_after of its unrevoked certificates still
        valid at `now` (what CA retirement waits for)."""


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    serial: str
    tenant: str
    node_id: str
    not_before: float
    not_after: float
    revoked_at: float = 0.0
    issuer: str = ""        # "<intermediate>/<root>" that signed it
    pool: str = "default"
